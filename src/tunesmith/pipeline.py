"""The stage functions behind the CLI verbs, and `quickstart`, which runs them end to end.

Each function takes a validated `ProjectConfig`, reads earlier stages' records from the store and
writes its own; the CLI only parses arguments and calls one of these.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from sqlalchemy import select

from tunesmith.config import CONFIG_FILENAME, GENERATIVE_OBJECTIVES, ProjectConfig, load_config
from tunesmith.data import DataError, Prepared, check_rows, load_split, prepare_dataset
from tunesmith.evaluate import EvalResult, comparison_table, evaluate_model, plot_comparison, write_answers
from tunesmith.progress import console
from tunesmith.registry import register_version
from tunesmith.registry.versions import get_version, move_alias
from tunesmith.store import DatasetVersion, ModelVersion, Run, session
from tunesmith.train.fit import DoesNotFitError, FitEstimate, estimate_fit
from tunesmith.train.sft import check_objective, is_main_process
from tunesmith.workspace import Workspace, open_workspace

DEMO_DATA = "fernwick.jsonl"


def _tokenizer_and_context(config: ProjectConfig) -> tuple[Any, int | None]:
    """The configured model's tokenizer and context window: what token lengths are measured with."""
    from tunesmith.models import load_tokenizer, model_info

    model = config.model
    return (
        load_tokenizer(model.id, model.source, model.revision),
        model_info(model.id, model.source, model.revision).context_window,
    )


def prepare_data(
    config: ProjectConfig, workspace: Workspace | None = None, *, lineage: dict[str, Any] | None = None
) -> DatasetVersion:
    """Turn `data.path` into a stored dataset version (the same rows and options give the same version).

    Token lengths are counted with the configured model's tokenizer, against its context window.

    Raises:
        DataError: when `data.path` is unset or unusable, or no training row is left.
    """
    workspace = workspace or open_workspace(config)
    if config.train.objective == "multitask":
        from tunesmith.data.mixture import prepare_mixture

        return prepare_mixture(config, workspace, *_tokenizer_and_context(config))
    if config.data.path is None:
        raise DataError("data.path is not set; point it at a file, folder, glob, saved dataset or hub id")
    stored = _stored_version(config, workspace)
    if stored is not None:
        return stored
    tokenizer, context = _tokenizer_and_context(config)
    version, _ = prepare_dataset(
        workspace,
        config.data,
        base_dir=config.base_dir,
        tokenizer=tokenizer,
        max_tokens=context,
        truncate_at=config.train.max_length,
        model_id=config.model.id,
        lineage=lineage,
    )
    return version


def _stored_version(config: ProjectConfig, workspace: Workspace) -> DatasetVersion | None:
    """The stored version `data.path` names (`ds-…`, e.g. from `data synth`), unless a file has that name."""
    from tunesmith.data import get_dataset

    path = config.data.path or ""
    if not path.startswith("ds-") or config.resolve_path(path).exists():
        return None
    return get_dataset(workspace, path)


def validate_data(config: ProjectConfig, workspace: Workspace | None = None) -> tuple[Prepared, Path]:
    """Run every check of the data stage on `data.path` without storing a version.

    Rejected rows are written to the workspace's `validation/rejected.jsonl`; returns the outcome
    and that path.

    Raises:
        DataError: when `data.path` is unset or unusable.
    """
    if config.data.path is None:
        raise DataError("data.path is not set; point it at a file, folder, glob, saved dataset or hub id")
    workspace = workspace or open_workspace(config)
    tokenizer, context = _tokenizer_and_context(config)
    prepared = check_rows(config.data, config.data.path, config.base_dir, tokenizer, context)
    out = workspace.root / "validation" / "rejected.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    with tmp.open("w", encoding="utf-8") as handle:
        for rejected in prepared.rejected:
            handle.write(json.dumps(rejected.to_json(), ensure_ascii=False, default=str) + "\n")
    tmp.replace(out)
    return prepared, out


@dataclass
class TrainOutcome:
    """What `train` produced: the dataset version, the run, the registered version, the model."""

    dataset: DatasetVersion
    run_id: str
    run_dir: Path
    version: ModelVersion
    model: Any
    tokenizer: Any


def train(
    config: ProjectConfig,
    workspace: Workspace | None = None,
    *,
    kind: str = "train",
    base: Any = None,
    extra_metrics: dict[str, Any] | None = None,
) -> TrainOutcome:
    """Prepare the data, fine-tune the base model, and register the result as a new version.

    Raises:
        MethodError: before anything loads, when the method needs hardware this machine lacks.
    """
    from tunesmith.train.methods import check_method_supported

    check_method_supported(config.train)
    workspace = workspace or open_workspace(config)
    dataset = prepare_data(config, workspace)
    check_objective(config.train.objective, dataset, config.train)
    estimate = fit_estimate(config, dataset)
    if not estimate.fits:
        raise DoesNotFitError(estimate.refusal())
    outcome = _train_and_register(
        config, workspace, dataset, kind=kind, base=base, extra_metrics=extra_metrics
    )
    assert outcome is not None  # a single process is the main process
    return outcome


def fit_estimate(config: ProjectConfig, dataset: DatasetVersion) -> FitEstimate:
    """Peak training memory for `config` on `dataset`'s longest rows (up to train.max_length)."""
    from transformers import AutoConfig

    from tunesmith.models import resolve

    resolved = resolve(config.model.id, config.model.source, config.model.revision)
    location = str(resolved.path) if resolved.path is not None else str(resolved.hub_id)
    model_config = AutoConfig.from_pretrained(location, trust_remote_code=config.model.trust_remote_code)
    longest = dataset.meta.get("report", {}).get("stats", {}).get("splits", {}).get("train", {})
    longest_tokens = longest.get("tokens", {}).get("max", config.train.max_length)
    return estimate_fit(config, model_config, min(config.train.max_length, longest_tokens))


def dry_run(
    config: ProjectConfig, workspace: Workspace | None = None, calibrate: bool = True
) -> tuple[DatasetVersion, FitEstimate, Any]:
    """Everything `train` checks before it starts, and a measured time estimate; nothing is trained."""
    from tunesmith.train.estimate import estimate_epoch_time
    from tunesmith.train.methods import check_method_supported

    check_method_supported(config.train)
    workspace = workspace or open_workspace(config)
    dataset = prepare_data(config, workspace)
    estimate = fit_estimate(config, dataset)
    timing = None
    if estimate.fits and calibrate:
        timing = estimate_epoch_time(config, dataset, load_base(config, dataset))
    return dataset, estimate, timing


def launch_distributed(
    config: ProjectConfig,
    config_path: Path,
    overrides: list[str],
    num_processes: int,
    launcher: str = "accelerate",
    accelerate_config: Path | None = None,
) -> ModelVersion:
    """Train with `num_processes` processes (DDP; DeepSpeed or FSDP through an Accelerate config file).

    With CUDA, `accelerate launch` starts the workers; on a CPU, where Accelerate's multi-CPU mode
    needs MPI, `torch.distributed.run` starts them and the trainer joins them over gloo.

    Raises:
        TrainLaunchError: when a worker fails; the run is marked failed.
    """
    import subprocess
    import sys

    import torch

    workspace = open_workspace(config)
    run_id = open_train_run(config, workspace)
    worker = ["-m", "tunesmith.train.worker", str(config_path), run_id]
    for override in overrides:
        worker += ["--set", override]
    if launcher == "accelerate" and torch.cuda.is_available():
        command = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(num_processes)]
        command += ["--multi_gpu"] if num_processes > 1 else []
        command += ["--config_file", str(accelerate_config)] if accelerate_config is not None else []
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(num_processes)]
    completed = subprocess.run([*command, *worker], check=False)
    with session(workspace.engine) as s:
        run = s.get(Run, run_id)
        version = s.scalars(select(ModelVersion).where(ModelVersion.run_id == run_id)).first()
        if completed.returncode != 0 and run is not None and run.status == "running":
            run.status, run.error = "failed", f"a worker exited with code {completed.returncode}"
    if completed.returncode != 0 or version is None:
        raise TrainLaunchError(
            f"run {run_id}: the distributed workers failed (exit code {completed.returncode}); "
            f"see the output above. Resume with `tunesmith train --resume {run_id}`."
        )
    return version


def open_train_run(config: ProjectConfig, workspace: Workspace) -> str:
    """Check the method, prepare the data and the memory fit, and open a `train` run; return its id.

    For a run that another process trains (`train_existing_run`): a distributed launch, or a run
    started from the web app, which shows the run's live curve while it trains.
    """
    from tunesmith.train.methods import check_method_supported
    from tunesmith.train.sft import open_run

    check_method_supported(config.train)
    dataset = prepare_data(config, workspace)
    check_objective(config.train.objective, dataset, config.train)
    estimate = fit_estimate(config, dataset)
    if not estimate.fits:
        raise DoesNotFitError(estimate.refusal())
    run_id, _ = open_run(config, workspace, dataset, "train")
    return run_id


def train_existing_run(config: ProjectConfig, run_id: str) -> TrainOutcome | None:
    """Train a run that a launcher opened; the main process registers it, the others return None."""
    workspace = open_workspace(config)
    with session(workspace.engine) as s:
        run = s.get(Run, run_id)
        assert run is not None, f"no run {run_id}"
        dataset = s.get(DatasetVersion, run.dataset_version_id)
    assert dataset is not None
    return _train_and_register(config, workspace, dataset, kind=run.kind, run=run_id)


class TrainLaunchError(RuntimeError):
    """A distributed run whose workers failed."""


def resume_run(config: ProjectConfig, run_id: str, workspace: Workspace | None = None) -> TrainOutcome:
    """Continue a run that stopped (killed, crashed) from its newest complete checkpoint.

    The run's own resolved config and dataset version are used, not the current config file.

    Raises:
        RegistryError: when there is no such run, or it already finished.
    """
    from tunesmith.registry import RegistryError

    workspace = workspace or open_workspace(config)
    with session(workspace.engine) as s:
        run = s.get(Run, run_id)
    if run is None:
        raise RegistryError(f"no run {run_id!r} in {workspace.root}")
    if run.status == "finished":
        raise RegistryError(f"run {run_id} already finished; nothing to resume")
    run_config = ProjectConfig.model_validate(run.config).with_base_dir(config.base_dir)
    with session(workspace.engine) as s:
        dataset = s.get(DatasetVersion, run.dataset_version_id)
    assert dataset is not None
    outcome = _train_and_register(run_config, workspace, dataset, kind=run.kind, run=run_id, resume=True)
    assert outcome is not None
    return outcome


def load_base(config: ProjectConfig, dataset: DatasetVersion, workspace: Workspace | None = None) -> Any:
    """The base model as the objective trains it: an LM, or a body with a new head for the data's labels.

    With `train.init_from`, the weights are that registered version's (its adapter merged in).
    """
    from tunesmith.models import load_configured
    from tunesmith.train.classify import HEADS, label_names
    from tunesmith.train.methods import quantization_config

    if config.train.init_from:
        return _load_parent(config, workspace or open_workspace(config))
    objective, dtype = config.train.objective, config.weights_dtype
    quantization = quantization_config(config.train)
    if objective == "reward" or objective in HEADS:
        import torch

        torch.manual_seed(config.train.seed)  # a new head starts from random weights: the same ones per seed
    if objective == "reward":  # one score per answer
        return load_configured(
            config.model, dtype, quantization, head="sequence-classification", num_labels=1
        )
    if objective not in HEADS:
        return load_configured(config.model, dtype, quantization)
    labels = label_names(objective, dataset, config.data.labels)
    return load_configured(
        config.model,
        dtype,
        quantization,
        head=HEADS[objective],
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={name: i for i, name in enumerate(labels)},
    )


def _load_parent(config: ProjectConfig, workspace: Workspace) -> Any:
    """The version named by `train.init_from`, merged into plain weights, as a LoadedModel."""
    import torch

    from tunesmith.models.loading import LoadedModel, resolve
    from tunesmith.registry import RegistryError, get_version
    from tunesmith.registry.loading import load_row

    assert config.train.init_from is not None
    parent = get_version(workspace, config.train.init_from)
    if parent.base_model != config.model.id:
        raise RegistryError(
            f"train.init_from: {parent.name} was fine-tuned from {parent.base_model}, "
            f"not from model.id {config.model.id}; set model.id to match"
        )
    parent_objective = parent.config.get("train", {}).get("objective", "sft")
    both_generate = (
        parent_objective in GENERATIVE_OBJECTIVES and config.train.objective in GENERATIVE_OBJECTIVES
    )
    if parent_objective != config.train.objective and not both_generate:
        raise RegistryError(
            f"train.init_from: {parent.name} is a {parent_objective} version; objective "
            f"{config.train.objective} cannot start from it"
        )
    model, tokenizer = load_row(parent, workspace)
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    model = (
        model.to(getattr(torch, config.weights_dtype))
        if config.train.method in ("lora", "qlora")
        else model.float()
    )
    resolved = resolve(config.model.id, config.model.source, config.model.revision)
    return LoadedModel(
        model=model, tokenizer=tokenizer, resolved=resolved, base_revision=parent.base_revision
    )


def train_run(
    config: ProjectConfig,
    workspace: Workspace,
    dataset: DatasetVersion,
    base: Any,
    *,
    kind: str,
    run: str | None = None,
    resume: bool = False,
) -> Any:
    """One training run for the configured objective, recorded in the store; nothing is registered."""
    from tunesmith.train import train_sft
    from tunesmith.train.classify import HEADS, train_classifier
    from tunesmith.train.preference import train_preference
    from tunesmith.train.rl import train_rl

    if config.train.objective in HEADS:
        return train_classifier(config, workspace, dataset, base, kind=kind, run=run, resume=resume)
    if config.train.objective in ("reward", "dpo"):
        return train_preference(config, workspace, dataset, base, kind=kind, run=run, resume=resume)
    if config.train.objective == "rl":
        return train_rl(config, workspace, dataset, base, kind=kind, run=run, resume=resume)
    return train_sft(config, workspace, dataset, base, kind=kind, run=run, resume=resume)


def register_trained(
    config: ProjectConfig,
    workspace: Workspace,
    result: Any,
    base_revision: str | None,
    extra_metrics: dict[str, Any] | None = None,
) -> ModelVersion:
    """Register a finished run's weights as the project's next version, and make it the candidate."""
    with session(workspace.engine) as s:
        run_row = s.get(Run, result.run_id)
    assert run_row is not None
    version = register_version(
        workspace,
        run_row,
        family=config.project,
        weights_dir=result.adapter_dir,
        base_revision=base_revision,
        method=config.train.method,
        seed=config.train.seed,
        metrics={**result.metrics, **(extra_metrics or {})},
        tokenizer=result.tokenizer,
        parent_id=get_version(workspace, config.train.init_from).id if config.train.init_from else None,
    )
    if "candidate" in config.registry.aliases:  # the newest version is the one to evaluate next
        move_alias(
            workspace,
            version.family,
            "candidate",
            version,
            reason=f"trained in {result.run_id}",
            action="register",
        )
    return version


def _train_and_register(
    config: ProjectConfig,
    workspace: Workspace,
    dataset: DatasetVersion,
    *,
    kind: str,
    base: Any = None,
    run: str | None = None,
    resume: bool = False,
    extra_metrics: dict[str, Any] | None = None,
) -> TrainOutcome | None:
    base = base or load_base(config, dataset, workspace)
    result = train_run(config, workspace, dataset, base, kind=kind, run=run, resume=resume)
    if not is_main_process():
        return None  # other ranks of a distributed run only train
    version = register_trained(config, workspace, result, base.base_revision, extra_metrics)
    return TrainOutcome(
        dataset=dataset,
        run_id=result.run_id,
        run_dir=result.run_dir,
        version=version,
        model=result.model,
        tokenizer=result.tokenizer,
    )


@dataclass
class QuickstartResult:
    """Everything quickstart made, for printing and for tests."""

    directory: Path
    config_path: Path
    items: list[dict[str, Any]]
    before: EvalResult
    after: EvalResult
    outcome: TrainOutcome
    report_dir: Path
    seconds: float


def write_demo_project(directory: Path) -> Path:
    """Copy the demo config and data into `directory` (kept if already there); return the config path."""
    directory.mkdir(parents=True, exist_ok=True)
    demo = resources.files("tunesmith").joinpath("demo")
    config_path = directory / CONFIG_FILENAME
    if not config_path.exists():
        config_path.write_text(demo.joinpath("quickstart.yaml").read_text(encoding="utf-8"), encoding="utf-8")
    data_path = directory / "data" / DEMO_DATA
    if not data_path.exists():
        data_path.parent.mkdir(exist_ok=True)
        with demo.joinpath(DEMO_DATA).open("rb") as src, data_path.open("wb") as dst:
            shutil.copyfileobj(src, dst)
    return config_path


def quickstart(directory: Path, overrides: list[str] | None = None) -> QuickstartResult:
    """The main job: demo data → before → LoRA fine-tune → after → compare → register.

    The demo facts are about a fictional company, so the base model cannot know them; the test
    split holds paraphrased questions that training never saw.
    """
    from tunesmith.models import load_configured

    started = time.perf_counter()
    config_path = write_demo_project(directory)
    config = load_config(config_path, overrides)
    workspace = open_workspace(config)

    console.rule("[bold]1/5 Data")
    dataset = prepare_data(config, workspace)
    console.print(
        f"Dataset version [bold]{dataset.id}[/bold]: {dataset.counts['train']} train, "
        f"{dataset.counts['val']} validation, {dataset.counts['test']} test rows "
        f"({dataset.counts['rejected']} rejected)"
    )
    items = load_split(dataset, config.eval.split)

    console.rule("[bold]2/5 Base model")
    base = load_configured(config.model, config.weights_dtype)
    console.print(f"{config.model.id}: {base.resolved.describe()}")
    before = evaluate_model(base.model, base.tokenizer, items, config.eval, label="before")

    console.rule("[bold]3/5 Fine-tune")
    outcome = train(config, workspace, kind="quickstart", base=base)

    console.rule("[bold]4/5 After")
    after = evaluate_model(outcome.model, outcome.tokenizer, items, config.eval, label="after")

    console.rule("[bold]5/5 Compare and register")
    report_dir = outcome.run_dir / "eval"
    report_dir.mkdir()
    write_answers(report_dir / "answers.jsonl", items, [before, after])
    plot_comparison(
        [before, after],
        report_dir / "before_after.png",
        f"{len(items)} held-out questions ({config.eval.split} split)",
    )
    summary = {"split": config.eval.split, "items": len(items), "before": before.means, "after": after.means}
    (report_dir / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    record_eval_metrics(workspace, outcome.version, before.means, after.means)
    return QuickstartResult(
        directory=directory,
        config_path=config_path,
        items=items,
        before=before,
        after=after,
        outcome=outcome,
        report_dir=report_dir,
        seconds=time.perf_counter() - started,
    )


def record_eval_metrics(
    workspace: Workspace, version: ModelVersion, before: dict[str, float], after: dict[str, float]
) -> None:
    """Add the held-out scores to the version's metrics (its only write after registration)."""
    with session(workspace.engine) as s:
        row = s.get(ModelVersion, version.id)
        assert row is not None
        row.metrics = {
            **row.metrics,
            **{f"test_{k}": v for k, v in after.items()},
            **{f"base_test_{k}": v for k, v in before.items()},
        }
    version.metrics = row.metrics


def print_quickstart(result: QuickstartResult) -> None:
    """The closing screen: the before/after table, where everything is, what to run next."""
    console.print(
        comparison_table(
            [result.before, result.after],
            f"Held-out paraphrased questions ({len(result.before.answers)} items)",
        )
    )
    shown = 0
    for i, (b, a) in enumerate(zip(result.before.answers, result.after.answers, strict=True)):
        if shown == 3:
            break
        if result.after.scores[i].get("key_fact", 0) > result.before.scores[i].get("key_fact", 0):
            question = result.items[i]["messages"][-2]["content"]
            console.print(f"[bold]Q:[/bold] {question}")
            console.print(f"  [red]before:[/red] {b[:120]}\n  [green]after:[/green] {a[:120]}")
            shown += 1
    version = result.outcome.version
    console.print(
        f"\nRegistered [bold]{version.name}[/bold] ({version.id}) from run {result.outcome.run_id}, "
        f"dataset {result.outcome.dataset.id}, in {result.seconds / 60:.1f} min."
    )
    console.print(f"  config     {result.config_path}")
    console.print(f"  run        {result.outcome.run_dir}  (adapter, config.yaml, metrics.json, loss.png)")
    console.print(f"  eval       {result.report_dir}  (answers.jsonl, before_after.png, summary.json)")
    console.print("\nNext:")
    console.print(f"  cd {result.directory}")
    console.print(f"  tunesmith registry show {version.name}")
    console.print(f"  tunesmith eval {version.name}")
    console.print("  tunesmith train --set train.lr=5e-4   # train again with other settings")
    console.print(
        f"  tunesmith serve --model {version.family}@candidate   # an OpenAI-compatible API on :8000"
    )
