"""Supervised fine-tuning (instruction/chat SFT) with TRL's `SFTTrainer`, loss on the answers only.

The trainer is TRL's as it is: we build its `SFTConfig` and PEFT `LoraConfig` from the project
config, add a progress callback, and record the run with everything needed to reproduce it.
"""

from __future__ import annotations

import dataclasses
import errno
import importlib.util
import json
import secrets
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from tunesmith.chat import chat_messages
from tunesmith.config import ProjectConfig, TrainConfig
from tunesmith.data import load_split
from tunesmith.progress import console
from tunesmith.reasoning import ReasoningPolicy
from tunesmith.store import DatasetVersion, Run, session
from tunesmith.workspace import Workspace

if TYPE_CHECKING:
    from tunesmith.train.objectives import TrainerJob

# Fields the project config sets itself; `train.args` may not set them a second time.
_OWN_FIELDS = {
    "output_dir",
    "num_train_epochs",
    "max_steps",
    "learning_rate",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "max_length",
    "lr_scheduler_type",
    "warmup_steps",
    "weight_decay",
    "logging_steps",
    "seed",
    "activation_checkpointing",
    "gradient_checkpointing",
    "activation_checkpointing_kwargs",
    "gradient_checkpointing_kwargs",
    "save_strategy",
    "save_steps",
    "save_total_limit",
    "eval_strategy",
    "eval_steps",
    "load_best_model_at_end",
    "metric_for_best_model",
    "report_to",
    "train_sampling_strategy",
    "group_by_length",
    "packing",
}


# Trainer fields that follow from other settings, and which ones.
_DERIVED = {
    "eval_strategy": "evaluation follows train.save_strategy (when there is a validation split)",
    "eval_steps": "evaluation follows train.save_steps",
    "load_best_model_at_end": "set by train.early_stopping_patience",
    "gradient_checkpointing": "set it as train.activation_checkpointing instead",
    "activation_checkpointing_kwargs": "set train.checkpoint_every_n_layers instead",
    "gradient_checkpointing_kwargs": "set train.checkpoint_every_n_layers instead",
    "train_sampling_strategy": "set train.group_by_length instead",
}


class TrainConfigError(ValueError):
    """Training settings that TRL would reject, named by their field path."""


@dataclass
class TrainResult:
    """A finished run: where its artifacts are and the model it trained (still in memory)."""

    run_id: str
    run_dir: Path
    adapter_dir: Path
    metrics: dict[str, Any]
    model: Any
    tokenizer: Any
    lineage: dict[str, Any] = dataclasses.field(default_factory=dict)  # what the objective adds (a teacher)


def new_run_id() -> str:
    return f"run-{datetime.now(UTC):%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"


def trainer_kwargs(train: TrainConfig, output_dir: Path, has_eval: bool, args_class: Any) -> dict[str, Any]:
    """The `TrainingArguments` fields every objective shares, from the project's train section.

    Raises:
        TrainConfigError: for a key in `train.args` that `args_class` does not have or that the
            project config already sets.
    """
    import torch

    from tunesmith.config import native_bf16

    known = {f.name for f in dataclasses.fields(args_class)}
    name = args_class.__name__
    owner = f"TRL's {name}" if name != "TrainingArguments" else "transformers' TrainingArguments"
    for key in train.args:
        if key in _OWN_FIELDS:
            own = _DERIVED.get(key, f"set it as train.{key} instead")
            raise TrainConfigError(f"train.args.{key}: {own}")
        if key not in known:
            raise TrainConfigError(
                f"train.args.{key}: not a field of {owner}; "
                f"see the {owner.split(maxsplit=1)[0]} docs for the fields it takes"
            )
    for target in train.report_to:
        if importlib.util.find_spec(target) is None:
            raise TrainConfigError(
                f"train.report_to: {target} is not installed; run `pip install {target}` or remove it"
            )
    checkpoints = train.save_strategy
    kwargs: dict[str, Any] = {
        "output_dir": str(output_dir),
        "num_train_epochs": train.num_train_epochs,
        "max_steps": train.max_steps,
        "learning_rate": train.learning_rate,
        "per_device_train_batch_size": train.per_device_train_batch_size,
        "per_device_eval_batch_size": train.per_device_train_batch_size,
        "gradient_accumulation_steps": train.accumulation_steps,
        "lr_scheduler_type": train.lr_scheduler_type,
        "warmup_steps": train.warmup_steps,
        "weight_decay": train.weight_decay,
        "logging_steps": train.logging_steps,
        "seed": train.seed,
        "data_seed": train.seed,
        "activation_checkpointing": train.activation_checkpointing,
        "activation_checkpointing_kwargs": {"every_n_layers": train.checkpoint_every_n_layers},
        "save_strategy": checkpoints,
        "save_steps": train.save_steps,
        "save_total_limit": train.save_total_limit,
        # Evaluate when a checkpoint is written, so the best checkpoint is known and early stopping can act.
        "eval_strategy": (checkpoints if checkpoints != "no" else "epoch") if has_eval else "no",
        "eval_steps": train.save_steps,
        "load_best_model_at_end": has_eval and train.early_stopping_patience is not None,
        "metric_for_best_model": train.metric_for_best_model,
        "greater_is_better": not train.metric_for_best_model.endswith("loss"),
        "report_to": list(train.report_to),
        "train_sampling_strategy": "group_by_length" if train.group_by_length else "random",
        "disable_tqdm": True,  # the rich bar replaces it
        # bfloat16 autocast where the hardware multiplies bfloat16 natively (a GPU that has it, a CPU
        # with AVX512-BF16 or AMX); the trainable weights stay float32 masters.
        "bf16": native_bf16(),
        "use_cpu": not torch.cuda.is_available(),
    }
    kwargs.update(train.args)
    return kwargs


def sft_config(train: TrainConfig, output_dir: Path, has_eval: bool) -> Any:
    """Build TRL's `SFTConfig` from the project's train section.

    Raises:
        TrainConfigError: for a key in `train.args` that `SFTConfig` does not have or that the
            project config already sets.
    """
    from trl import SFTConfig

    kwargs = trainer_kwargs(train, output_dir, has_eval, SFTConfig)
    kwargs.setdefault("max_length", train.max_length)
    kwargs.setdefault("completion_only_loss", train.objective in ("sft", "multitask"))
    kwargs.setdefault("packing", train.packing)
    if train.objective == "multitask":
        # The mixture's train split is the whole run's row stream in schedule order: one pass, in order.
        kwargs["num_train_epochs"] = 1.0
        kwargs["train_sampling_strategy"] = "sequential"
    return SFTConfig(**kwargs)


def lora_config(train: TrainConfig) -> Any:
    """PEFT's `LoraConfig` from `train.lora`."""
    from peft import LoraConfig

    return LoraConfig(task_type="CAUSAL_LM", **train.lora.model_dump())


def to_prompt_completion(records: list[dict[str, Any]], tokenizer: Any) -> list[dict[str, Any]]:
    """Canonical chat records as TRL's conversational prompt/completion rows (loss on the answer),
    reasoning traces and tool calls written into their turns (`tunesmith.chat`)."""
    rows = []
    for record in records:
        messages, kwargs = chat_messages(record["messages"], tokenizer, record.get("tools"))
        rows.append({"prompt": messages[:-1], "completion": messages[-1:], **kwargs})
    return rows


def training_rows(
    objective: str, records: list[dict[str, Any]], tokenizer: Any, reasoning: ReasoningPolicy = "train"
) -> list[dict[str, Any]]:
    """Rows in the shape TRL's SFTTrainer takes for the objective: chat records as tokens with a mask
    on every assistant turn (`tunesmith.train.turns`), or text for pretrain."""
    if objective != "pretrain":  # sft, multitask, and distill's off-policy SFT on a teacher's answers
        from tunesmith.train.turns import assistant_token_rows, supports_spans

        if not records or supports_spans(tokenizer, records):
            return assistant_token_rows(records, tokenizer, reasoning)
        console.print(
            "[yellow]note:[/yellow] this chat template renders a conversation's turns differently inside "
            "the whole conversation; only the last assistant turn of each row trains"
        )
        return to_prompt_completion(records, tokenizer)
    return [
        {"text": r["text"]}
        if "text" in r
        else {"text": tokenizer.apply_chat_template(r["messages"], tokenize=False)}
        for r in records
    ]


def last_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint of a run: one whose trainer state was written whole (it is last)."""
    folder = run_dir / "trainer"
    if not folder.exists():
        return None
    complete = [p for p in folder.glob("checkpoint-*") if _complete(p)]
    return max(complete, key=lambda p: int(p.name.rsplit("-", 1)[1]), default=None)


def remove_incomplete_checkpoints(run_dir: Path) -> list[str]:
    """Remove the checkpoints a killed or failed save left half-written; returns their names."""
    folder = run_dir / "trainer"
    partial = (
        [p for p in folder.glob("checkpoint-*") if p.is_dir() and not _complete(p)] if folder.exists() else []
    )
    for path in partial:
        shutil.rmtree(path, ignore_errors=True)
    return sorted(p.name for p in partial)


def _complete(checkpoint: Path) -> bool:
    try:
        json.loads((checkpoint / "trainer_state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return True


class DiskFullError(RuntimeError):
    """The disk filled up while a run wrote; the message names the checkpoint that was kept."""


def _is_disk_full(exc: BaseException, run_dir: Path) -> bool:
    """Whether a failed write ran out of space: each writer says so its own way (an OSError from
    Python, a RuntimeError from torch's zip writer, an error from the safetensors library)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno == errno.ENOSPC:
            return True
        text = str(seen)
        if "No space left on device" in text or "StorageFull" in text:
            return True
        if "file write failed" in text:  # torch.save: the zip writer does not pass the errno on
            return shutil.disk_usage(run_dir).free < 64 * 2**20
        seen = seen.__cause__ or seen.__context__
    return False


def _disk_full(run_dir: Path, exc: BaseException) -> DiskFullError:
    removed = remove_incomplete_checkpoints(run_dir)  # frees what the failed save took
    kept = last_checkpoint(run_dir)
    free = shutil.disk_usage(run_dir).free / 2**20
    what = f" writing {exc.filename}" if isinstance(exc, OSError) and exc.filename else ""
    return DiskFullError(
        f"the disk holding {run_dir} filled up{what} ({free:.1f} MiB free after removing the half-written "
        f"{', '.join(removed) or 'nothing'}). "
        + (
            f"The last complete checkpoint, {kept.name}, is kept. "
            if kept
            else "No checkpoint was complete. "
        )
        + f"Free some space, then `tunesmith train --resume {run_dir.name}`."
    )


def is_main_process() -> bool:
    """True on the process that keeps the books (rank 0), and in any single-process run."""
    import os

    return int(os.environ.get("RANK", "0")) == 0


def open_run(
    config: ProjectConfig, workspace: Workspace, dataset: DatasetVersion, kind: str
) -> tuple[str, Path]:
    """Create the run's row (status `running`), folder and resolved config; return its id and folder."""
    resolved = config.resolved()
    run_id = new_run_id()
    run_dir = workspace.run_dir(run_id)
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False), encoding="utf-8")
    with session(workspace.engine) as s:
        s.add(
            Run(
                id=run_id,
                kind=kind,
                status="running",
                project=config.project,
                config=resolved,
                dataset_version_id=dataset.id,
                base_model=config.model.id,
                metrics={},
                path=str(run_dir),
            )
        )
    return run_id, run_dir


def start_run(
    config: ProjectConfig, workspace: Workspace, dataset: DatasetVersion, kind: str, run: str | None
) -> tuple[str, Path]:
    """Open a new run, or reopen `run` (resumed, or opened by a launcher); return its id and folder."""
    if run is None:
        return open_run(config, workspace, dataset, kind)
    return run, (_reopen_run(workspace, run) if is_main_process() else workspace.run_dir(run))


@contextmanager
def failing_run(workspace: Workspace, run_id: str) -> Iterator[None]:
    """Mark the run `failed`, with the error, when the body raises (on the main process); re-raise."""
    try:
        yield
    except BaseException as exc:
        if is_main_process():
            close_run(workspace, run_id, "failed", {}, f"{exc.__class__.__name__}: {exc}")
        raise


def _reopen_run(workspace: Workspace, run_id: str) -> Path:
    with session(workspace.engine) as s:
        run = s.get(Run, run_id)
        assert run is not None
        run.status, run.error, run.finished_at = "running", None, None
    return workspace.run_dir(run_id)


def callbacks_for(
    train: TrainConfig, run_id: str, run_dir: Path, workspace: Workspace, has_eval: bool
) -> list[Any]:
    from transformers import EarlyStoppingCallback

    from tunesmith.train.callbacks import MetricsCallback, RichProgressCallback, added_callbacks

    callbacks: list[Any] = [
        RichProgressCallback(),
        MetricsCallback(run_id, run_dir / "metrics.jsonl", workspace.engine),
        *added_callbacks(),
    ]
    if train.early_stopping_patience is not None and has_eval:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=train.early_stopping_patience))
    return callbacks


_GUARDS = {"ewc": "an EWC penalty", "l2sp": "an L2-SP penalty", "replay": "general-data replay"}


def describe_lm(config: ProjectConfig, trainer: Any) -> str:
    """The method and the forgetting guard a causal-LM run trains with, as its trainer has them:
    "freeze with an EWC penalty" (the penalty is the trainer's; replay is in its rows)."""
    guard = getattr(trainer, "penalty_kind", None)
    if guard is None and config.train.forgetting.method == "replay":
        guard = "replay"
    return f"{config.train.method} with {_GUARDS[guard]}" if guard else config.train.method


def sft_trainer(job: TrainerJob) -> Any:
    """TRL's SFTTrainer on `records` (train and val chat or text rows), the method applied.

    With EWC or L2-SP guarding against forgetting, its penalised variant; EWC's Fisher information is
    estimated on the general rows.
    """
    from datasets import Dataset
    from trl import SFTTrainer

    from tunesmith.train.forgetting import PenalizedSFTTrainer, general_rows
    from tunesmith.train.lm_head import use_answer_only_head
    from tunesmith.train.methods import apply_freeze

    config, base, records, run_dir, callbacks = job.config, job.base, job.records, job.run_dir, job.callbacks
    train, guard = config.train, config.train.forgetting
    reasoning = config.data.reasoning
    train_rows = training_rows(train.objective, records["train"], base.tokenizer, reasoning)
    val_rows = training_rows(train.objective, records.get("val", []), base.tokenizer, reasoning)
    if train.method in ("freeze", "head"):
        apply_freeze(base.model, train)
    common: dict[str, Any] = {
        "model": base.model,
        "args": sft_config(train, run_dir / "trainer", has_eval=bool(val_rows)),
        "train_dataset": Dataset.from_list(train_rows),
        "eval_dataset": Dataset.from_list(val_rows) if val_rows else None,
        "processing_class": base.tokenizer,
        "peft_config": lora_config(train) if train.method in ("lora", "qlora") else None,
        "callbacks": callbacks,
    }
    if guard.method not in ("ewc", "l2sp"):
        trainer = SFTTrainer(**common)
        use_answer_only_head(trainer)
        return trainer
    strength = guard.ewc_lambda if guard.method == "ewc" else guard.l2sp_alpha
    trainer = PenalizedSFTTrainer(**common, penalty=guard.method, strength=strength)
    use_answer_only_head(trainer)
    if guard.method == "ewc":
        replay = general_rows(guard, config.base_dir)[0]
        trainer.estimate_fisher(replay[: guard.fisher_samples], base.tokenizer)
    return trainer


def sft_records(config: ProjectConfig, dataset: DatasetVersion) -> dict[str, list[dict[str, Any]]]:
    """The train and val rows of an LM objective; with `forgetting.method: replay`, general rows mixed in."""
    return with_replay(config, split_records(config, dataset))


def with_replay(
    config: ProjectConfig, records: dict[str, list[dict[str, Any]]]
) -> dict[str, list[dict[str, Any]]]:
    """`records` with general rows mixed into train when `forgetting.method` is replay."""
    from tunesmith.train.forgetting import general_rows, replay_mix

    guard = config.train.forgetting
    if guard.method == "replay":
        replay = general_rows(guard, config.base_dir)[0]
        records["train"] = replay_mix(records["train"], replay, guard.replay_fraction, config.train.seed)
    return records


def split_records(config: ProjectConfig, dataset: DatasetVersion) -> dict[str, list[dict[str, Any]]]:
    """The dataset's train and val rows, as the data stage stored them."""
    return {split: load_split(dataset, split) for split in ("train", "val")}


def conclude_run(
    trainer: Any,
    workspace: Workspace,
    run_id: str,
    run_dir: Path,
    train: TrainConfig,
    tokenizer: Any,
    *,
    resume: bool,
    what: str,
    rows: int,
    probe: tuple[list[dict[str, Any]], float | None] = ([], None),
    extra: Any = None,
) -> TrainResult:
    """Train, save the weights and tokenizer, measure, write the run's artifacts and close it.

    `probe` is the forgetting probe's rows and the base model's loss on them (None: no probe);
    `extra(trainer, run_dir, weights_dir)` adds objective-specific metrics (and files) after the weights
    are saved: on the main process, or on every one for a sharded model (files and output from the main
    one only).
    """
    from transformers import PrinterCallback

    main = is_main_process()
    trainer.remove_callback(PrinterCallback)  # the bar shows the loss; every log goes to metrics.jsonl
    done = fit_and_save(trainer, run_dir, train, resume, what, rows)
    if main:
        tokenizer.save_pretrained(str(done.weights_dir))
    metrics = run_metrics(trainer, done)
    # a sharded model (ZeRO-3, FSDP) forwards only with every process: each one scores, the main one writes
    if extra is not None and (main or metrics["distributed"] in SHARDED):
        found = extra(trainer, run_dir, done.weights_dir)
        metrics.update(found if main else {})
    probe_rows, before = probe
    if before is not None:
        metrics.update(_forgetting_report(trainer.model, tokenizer, probe_rows, before))
    if main:
        _write_artifacts(run_dir, trainer.state, metrics)
        close_run(workspace, run_id, "finished", metrics, None)
    return TrainResult(run_id, run_dir, done.weights_dir, metrics, trainer.model, tokenizer)


@dataclass
class Fitted:
    """What `fit_and_save` measured and where it saved the weights."""

    output: Any
    seconds: float
    tokens: float
    weights_dir: Path
    trainable: int
    total: int
    resumed_at: int = 0  # the checkpoint's step when the run resumed


def fit_and_save(
    trainer: Any, run_dir: Path, train: TrainConfig, resume: bool, what: str, rows: int
) -> Fitted:
    """Train (from the newest complete checkpoint when resuming), then save the adapter or weights."""
    trainable, total = count_parameters(trainer.model)
    checkpoint = last_checkpoint(run_dir) if resume else None
    if is_main_process():
        console.print(
            f"Training {what}: {trainable:,} of {total:,} parameters trainable "
            f"({100 * trainable / total:.2f}%), {rows} rows, "
            f"batch {train.per_device_train_batch_size} x {train.accumulation_steps} accumulation"
            + (f"; resuming from {checkpoint.name}" if checkpoint is not None else "")
        )
    if resume and is_main_process():
        remove_incomplete_checkpoints(run_dir)  # a save the kill cut short; its step is trained again
    tokens_before = _tokens_seen(checkpoint)
    started = time.perf_counter()
    weights_dir = run_dir / ("adapter" if train.method in ("lora", "qlora") else "model")
    try:
        output = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint is not None else None)
        seconds = time.perf_counter() - started
        trainer.save_model(str(weights_dir))  # on the main process only, as the trainer does
    except Exception as exc:
        if not _is_disk_full(exc, run_dir):
            raise
        raise _disk_full(run_dir, exc) from exc
    tokens = _tokens_seen_in(trainer.state.log_history) - tokens_before
    resumed_at = int(checkpoint.name.rsplit("-", 1)[1]) if checkpoint is not None else 0
    return Fitted(output, seconds, tokens, weights_dir, trainable, total, resumed_at)


def _forgetting_report(
    model: Any, tokenizer: Any, probe: list[dict[str, Any]], before: float
) -> dict[str, float]:
    """The probe's answer loss after training, against the base model's."""
    from tunesmith.train.forgetting import answer_loss

    after = answer_loss(model, tokenizer, probe)
    console.print(
        f"Forgetting probe ({len(probe)} general rows): answer loss {before:.3f} → {after:.3f} "
        f"({after - before:+.3f})"
    )
    return {"general_loss_base": before, "general_loss_after": after, "forgetting": after - before}


def _write_artifacts(run_dir: Path, state: Any, metrics: dict[str, Any]) -> None:
    """metrics.json, the full log history, and the loss curve."""
    if state.best_model_checkpoint:
        metrics["best_checkpoint"] = Path(state.best_model_checkpoint).name
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2), encoding="utf-8")
    (run_dir / "log_history.json").write_text(json.dumps(state.log_history, indent=2), encoding="utf-8")
    plot_loss(state.log_history, run_dir / "loss.png")


def _tokens_seen_in(history: list[dict[str, Any]]) -> float:
    from tunesmith.train.callbacks import tokens_seen

    seen = [tokens_seen(h) for h in history if "num_tokens" in h or "num_input_tokens_seen" in h]
    return seen[-1] if seen else 0.0


def _tokens_seen(checkpoint: Path | None) -> float:
    if checkpoint is None:
        return 0.0
    state = json.loads((checkpoint / "trainer_state.json").read_text(encoding="utf-8"))
    return _tokens_seen_in(state.get("log_history", []))


def close_run(
    workspace: Workspace, run_id: str, status: str, metrics: dict[str, Any], error: str | None
) -> None:
    """Record a run's end: its status, metrics and error, and when it finished."""
    with session(workspace.engine) as s:
        run = s.get(Run, run_id)
        assert run is not None
        run.status, run.metrics, run.error = status, metrics, error
        run.finished_at = datetime.now(UTC)


def count_parameters(model: Any) -> tuple[int, int]:
    """(parameters the optimizer updates, all parameters) of `model`."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


def whole_run_loss(
    history: list[dict[str, Any]], session_loss: float, resumed_at: int, global_step: int
) -> float:
    """The mean training loss per step over the whole run.

    The trainer's own figure covers only the steps since `resumed_at` (its checkpoint) when a run
    resumed; the steps before come from the logged losses up to that checkpoint (each the mean of its
    logging interval). Steps between the last log and the checkpoint, if any, are not known, and
    the mean is over the steps that are.
    """
    if resumed_at == 0:
        return session_loss
    total, last = 0.0, 0
    for entry in history:
        if "loss" in entry and last < entry["step"] <= resumed_at:
            total, last = total + entry["loss"] * (entry["step"] - last), entry["step"]
    session_steps = max(global_step - resumed_at, 0)
    steps = last + session_steps
    return (total + session_loss * session_steps) / steps if steps else session_loss


SHARDED = ("deepspeed-zero3", "fsdp1", "fsdp2")  # `distribution`s whose weights are split over processes


def distribution(accelerator: Any) -> str:
    """How the run's processes shared the work: single, ddp, fsdp1/fsdp2, deepspeed-zero1..3."""
    kind = str(getattr(accelerator.distributed_type, "value", accelerator.distributed_type))
    if kind == "DEEPSPEED":
        return f"deepspeed-zero{accelerator.state.deepspeed_plugin.zero_stage}"
    if kind == "FSDP":
        return f"fsdp{getattr(accelerator.state.fsdp_plugin, 'fsdp_version', 1)}"
    return "single" if kind == "NO" else "ddp"


def run_metrics(trainer: Any, done: Fitted) -> dict[str, Any]:
    """The run's figures: losses, time, throughput, parameters, steps, and the last validation scores."""
    history = trainer.state.log_history
    losses = [h["loss"] for h in history if "loss" in h]
    metrics: dict[str, Any] = {
        "train_loss": whole_run_loss(
            history, float(done.output.training_loss), done.resumed_at, trainer.state.global_step
        ),
        "first_logged_loss": float(losses[0]) if losses else float("nan"),
        "last_logged_loss": float(losses[-1]) if losses else float("nan"),
        "train_seconds": round(done.seconds, 2),
        "tokens_per_second": round(done.tokens / done.seconds, 1) if done.seconds else 0.0,
        "train_tokens": int(done.tokens),
        "trainable_parameters": done.trainable,
        "total_parameters": done.total,
        "global_step": trainer.state.global_step,
        "world_size": trainer.args.world_size,
        "distributed": distribution(trainer.accelerator),
    }
    evals = [h for h in history if "eval_loss" in h]
    state, args = trainer.state, trainer.args
    metrics["epochs"] = round(float(state.epoch or 0), 3)
    kept = evals[-1] if evals else None
    if args.load_best_model_at_end and state.best_global_step is not None:
        # the weights kept are the best evaluation's (train.early_stopping_patience): so are its scores
        kept = next((h for h in evals if h.get("step") == state.best_global_step), kept)
        metrics["best_step"] = int(state.best_global_step)
        metrics["stopped_early"] = state.global_step < state.max_steps
    if kept is not None:
        timing = ("runtime", "per_second")
        metrics.update(
            {
                k: float(v)
                for k, v in kept.items()
                if k.startswith("eval_") and not any(t in k for t in timing)
            }
        )
    return metrics


def plot_loss(history: list[dict[str, Any]], path: Path) -> None:
    """Write the training (and validation) loss curve as a PNG."""
    from tunesmith.plots import pyplot

    plt = pyplot()

    train = [(h["step"], h["loss"]) for h in history if "loss" in h]
    evals = [(h["step"], h["eval_loss"]) for h in history if "eval_loss" in h]
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=110)
    if train:
        ax.plot(*zip(*train, strict=True), label="train loss")
    if evals:
        ax.plot(*zip(*evals, strict=True), marker="o", label="validation loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
