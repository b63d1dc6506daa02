"""Time per epoch, measured: a few real optimizer steps of the configured method on real rows.

The estimate is a calibration, not a constant: it runs TRL's trainer for `steps` steps on rows
sampled from the dataset's train split (at their real lengths), measures tokens per second after
a warm-up step, and divides the split's training tokens by it.
"""

from __future__ import annotations

import random
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from tunesmith.config import ProjectConfig
from tunesmith.data import load_split
from tunesmith.store import DatasetVersion


@dataclass
class Estimate:
    """Measured throughput and the time it implies."""

    method: str
    tokens_per_second: float
    train_tokens: int
    seconds_per_epoch: float
    epochs: float
    calibration_steps: int

    @property
    def total_seconds(self) -> float:
        return self.seconds_per_epoch * self.epochs


class _StepTimer(TrainerCallback):
    def __init__(self) -> None:
        self.starts: list[float] = []
        self.ends: list[float] = []

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.starts.append(time.perf_counter())

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.ends.append(time.perf_counter())


def estimate_epoch_time(
    config: ProjectConfig, dataset: DatasetVersion, base: Any, steps: int = 4
) -> Estimate:
    """Run `steps` optimizer steps (the first is a warm-up) and extrapolate to one epoch of `dataset`."""
    from datasets import Dataset
    from datasets.utils.logging import disable_progress_bar
    from transformers import PrinterCallback
    from trl import SFTTrainer

    from tunesmith.train.sft import lora_config, sft_config, training_rows

    records = load_split(dataset, "train", with_meta=True)
    train_tokens = sum(int(r.get("_tokens") or 0) for r in records)
    batch = config.train.per_device_train_batch_size * config.train.gradient_accumulation_steps
    sample = random.Random(0).sample(records, min(len(records), batch * steps))
    rows = training_rows(
        config.train.objective,
        [{k: v for k, v in r.items() if not k.startswith("_")} for r in sample],
        base.tokenizer,
    )
    timer = _StepTimer()
    disable_progress_bar()
    with tempfile.TemporaryDirectory() as tmp:
        args = sft_config(config.train, Path(tmp), has_eval=False)
        args.max_steps, args.logging_steps = steps, steps
        trainer = SFTTrainer(
            model=base.model,
            args=args,
            train_dataset=Dataset.from_list(rows),
            processing_class=base.tokenizer,
            peft_config=lora_config(config.train) if config.train.method == "lora" else None,
            callbacks=[timer],
        )
        trainer.remove_callback(PrinterCallback)
        tokenized: Any = trainer.train_dataset
        lengths = [len(r["input_ids"]) for r in tokenized]
        trainer.train()
    measured = list(zip(timer.starts, timer.ends, strict=True))[1:]  # the first step warms caches up
    seconds = sum(end - start for start, end in measured)
    tokens = sum(lengths[batch : batch * steps])
    tokens_per_second = tokens / seconds if seconds else 0.0
    return Estimate(
        method=config.train.method,
        tokens_per_second=tokens_per_second,
        train_tokens=train_tokens,
        seconds_per_epoch=train_tokens / tokens_per_second if tokens_per_second else float("inf"),
        epochs=config.train.num_train_epochs,
        calibration_steps=steps,
    )
