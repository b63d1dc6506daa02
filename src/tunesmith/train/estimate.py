"""Time per epoch, measured: a few real optimizer steps of the configured method on real rows.

The estimate is a calibration, not a constant: it runs the objective's own trainer (from the
objective table), so the method, forgetting guard and head the run will train with are what is
timed, on rows sampled from the dataset's train split at their real lengths, with the run's
batch and accumulation. It measures the time per optimizer step after a warm-up step, over whole
cycles of the objective's work (RL samples answers once every `num_iterations` steps, so its
generation time is counted in its share), and scales it to an epoch's steps.
"""

from __future__ import annotations

import math
import random
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from tunesmith.config import ProjectConfig
from tunesmith.data import load_split
from tunesmith.store import DatasetVersion
from tunesmith.workspace import Workspace


@dataclass
class Estimate:
    """Measured throughput and the time it implies."""

    method: str  # what was timed: the method, forgetting guard or head, and the trainable share
    seconds_per_step: float
    rows_per_step: float
    rows: int  # training rows in one epoch
    tokens_per_second: float | None  # where the objective's trainer tokenises its rows up front
    epochs: float
    calibration_steps: int

    @property
    def seconds_per_epoch(self) -> float:
        return self.rows / self.rows_per_step * self.seconds_per_step

    @property
    def total_seconds(self) -> float:
        return self.seconds_per_epoch * self.epochs

    def describe(self) -> str:
        """Two lines: what was measured, and the time it implies."""
        tokens = f", {self.tokens_per_second:,.0f} tokens/s" if self.tokens_per_second else ""
        return (
            f"Timed {self.method}: {self.seconds_per_step:.2f} s per step ({self.rows_per_step:g} rows"
            f"{tokens}) over {self.calibration_steps - 1} steps.\n"
            f"{self.seconds_per_epoch / 60:.1f} min per epoch of {self.rows:,} rows; "
            f"{self.total_seconds / 60:.1f} min for {self.epochs:g} epochs."
        )


class _StepTimer(TrainerCallback):
    def __init__(self) -> None:
        self.starts: list[float] = []
        self.ends: list[float] = []

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.starts.append(time.perf_counter())

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.ends.append(time.perf_counter())


def estimate_epoch_time(
    config: ProjectConfig,
    dataset: DatasetVersion,
    base: Any,
    workspace: Workspace,
    steps: int = 4,
    callbacks: Sequence[TrainerCallback] = (),
) -> Estimate:
    """Run `steps` optimizer steps of the objective's own trainer (the first is a warm-up) on rows
    sampled from the train split, with the run's own `callbacks` (its attention), and extrapolate
    to one epoch of `dataset`."""
    from datasets.utils.logging import disable_progress_bar
    from transformers import PrinterCallback

    from tunesmith.train.objectives import TrainerJob, get_objective
    from tunesmith.train.sft import count_parameters

    objective = get_objective(config.train.objective)
    records = load_split(dataset, "train", with_meta=True)
    per_step = objective.rows_per_step(config.train)
    cycle = objective.step_cycle(config.train)
    steps = 1 + math.ceil(max(steps - 1, 1) / cycle) * cycle  # a warm-up step, then whole cycles
    sample = random.Random(0).sample(records, min(len(records), math.ceil(per_step * steps)))
    clean = [{k: v for k, v in r.items() if not k.startswith("_")} for r in sample]
    timer = _StepTimer()
    disable_progress_bar()
    with tempfile.TemporaryDirectory() as tmp:
        calibration = _calibration_config(config, steps)
        trainer = objective.build_trainer(
            TrainerJob(calibration, base, {"train": clean}, Path(tmp), [timer, *callbacks], workspace)
        )
        trainer.remove_callback(PrinterCallback)
        lengths = _token_lengths(trainer.train_dataset)
        trainable, total = count_parameters(trainer.model)
        trainer.train()
    measured = list(zip(timer.starts, timer.ends, strict=True))[1:]  # the first step warms caches up
    seconds = sum(end - start for start, end in measured)
    tokens = sum(lengths[math.ceil(per_step) : math.ceil(per_step * steps)]) if lengths else 0
    what = objective.describe(config, trainer)
    return Estimate(
        method=f"{what} ({trainable / total:.2%} of {total:,} parameters trainable)",
        seconds_per_step=seconds / len(measured) if measured else float("inf"),
        rows_per_step=per_step,
        rows=len(records),
        tokens_per_second=tokens / seconds if lengths and seconds else None,
        # a multitask mixture's train split already holds every epoch's rows
        epochs=1.0 if objective.single_pass else config.train.num_train_epochs,
        calibration_steps=steps,
    )


def _calibration_config(config: ProjectConfig, steps: int) -> ProjectConfig:
    """The run's config for `steps` steps: no checkpoints, no early stopping, no experiment trackers."""
    train = config.train.model_copy(
        update={
            "max_steps": steps,
            "logging_steps": steps,
            "save_strategy": "no",
            "report_to": [],
            "early_stopping_patience": None,
        }
    )
    calibration = config.model_copy(update={"train": train})
    return calibration.with_base_dir(config.base_dir)


def _token_lengths(dataset: Any) -> list[int]:
    """Each row's tokens, from the columns a trainer tokenised (`input_ids`, `chosen_input_ids`, ...);
    empty where the trainer tokenises as it goes (online RL samples its answers)."""
    columns = [c for c in getattr(dataset, "column_names", None) or [] if c.endswith("input_ids")]
    if not columns:
        return []
    return [sum(len(row[c]) for c in columns) for row in dataset]
