"""Training services: prepare the data, train the configured objective, register the version.

Every command that trains (train, --dry-run, --resume, distributed launches, `registry reproduce`,
`eval --cv`, sweeps, `improve`, the web app's jobs) comes through here, and each dispatches on the
objective table (`tunesmith.train.objectives`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from tunesmith.config import GENERATIVE_OBJECTIVES, ProjectConfig
from tunesmith.data import prepare_data
from tunesmith.registry import RegistryError, get_version, register_trained
from tunesmith.registry.loading import check_base
from tunesmith.store import DatasetVersion, ModelVersion, Run, session
from tunesmith.train.budget import StepTiming, apply_budget, choose_body, fit_budget
from tunesmith.train.fit import DoesNotFitError, FitEstimate, decide_checkpointing, estimate_fit
from tunesmith.train.objectives import RunContext, TrainerJob, get_objective
from tunesmith.train.recipe import plan_run, train_tokens
from tunesmith.train.sft import TrainResult, is_main_process
from tunesmith.workspace import Workspace, open_workspace

if TYPE_CHECKING:
    from transformers import TrainerCallback


@dataclass
class TrainOutcome:
    """What `train` produced: the dataset version, the run, the registered version, the model."""

    dataset: DatasetVersion
    run_id: str
    run_dir: Path
    version: ModelVersion
    model: Any
    tokenizer: Any
    metrics: dict[str, Any] = field(default_factory=dict)
    # train.forgetting.auto: every run tried, {guard, version, rise, passed}; the outcome is the first
    # that held the probe within the bound, else the last
    attempts: list[dict[str, Any]] = field(default_factory=list)


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
    workspace = workspace or open_workspace(config)
    requested = config
    config, dataset, _ = checked_dataset(config, workspace)
    timing = None
    if base is None:
        config, timing = choose_body(requested, config, dataset, workspace)
    outcome = _train_and_register(
        config, workspace, dataset, kind=kind, base=base, extra_metrics=extra_metrics, timing=timing
    )
    assert outcome is not None  # a single process is the main process
    if config.train.forgetting.auto:
        return _guard_forgetting(config, workspace, dataset, outcome, kind, extra_metrics)
    return outcome


def _guard_forgetting(
    config: ProjectConfig,
    workspace: Workspace,
    dataset: DatasetVersion,
    outcome: TrainOutcome,
    kind: str,
    extra_metrics: dict[str, Any] | None,
) -> TrainOutcome:
    """`train.forgetting.auto`: while the probe's general answer loss rose more than
    `forgetting.max_increase`, train again with the next guard (`remedies`); each try is a version."""
    from tunesmith.progress import console
    from tunesmith.train.forgetting import forgetting_rise, remedies

    bound = config.train.forgetting.max_increase

    def attempt(guard: str, tried: TrainOutcome) -> dict[str, Any]:
        rise = forgetting_rise(tried.metrics)
        held = rise is None or rise <= bound
        return {"guard": guard, "version": tried.version.name, "rise": rise, "passed": held}

    attempts = [attempt("as configured", outcome)]
    for remedy in remedies(config):
        if attempts[-1]["passed"]:
            break
        console.print(
            f"{attempts[-1]['version']} raised the general answer loss by {attempts[-1]['rise']:+.1%} "
            f"(at most +{bound:.0%}): training again with {remedy.label}",
            highlight=False,
        )
        retried = _train_and_register(
            remedy.config, workspace, dataset, kind=kind, extra_metrics=extra_metrics
        )
        assert retried is not None
        outcome = retried
        attempts.append(attempt(remedy.label, outcome))
    outcome.attempts = attempts
    return outcome


def checked_dataset(
    config: ProjectConfig, workspace: Workspace, *, refuse: bool = True, announce: bool = True
) -> tuple[ProjectConfig, DatasetVersion, FitEstimate]:
    """Everything checked before a run starts: the method on this hardware, the prepared data, the
    objective (`auto` decided from the rows, and printed) and the rows against it, and the memory fit
    (refused when it does not fit, unless `refuse` is off). Returns the config as the run trains it.

    Raises:
        MethodError, DataError, TrainConfigError, DoesNotFitError: naming what to change.
    """
    from tunesmith.train.methods import check_method_supported

    check_method_supported(config.train)
    dataset = prepare_data(config, workspace)
    config = plan_run(config, dataset, announce=announce and is_main_process())
    estimate = fit_estimate(config, dataset)
    if refuse and not estimate.fits:
        raise DoesNotFitError(estimate.refusal())
    return config, dataset, estimate


def fit_estimate(config: ProjectConfig, dataset: DatasetVersion) -> FitEstimate:
    """Peak training memory for `config` on `dataset`'s longest rows (up to train.max_length)."""
    from transformers import AutoConfig

    from tunesmith.models import resolve

    resolved = resolve(config.model.id, config.model.source, config.model.revision)
    location = str(resolved.path) if resolved.path is not None else str(resolved.hub_id)
    model_config = AutoConfig.from_pretrained(location, trust_remote_code=config.model.trust_remote_code)
    return estimate_fit(config, model_config, longest_tokens(config, dataset))


def longest_tokens(config: ProjectConfig, dataset: DatasetVersion) -> int:
    """The tokens of the dataset's longest train row (from its report), up to train.max_length."""
    return int(min(config.train.max_length, train_tokens(dataset).get("max", config.train.max_length)))


def dry_run(
    config: ProjectConfig, workspace: Workspace | None = None, calibrate: bool = True, steps: int = 4
) -> tuple[ProjectConfig, DatasetVersion, FitEstimate, Any]:
    """Everything `train` checks before it starts, and a measured time estimate; nothing is trained.

    Returns the config as the run would train it, the dataset version, the memory fit, and the
    estimate (None when it does not fit or `calibrate` is off): a few steps of the objective's own
    trainer on the base model as the objective loads it.
    """
    from tunesmith.train.estimate import estimate_epoch_time

    workspace = workspace or open_workspace(config)
    requested = config
    config, dataset, estimate = checked_dataset(config, workspace, refuse=False)
    timing = None
    if estimate.fits and calibrate:
        config, _ = choose_body(requested, config, dataset, workspace, steps)
        base = load_base(config, dataset, workspace)
        decided, attention = with_settings_decided(config, dataset, base)  # as the run will decide them
        timing = estimate_epoch_time(decided, dataset, base, workspace, steps=steps, callbacks=attention)
        config, _ = apply_budget(config, dataset, timing.seconds_per_step, 0.0)
    return config, dataset, estimate, timing


def launch_distributed(
    config: ProjectConfig,
    config_path: Path,
    overrides: list[str],
    num_processes: int,
    launcher: str = "accelerate",
    accelerate_config: Path | None = None,
    resume: str | None = None,
) -> ModelVersion:
    """Train with `num_processes` processes: DDP, or DeepSpeed/FSDP through an Accelerate config file.

    `accelerate launch` starts the workers (on a CPU they join over gloo), or `torch.distributed.run`
    with `launcher="torchrun"`. With `resume`, that stopped run continues from its newest complete
    checkpoint on the new processes, with its own recorded config.

    Raises:
        TrainLaunchError: when the launch cannot run here, or a worker fails; a failed run is marked so.
        RegistryError: when `resume` names no run, or a finished one.
    """
    import subprocess

    workspace = open_workspace(config)
    command = launch_command(num_processes, launcher, accelerate_config)
    run_id = resumable_run(workspace, resume).id if resume else open_train_run(config, workspace)
    worker = ["-m", "tunesmith.train.worker", str(config_path), run_id, *(["--resume"] if resume else [])]
    for override in overrides:
        worker += ["--set", override]
    completed = subprocess.run([*command, *worker], check=False)
    with session(workspace.engine) as s:
        run = s.get(Run, run_id)
        version = s.scalars(select(ModelVersion).where(ModelVersion.run_id == run_id)).first()
        if completed.returncode != 0 and run is not None and run.status == "running":
            run.status, run.error = "failed", f"a worker exited with code {completed.returncode}"
    if completed.returncode != 0 or version is None:
        raise TrainLaunchError(
            f"run {run_id}: the distributed workers failed (exit code {completed.returncode}); "
            f"see the output above. Resume with `tunesmith train --resume {run_id} --num-processes "
            f"{num_processes}`."
        )
    return version


def launch_command(num_processes: int, launcher: str, accelerate_config: Path | None) -> list[str]:
    """The launcher's command line for `num_processes` workers.

    Raises:
        TrainLaunchError: for an unknown launcher, an Accelerate config file that cannot be read, an
            FSDP one on a machine without CUDA, or a DeepSpeed one without the deepspeed package.
    """
    import importlib.util
    import sys

    import torch

    if launcher == "torchrun":
        if accelerate_config is not None:
            raise TrainLaunchError(
                "--accelerate-config is read by the accelerate launcher; drop --launcher torchrun"
            )
        return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(num_processes)]
    if launcher != "accelerate":
        raise TrainLaunchError(f"--launcher {launcher!r}: use accelerate or torchrun")
    command = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(num_processes)]
    if accelerate_config is None:  # one machine, DDP through Accelerate's torchrun launcher (gloo on a CPU);
        # the trainer decides mixed precision by the hardware (train.bf16), so the launcher leaves it be
        return [
            *command,
            "--multi_gpu",
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
        ]
    kind = accelerate_distributed_type(accelerate_config)
    # Accelerate 1.x shards with FSDP on accelerators only; on a CPU it would run plain DDP
    if kind == "FSDP" and not torch.cuda.is_available():
        raise TrainLaunchError(
            f"{accelerate_config}: distributed_type FSDP shards the model over GPUs, and this machine has "
            "no CUDA device (Accelerate would run plain DDP instead). Run it on a GPU machine, use a "
            "DeepSpeed config (its CPU accelerator shards over gloo), or drop --accelerate-config for DDP."
        )
    if kind == "DEEPSPEED" and importlib.util.find_spec("deepspeed") is None:
        raise TrainLaunchError(
            f"{accelerate_config}: distributed_type DEEPSPEED needs the deepspeed package: "
            "pip install deepspeed"
        )
    return [*command, "--config_file", str(accelerate_config)]


def accelerate_distributed_type(path: Path) -> str:
    """The `distributed_type` an Accelerate config file (YAML or JSON) names, as Accelerate reads it.

    Raises:
        TrainLaunchError: when the file is missing or Accelerate cannot read it.
    """
    from accelerate.commands.config.config_args import load_config_from_file

    if not path.is_file():
        raise TrainLaunchError(f"--accelerate-config {path}: no such file")
    try:
        loaded = load_config_from_file(str(path))
    except Exception as exc:  # Accelerate raises several kinds for an unreadable file
        raise TrainLaunchError(f"--accelerate-config {path}: Accelerate cannot read it: {exc}") from None
    return str(getattr(loaded.distributed_type, "value", loaded.distributed_type))


def open_train_run(config: ProjectConfig, workspace: Workspace) -> str:
    """Check the method, prepare the data and the memory fit, and open a `train` run; return its id.

    For a run that another process trains (`train_existing_run`): a distributed launch, or a run
    started from the web app, which shows the run's live curve while it trains.
    """
    from tunesmith.train.sft import open_run

    config, dataset, _ = checked_dataset(config, workspace)
    run_id, _ = open_run(config, workspace, dataset, "train")
    return run_id


def train_existing_run(
    config: ProjectConfig, run_id: str, *, resume: bool = False, workspace: Workspace | None = None
) -> TrainOutcome | None:
    """Train a run that a launcher opened, or with `resume` continue a stopped one (with its own
    recorded config); the main process registers it, the others return None.

    Raises:
        RegistryError: with `resume`, when there is no such run, or it already finished.
    """
    workspace = workspace or open_workspace(config)
    if resume:
        run = resumable_run(workspace, run_id)
    else:
        with session(workspace.engine) as s:
            found = s.get(Run, run_id)
        assert found is not None, f"no run {run_id}"
        run = found
    # the run's own recorded config, as `open_train_run` planned it, not the current file's: every
    # worker of a distributed launch (and a resumed run) trains what the run recorded
    config = ProjectConfig.model_validate(run.config).with_base_dir(config.base_dir)
    with session(workspace.engine) as s:
        dataset = s.get(DatasetVersion, run.dataset_version_id)
    assert dataset is not None
    return _train_and_register(config, workspace, dataset, kind=run.kind, run=run_id, resume=resume)


def resumable_run(workspace: Workspace, run_id: str) -> Run:
    """The stopped run `run_id`, to continue from its newest complete checkpoint.

    Raises:
        RegistryError: when there is no such run, or it already finished.
    """
    with session(workspace.engine) as s:
        run = s.get(Run, run_id)
    if run is None:
        raise RegistryError(f"no run {run_id!r} in {workspace.root}")
    if run.status == "finished":
        raise RegistryError(f"run {run_id} already finished; nothing to resume")
    return run


class TrainLaunchError(RuntimeError):
    """A distributed run whose workers failed."""


def resume_run(config: ProjectConfig, run_id: str, workspace: Workspace | None = None) -> TrainOutcome:
    """Continue a run that stopped (killed, crashed) from its newest complete checkpoint.

    The run's own resolved config and dataset version are used, not the current config file.

    Raises:
        RegistryError: when there is no such run, or it already finished.
    """
    outcome = train_existing_run(config, run_id, resume=True, workspace=workspace)
    assert outcome is not None  # a single process is the main process
    return outcome


def load_base(config: ProjectConfig, dataset: DatasetVersion, workspace: Workspace | None = None) -> Any:
    """The base model as the objective trains it: an LM, or a body with the objective's new head
    (one output for a reward model, one per label of the data for a classifier).

    With `train.init_from`, the weights are that registered version's (its adapter merged in).
    """
    from tunesmith.models import load_configured
    from tunesmith.train.classify import label_names
    from tunesmith.train.methods import quantization_config

    config = plan_run(config, dataset)
    if config.train.init_from:
        return _load_parent(config, workspace or open_workspace(config))
    objective, dtype = get_objective(config.train.objective), config.weights_dtype
    quantization = quantization_config(config.train)
    if objective.head == "causal-lm":
        return load_configured(config.model, dtype, quantization)
    import torch

    torch.manual_seed(config.train.seed)  # a new head starts from random weights: the same ones per seed
    if not objective.labelled:  # one score per answer
        return load_configured(config.model, dtype, quantization, head=objective.head, num_labels=1)
    labels = label_names(objective.name, dataset, config.data.labels)
    return load_configured(
        config.model,
        dtype,
        quantization,
        head=objective.head,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={name: i for i, name in enumerate(labels)},
    )


def _load_parent(config: ProjectConfig, workspace: Workspace) -> Any:
    """The version named by `train.init_from`, merged into plain weights, as a LoadedModel."""
    from tunesmith.models.loading import LoadedModel, resolve
    from tunesmith.registry.loading import merged_row

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
    dtype = config.weights_dtype if config.train.method in ("lora", "qlora") else "float32"
    model, tokenizer = merged_row(parent, workspace, dtype)
    resolved = resolve(config.model.id, config.model.source, config.model.revision)
    return LoadedModel(
        model=model, tokenizer=tokenizer, resolved=resolved, base_revision=parent.base_revision
    )


def run_objective(
    config: ProjectConfig,
    workspace: Workspace,
    dataset: DatasetVersion,
    base: Any,
    *,
    kind: str,
    run: str | None = None,
    resume: bool = False,
    timing: StepTiming | None = None,
) -> TrainResult:
    """One training run of the configured objective, recorded in the store; nothing is registered.
    Within a time budget, its steps are timed first (unless `timing` already measured them).

    Every objective runs this one loop: open (or reopen) the run, take the objective's rows, measure
    the forgetting probe, build the objective's TRL trainer, train (from the newest complete
    checkpoint when resuming), save, add the objective's own results, and close the run as
    `finished` (or `failed`, with the error, if anything raises).

    Raises:
        TrainConfigError: when the dataset's rows are not the kind the objective trains on.
    """
    import torch
    from datasets.utils.logging import disable_progress_bar

    from tunesmith.train.forgetting import probe_baseline
    from tunesmith.train.sft import callbacks_for, conclude_run, failing_run, start_run

    config, attention = with_settings_decided(plan_run(config, dataset), dataset, base)
    config, deadline = fit_budget(config, dataset, workspace, timing)
    objective, train = get_objective(config.train.objective), config.train
    run_id, run_dir = start_run(config, workspace, dataset, kind, run)
    with failing_run(workspace, run_id):
        records = objective.records(config, dataset)
        # the forgetting probe: general answers' loss before and after, for every objective that writes;
        # on every process of a distributed run, as a sharded model (ZeRO-3, FSDP) forwards only together
        probing = objective.generative
        probe = probe_baseline(train.forgetting, config.base_dir, base.model, base.tokenizer, enabled=probing)
        torch.manual_seed(train.seed)
        disable_progress_bar()  # tokenising a few thousand rows takes seconds; the training bar is enough
        callbacks = callbacks_for(train, run_id, run_dir, workspace, has_eval=bool(records["val"]))
        callbacks += attention
        if deadline is not None:
            from tunesmith.train.callbacks import BudgetStop

            callbacks.append(BudgetStop(deadline, train.time_budget_minutes))
        trainer = objective.build_trainer(TrainerJob(config, base, records, run_dir, callbacks, workspace))
        finish, context = objective.finish, RunContext(config, dataset, kind, base, records)
        result = conclude_run(
            trainer,
            workspace,
            run_id,
            run_dir,
            train,
            base.tokenizer,
            resume=resume,
            what=objective.describe(config, trainer),
            rows=len(records["train"]),
            probe=probe,
            extra=(lambda t, r, w: finish(context, t, r, w)) if finish is not None else None,
        )
        if objective.lineage is not None:
            result.lineage = objective.lineage(config, workspace)
        return result


def with_settings_decided(
    config: ProjectConfig, dataset: DatasetVersion, base: Any, say: bool = True
) -> tuple[ProjectConfig, list[TrainerCallback]]:
    """`config` with `train.activation_checkpointing: auto` decided for this run (`decide_checkpointing`),
    and the callbacks that train with the attention `model.attn_implementation: auto` decided
    (`decide_attention`); with `say`, each decision printed, the same for a run and its dry-run."""
    from tunesmith.progress import console
    from tunesmith.train.callbacks import TrainingAttention

    longest = longest_tokens(config, dataset)
    decided, reason = decide_checkpointing(config, base.model.config, longest)
    attention, why = decide_attention(config, longest)
    for line in (reason, why):
        if line is not None and say and is_main_process():
            console.print(f"[dim]{line}[/dim]")
    return decided, [TrainingAttention(attention)] if attention is not None else []


# On a CPU, eager attention (plain matrix products and a softmax) is faster than sdpa's flash kernel
# for short rows and slower for long ones: `bench/attention.py` measured the crossover between 256
# and 384 tokens (a LoRA step of SmolLM2-135M, batch 8, bfloat16 autocast).
EAGER_ATTENTION_MAX_TOKENS = 256


def decide_attention(config: ProjectConfig, sequence_length: int) -> tuple[str | None, str | None]:
    """The attention implementation `model.attn_implementation: auto` trains with, and why.

    Eager on a CPU when no row is longer than `EAGER_ATTENTION_MAX_TOKENS` (its memory grows with
    the square of the length, which the fit estimate already counts); None (the model's default,
    sdpa) elsewhere: on a GPU, for packed rows (as long as max_length), for the objectives that
    generate while they train (`Objective.generates`), or when the config names one. Only training uses
    it: the model is set back when training ends (`callbacks.TrainingAttention`), so it is evaluated
    and served with the implementation it loads with.
    """
    import torch

    if config.model.attn_implementation != "auto" or config.train.packing or torch.cuda.is_available():
        return None, None
    if config.train.objective != "auto" and get_objective(config.train.objective).generates:
        return None, None
    if sequence_length > EAGER_ATTENTION_MAX_TOKENS:
        return None, None
    return "eager", (
        f"attention: eager while training (rows of at most {sequence_length} tokens; on a CPU it is "
        f"faster than sdpa up to {EAGER_ATTENTION_MAX_TOKENS})"
    )


def reproduce(
    workspace: Workspace, version: ModelVersion, tolerance: float = 0.02, base_dir: Path | None = None
) -> dict[str, Any]:
    """Train again from the version's record (its resolved config, dataset version and seed) and
    compare the run's metrics with the recorded ones, each within `tolerance` (relative).

    The new run is recorded (kind `reproduce`) but not registered.

    Raises:
        RegistryError: when the version's dataset version is no longer in the workspace.
    """
    from tunesmith.registry.lifecycle import NOT_COMPARABLE, is_number

    if "merge" in version.lineage:  # made by merging versions, not by training: merge them again
        from tunesmith.train.merge import reproduce_merge

        return reproduce_merge(workspace, version)
    if version.dataset_version_id is None:
        raise RegistryError(f"{version.name} records no dataset version; it cannot be reproduced")
    with session(workspace.engine) as s:
        dataset = s.get(DatasetVersion, version.dataset_version_id)
    if dataset is None or not workspace.dataset_dir(dataset.id).exists():
        raise RegistryError(
            f"dataset version {version.dataset_version_id} of {version.name} is not in this workspace"
        )
    config = ProjectConfig.model_validate(version.config)
    if base_dir is not None:  # the project's folder: relative paths (reward functions) resolve as in training
        config = config.with_base_dir(base_dir)
    base = load_base(config, dataset, workspace)
    check_base(version, base.base_revision, "reproducing")
    result = run_objective(config, workspace, dataset, base, kind="reproduce")
    rows = []
    for key in sorted(set(version.metrics) & set(result.metrics)):
        recorded, again = version.metrics[key], result.metrics[key]
        if not (is_number(recorded) and is_number(again)) or any(word in key for word in NOT_COMPARABLE):
            continue
        scale = max(abs(recorded), 1e-12)
        rows.append(
            {
                "metric": key,
                "recorded": recorded,
                "reproduced": again,
                "relative_difference": abs(again - recorded) / scale,
                "match": abs(again - recorded) <= tolerance * scale,
            }
        )
    return {
        "version": version.name,
        "run": result.run_id,
        "tolerance": tolerance,
        "metrics": rows,
        "matches": bool(rows) and all(r["match"] for r in rows),
    }


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
    timing: StepTiming | None = None,
) -> TrainOutcome | None:
    config = plan_run(config, dataset)
    base = base or load_base(config, dataset, workspace)
    result = run_objective(config, workspace, dataset, base, kind=kind, run=run, resume=resume, timing=timing)
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
        metrics=dict(result.metrics),
    )
