"""Supervised fine-tuning (instruction/chat SFT) with TRL's `SFTTrainer`, loss on the answers only.

The trainer is TRL's as it is: we build its `SFTConfig` and PEFT `LoraConfig` from the project
config, add a progress callback, and record the run with everything needed to reproduce it.
"""

from __future__ import annotations

import dataclasses
import json
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from tunesmith.config import ProjectConfig, TrainConfig
from tunesmith.data import load_split
from tunesmith.progress import console
from tunesmith.store import DatasetVersion, Run, session
from tunesmith.workspace import Workspace

if TYPE_CHECKING:
    from tunesmith.models import LoadedModel

# Fields the project config sets itself; `train.args` may not set them a second time.
_OWN_FIELDS = {
    "output_dir",
    "num_train_epochs",
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
}


class TrainConfigError(ValueError):
    """Training settings that TRL would reject, named by their field path."""


@dataclass
class TrainResult:
    """A finished run: where its artifacts are and the model it trained (still in memory)."""

    run_id: str
    run_dir: Path
    adapter_dir: Path
    metrics: dict[str, float]
    model: Any
    tokenizer: Any


def new_run_id() -> str:
    return f"run-{datetime.now(UTC):%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"


def sft_config(train: TrainConfig, output_dir: Path, has_eval: bool) -> Any:
    """Build TRL's `SFTConfig` from the project's train section.

    Raises:
        TrainConfigError: for a key in `train.args` that `SFTConfig` does not have or that the
            project config already sets.
    """
    import torch
    from trl import SFTConfig

    known = {f.name for f in dataclasses.fields(SFTConfig)}
    for key in train.args:
        if key in _OWN_FIELDS:
            raise TrainConfigError(f"train.args.{key}: set it as train.{key} instead")
        if key not in known:
            raise TrainConfigError(
                f"train.args.{key}: not a field of TRL's SFTConfig; see the TRL docs for the fields it takes"
            )
    kwargs: dict[str, Any] = {
        "output_dir": str(output_dir),
        "num_train_epochs": train.num_train_epochs,
        "learning_rate": train.learning_rate,
        "per_device_train_batch_size": train.per_device_train_batch_size,
        "per_device_eval_batch_size": train.per_device_train_batch_size,
        "gradient_accumulation_steps": train.gradient_accumulation_steps,
        "max_length": train.max_length,
        "lr_scheduler_type": train.lr_scheduler_type,
        "warmup_steps": train.warmup_steps,
        "weight_decay": train.weight_decay,
        "logging_steps": train.logging_steps,
        "seed": train.seed,
        "activation_checkpointing": train.activation_checkpointing,
        "data_seed": train.seed,
        "save_strategy": "no",
        "eval_strategy": "epoch" if has_eval else "no",
        "report_to": [],
        "disable_tqdm": True,  # the rich bar replaces it
        "completion_only_loss": True,
        # Mixed precision where the hardware has it; TRL's bf16 default fails outright on a CPU.
        "bf16": torch.cuda.is_available() and torch.cuda.is_bf16_supported(),
        "use_cpu": not torch.cuda.is_available(),
    }
    kwargs.update(train.args)
    return SFTConfig(**kwargs)


def lora_config(train: TrainConfig) -> Any:
    """PEFT's `LoraConfig` from `train.lora`."""
    from peft import LoraConfig

    return LoraConfig(task_type="CAUSAL_LM", **train.lora.model_dump())


def to_prompt_completion(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Canonical chat records as TRL's conversational prompt/completion rows (loss on the answer)."""
    return [{"prompt": r["messages"][:-1], "completion": r["messages"][-1:]} for r in records]


def train_sft(
    config: ProjectConfig,
    workspace: Workspace,
    dataset: DatasetVersion,
    base: LoadedModel,
    *,
    kind: str = "train",
) -> TrainResult:
    """Fine-tune `base` on `dataset`'s train split; record the run and save the adapter.

    The run row is written first (status `running`) and closed as `finished` or `failed`, so a
    crash leaves a visible record. Artifacts go to the workspace's `runs/RUN_ID/`.
    """
    import torch
    from datasets import Dataset
    from datasets.utils.logging import disable_progress_bar
    from transformers import PrinterCallback
    from trl import SFTTrainer

    from tunesmith.train.callbacks import RichProgressCallback

    run_id = new_run_id()
    run_dir = workspace.run_dir(run_id)
    run_dir.mkdir(parents=True)
    resolved = config.resolved()
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

    try:
        train_rows = to_prompt_completion(load_split(dataset, "train"))
        val_rows = to_prompt_completion(load_split(dataset, "val"))
        args = sft_config(config.train, run_dir / "trainer", has_eval=bool(val_rows))
        torch.manual_seed(config.train.seed)
        disable_progress_bar()  # tokenising a few hundred rows takes no time; one bar is enough
        trainer = SFTTrainer(
            model=base.model,
            args=args,
            train_dataset=Dataset.from_list(train_rows),
            eval_dataset=Dataset.from_list(val_rows) if val_rows else None,
            processing_class=base.tokenizer,
            peft_config=lora_config(config.train) if config.train.method == "lora" else None,
            callbacks=[RichProgressCallback()],
        )
        trainer.remove_callback(PrinterCallback)  # the bar shows the loss; metrics go to log_history.json
        trainable, total = _count_parameters(trainer.model)
        console.print(
            f"Training {config.train.method}: {trainable:,} of {total:,} parameters trainable "
            f"({100 * trainable / total:.2f}%), {len(train_rows)} rows, "
            f"{config.train.num_train_epochs:g} epochs"
        )
        tokenized: Any = trainer.train_dataset
        n_tokens = sum(len(row["input_ids"]) for row in tokenized)
        started = time.perf_counter()
        output = trainer.train()
        seconds = time.perf_counter() - started
        adapter_dir = run_dir / ("adapter" if config.train.method == "lora" else "model")
        trainer.save_model(str(adapter_dir))
        base.tokenizer.save_pretrained(str(adapter_dir))
        metrics = _metrics(
            trainer.state.log_history,
            output.training_loss,
            seconds,
            n_tokens * config.train.num_train_epochs,
            trainable,
            total,
        )
        (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2), encoding="utf-8")
        (run_dir / "log_history.json").write_text(
            json.dumps(trainer.state.log_history, indent=2), encoding="utf-8"
        )
        plot_loss(trainer.state.log_history, run_dir / "loss.png")
    except BaseException as exc:
        _close_run(workspace, run_id, "failed", {}, f"{exc.__class__.__name__}: {exc}")
        raise
    _close_run(workspace, run_id, "finished", metrics, None)
    return TrainResult(
        run_id=run_id,
        run_dir=run_dir,
        adapter_dir=adapter_dir,
        metrics=metrics,
        model=trainer.model,
        tokenizer=base.tokenizer,
    )


def _close_run(
    workspace: Workspace, run_id: str, status: str, metrics: dict[str, Any], error: str | None
) -> None:
    with session(workspace.engine) as s:
        run = s.get(Run, run_id)
        assert run is not None
        run.status, run.metrics, run.error = status, metrics, error
        run.finished_at = datetime.now(UTC)


def _count_parameters(model: Any) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


def _metrics(
    history: list[dict[str, Any]],
    train_loss: float,
    seconds: float,
    tokens: float,
    trainable: int,
    total: int,
) -> dict[str, float]:
    evals = [h["eval_loss"] for h in history if "eval_loss" in h]
    losses = [h["loss"] for h in history if "loss" in h]
    metrics = {
        "train_loss": float(train_loss),
        "first_logged_loss": float(losses[0]) if losses else float("nan"),
        "last_logged_loss": float(losses[-1]) if losses else float("nan"),
        "train_seconds": round(seconds, 2),
        "tokens_per_second": round(tokens / seconds, 1) if seconds else 0.0,
        "trainable_parameters": trainable,
        "total_parameters": total,
    }
    if evals:
        metrics["eval_loss"] = float(evals[-1])
    return metrics


def plot_loss(history: list[dict[str, Any]], path: Path) -> None:
    """Write the training (and validation) loss curve as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
