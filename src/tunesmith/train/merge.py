"""Merging LoRA versions of one base into a new version (`tunesmith registry merge`).

Each method combines the parents' weight deltas (B·A·scale) per layer with PEFT's `merge_utils`,
as the papers define them (PEFT's `add_weighted_adapter` merges A and B separately for most of them,
which its docs call a rough approximation):

- `linear`: the weighted sum of the deltas (task arithmetic). Default weights 1/n each: the average.
- `ties`: TIES-Merging (Yadav et al., 2023): each delta trimmed to its `density` largest entries, a
  sign elected per entry, and the agreeing entries averaged.
- `dare_linear`, `dare_ties`: DARE (Yu et al., 2024): entries dropped at random with probability
  1 - `density` and the rest rescaled, then summed (linear) or combined as TIES; seeded, so a merge
  is reproducible.

Default weights for the last three: 1.0 each (TIES averages the entries that agree). The merged
delta is written back as a LoRA adapter of the parents' summed rank by a truncated SVD: exact for
`linear` (a sum of rank-r deltas has at most their summed rank), an approximation for the others,
whose trimmed deltas are full-rank; the share of the merged deltas' energy (squared Frobenius norm)
that the adapter keeps is measured and recorded.

The merged version is registered like a trained one (a run of kind `merge`, the candidate alias),
with its parents, weights and method in its lineage; it is evaluated, gated and promoted as any
candidate, and `registry reproduce` merges again and compares the weights.
"""

from __future__ import annotations

import gc
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunesmith.config import GENERATIVE_OBJECTIVES, ProjectConfig
from tunesmith.errors import InputError
from tunesmith.registry import RegistryError, get_version
from tunesmith.registry.loading import adapter_base
from tunesmith.registry.versions import move_alias, register_version
from tunesmith.store import DatasetVersion, ModelVersion, Run, session
from tunesmith.train.sft import close_run, failing_run, open_run
from tunesmith.workspace import Workspace

METHODS = ("linear", "ties", "dare_linear", "dare_ties")
DENSITY_METHODS = ("ties", "dare_linear", "dare_ties")
MERGED = "merged"


class MergeError(ValueError):
    """Versions that cannot be merged (a refusal: exit 1)."""


class MergeSettingsError(InputError):
    """Merge settings that cannot work (bad input: exit 2)."""


@dataclass(frozen=True)
class MergeSpec:
    """What to merge and how: the versions (names or ids), the method, one weight per version, the
    density of TIES/DARE, and the seed of DARE's random drop."""

    versions: tuple[str, ...]
    method: str = "ties"
    weights: tuple[float, ...] | None = None
    density: float = 0.5
    seed: int = 0

    def resolved_weights(self) -> tuple[float, ...]:
        if self.weights is not None:
            return self.weights
        n = len(self.versions)
        return tuple([1.0 / n] * n if self.method == "linear" else [1.0] * n)

    def record(self, parents: Sequence[ModelVersion]) -> dict[str, Any]:
        """The spec as the merged version's lineage keeps it (parents by id and name)."""
        return {
            "method": self.method,
            "parents": [
                {"id": v.id, "name": v.name, "weight": w}
                for v, w in zip(parents, self.resolved_weights(), strict=True)
            ],
            "density": self.density if self.method in DENSITY_METHODS else None,
            "seed": self.seed,
        }


@dataclass(frozen=True)
class MergeOutcome:
    version: ModelVersion
    run_id: str
    energy_kept: float  # the share of the merged deltas' energy the adapter keeps (1.0: exact)

    def summary(self) -> str:
        merge = self.version.lineage["merge"]
        parents = ", ".join(f"{p['name']} x{p['weight']:g}" for p in merge["parents"])
        density = f", density {merge['density']:g}" if merge["density"] is not None else ""
        return (
            f"Registered {self.version.name} ({merge['method']}: {parents}{density}); the adapter keeps "
            f"{self.energy_kept:.1%} of the merged deltas' energy."
        )


def parse_weights(text: str | None) -> tuple[float, ...] | None:
    """`--weights 0.7,0.3` as numbers (None: the method's default).

    Raises:
        MergeSettingsError: a value that is not a number.
    """
    if not text:
        return None
    try:
        return tuple(float(w) for w in text.split(","))
    except ValueError:
        raise MergeSettingsError(f"--weights {text!r}: numbers separated by commas, e.g. 0.7,0.3") from None


def check_spec(spec: MergeSpec) -> None:
    """Refuse settings that cannot work, naming the setting and what to do.

    Raises:
        MergeSettingsError: fewer than two distinct versions, an unknown method, weights that do not
            match the versions, or a density outside (0, 1].
    """
    if len(spec.versions) < 2 or len(set(spec.versions)) != len(spec.versions):
        raise MergeSettingsError(f"merge needs two or more distinct versions; got {', '.join(spec.versions)}")
    if spec.method not in METHODS:
        raise MergeSettingsError(f"--method {spec.method!r}: use {', '.join(METHODS)}")
    if spec.weights is not None and len(spec.weights) != len(spec.versions):
        raise MergeSettingsError(
            f"--weights has {len(spec.weights)} value(s) for {len(spec.versions)} versions: "
            "give one per version"
        )
    if not 0.0 < spec.density <= 1.0:
        raise MergeSettingsError(f"--density {spec.density}: the share of each delta kept, in (0, 1]")


def mergeable(versions: Sequence[ModelVersion]) -> None:
    """Refuse versions that are not LoRA adapters of the same base, objective and tokenizer.

    Raises:
        MergeError: naming the first version that differs from the first one, and how.
    """
    first = versions[0]
    for v in versions:
        if v.method not in ("lora", "qlora"):
            raise MergeError(
                f"{v.name} is a {v.method} version: only LoRA versions merge (their weight deltas add); "
                "for full fine-tunes, merge the exported models with mergekit"
            )
        if v.config["train"].get("lora", {}).get("use_dora"):
            raise MergeError(
                f"{v.name} is a DoRA adapter: its magnitude vectors do not add; merge plain LoRA versions"
            )
        objective = v.config["train"]["objective"]
        if objective not in GENERATIVE_OBJECTIVES:
            raise MergeError(
                f"{v.name} trained a {objective} head: a new head has no shared base to merge onto; "
                "merge generative versions (sft, pretrain, dpo, rl)"
            )
    for v in versions[1:]:
        for what, mine, theirs in (
            ("base model", v.base_model, first.base_model),
            ("base revision", v.base_revision, first.base_revision),
            ("parent version (train.init_from)", v.parent_id, first.parent_id),
            ("method", v.method, first.method),
            ("tokenizer", v.lineage.get("tokenizer_sha256"), first.lineage.get("tokenizer_sha256")),
            (
                "chat template",
                v.lineage.get("chat_template_sha256"),
                first.lineage.get("chat_template_sha256"),
            ),
        ):
            if mine != theirs:
                raise MergeError(
                    f"{v.name} and {first.name} differ in {what} ({mine} against {theirs}): "
                    "only adapters of the same base merge"
                )


def merge_versions(config: ProjectConfig, workspace: Workspace, spec: MergeSpec) -> MergeOutcome:
    """Merge `spec.versions` into the next version of the project's family, as its candidate.

    Raises:
        MergeSettingsError: see `check_spec`.
        MergeError: see `mergeable`.
        RegistryError: a version that is not registered, or whose base weights changed since.
    """
    check_spec(spec)
    parents = [get_version(workspace, ref) for ref in spec.versions]
    mergeable(parents)
    run_config = ProjectConfig.model_validate(parents[0].config)
    run_config = run_config.model_copy(update={"project": config.project})
    run_id, run_dir = open_run(run_config, workspace, _dataset_of(workspace, parents[0]), "merge")
    with failing_run(workspace, run_id):
        adapter_dir, energy, tokenizer, revision = write_merge(workspace, parents, spec, run_dir / "adapter")
    metrics = {"merge_energy_kept": energy}
    close_run(workspace, run_id, "finished", metrics, None)
    with session(workspace.engine) as s:
        run = s.get(Run, run_id)
    assert run is not None
    version = register_version(
        workspace,
        run,
        family=config.project,
        weights_dir=adapter_dir,
        base_revision=revision,
        method=parents[0].method,
        seed=spec.seed,
        metrics=metrics,
        tokenizer=tokenizer,
        parent_id=parents[0].parent_id,
        lineage_extra={"merge": {**spec.record(parents), "energy_kept": energy}},
    )
    if "candidate" in config.registry.aliases:
        names = " + ".join(v.name for v in parents)
        move_alias(
            workspace,
            version.family,
            "candidate",
            version,
            reason=f"merged ({spec.method}) {names}",
            action="register",
        )
    return MergeOutcome(version=version, run_id=run_id, energy_kept=energy)


def _dataset_of(workspace: Workspace, version: ModelVersion) -> DatasetVersion:
    """The version's dataset version: the merge's run records it, and `eval` tests on its test split."""
    with session(workspace.engine) as s:
        dataset = s.get(DatasetVersion, version.dataset_version_id) if version.dataset_version_id else None
    if dataset is None:
        raise RegistryError(f"the dataset version of {version.name} is not in this workspace")
    return dataset


def write_merge(
    workspace: Workspace, parents: Sequence[ModelVersion], spec: MergeSpec, target: Path
) -> tuple[Path, float, Any, str | None]:
    """Merge the parents' adapters on their base and save the result as an adapter folder.

    PEFT's `add_weighted_adapter` (`cat`) adds the merged adapter, of the parents' summed rank; its
    factors are then set layer by layer (`_merge_deltas`). Returns (the folder, the kept energy, the
    tokenizer, the base revision the adapters were loaded onto).
    """
    from peft import PeftModel

    model, tokenizer, revision = adapter_base(parents[0], workspace, "float32", "merging")
    model = PeftModel.from_pretrained(model, parents[0].path, adapter_name="parent0")
    for i, v in enumerate(parents[1:], start=1):
        model.load_adapter(v.path, adapter_name=f"parent{i}")
    names = [f"parent{i}" for i in range(len(parents))]
    weights = list(spec.resolved_weights())
    model.add_weighted_adapter(names, weights, MERGED, combination_type="cat")
    energy = _merge_deltas(model, names, spec)
    model.set_adapter(MERGED)
    for name in names:
        model.delete_adapter(name)
    partial = target.with_name(target.name + ".partial")
    model.save_pretrained(str(partial), selected_adapters=[MERGED])
    (partial / MERGED if (partial / MERGED).is_dir() else partial).rename(
        target
    )  # a named adapter: a subfolder
    del model
    gc.collect()
    return target, energy, tokenizer, revision


def _merge_deltas(model: Any, names: list[str], spec: MergeSpec) -> float:
    """Write the merge of the parents' deltas into the merged adapter, layer by layer, as the rank-r
    truncated SVD (r: the merged adapter's rank); return the share of the merged deltas' squared
    Frobenius norm that the truncation keeps, over all layers."""
    import torch
    from peft.tuners.lora import LoraLayer
    from peft.utils.merge_utils import dare_linear, dare_ties, task_arithmetic, ties

    weights = torch.tensor(spec.resolved_weights())
    torch.manual_seed(spec.seed)  # DARE's random drop
    layers: list[Any] = [m for m in model.modules() if isinstance(m, LoraLayer) and MERGED in m.lora_A]
    kept = total = 0.0
    with torch.no_grad():
        for module in layers:
            deltas = [module.get_delta_weight(name).float() for name in names]
            if spec.method == "linear":
                delta = task_arithmetic(deltas, weights)
            elif spec.method == "dare_linear":
                delta = dare_linear(deltas, weights, spec.density)
            else:
                combine = ties if spec.method == "ties" else dare_ties
                delta = combine(deltas, weights, spec.density, "total")
            if getattr(module, "fan_in_fan_out", False):
                delta = delta.T  # stored transposed (GPT-2's Conv1D)
            u, s, vh = torch.linalg.svd(delta, full_matrices=False)
            a, b = module.lora_A[MERGED].weight, module.lora_B[MERGED].weight
            rank, scale = a.shape[0], module.scaling[MERGED]
            b.copy_((u[:, :rank] * s[:rank] / scale).to(b.dtype))
            a.copy_(vh[:rank].to(a.dtype))
            kept += float(s[:rank].pow(2).sum())
            total += float(s.pow(2).sum())
    return kept / total if total else 1.0


def reproduce_merge(workspace: Workspace, version: ModelVersion) -> dict[str, Any]:
    """Merge a merged version's parents again, as its lineage records, into a run of kind `reproduce`
    (not registered), and compare the adapter's tensors with the version's: the largest absolute
    difference must be 0 (the merge is deterministic on one machine, DARE's draws included)."""
    from safetensors.torch import load_file

    merge = version.lineage["merge"]
    spec = MergeSpec(
        versions=tuple(p["id"] for p in merge["parents"]),
        method=merge["method"],
        weights=tuple(float(p["weight"]) for p in merge["parents"]),
        density=merge["density"] if merge["density"] is not None else 0.5,
        seed=int(merge["seed"]),
    )
    parents = [get_version(workspace, ref) for ref in spec.versions]
    config = ProjectConfig.model_validate(version.config)
    run_id, run_dir = open_run(config, workspace, _dataset_of(workspace, version), "reproduce")
    with failing_run(workspace, run_id):
        adapter_dir, *_ = write_merge(workspace, parents, spec, run_dir / "adapter")
    recorded = load_file(str(Path(version.path) / "adapter_model.safetensors"))
    again = load_file(str(adapter_dir / "adapter_model.safetensors"))
    same_names = recorded.keys() == again.keys()
    difference = (
        max(float((recorded[k].float() - again[k].float()).abs().max()) for k in recorded)
        if same_names
        else float("inf")
    )
    close_run(workspace, run_id, "finished", {"adapter_max_abs_difference": difference}, None)
    row = {
        "metric": "adapter_max_abs_difference",
        "recorded": 0.0,
        "reproduced": difference,
        "relative_difference": difference,
        "match": difference == 0.0,
    }
    return {
        "version": version.name,
        "run": run_id,
        "tolerance": 0.0,
        "metrics": [row],
        "matches": row["match"],
    }
