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
    from datasets.utils.logging import disable_progress_bar

    records = load_split(dataset, "train", with_meta=True)
    batch = config.train.per_device_train_batch_size * config.train.gradient_accumulation_steps
    sample = random.Random(0).sample(records, min(len(records), batch * steps))
    clean = [{k: v for k, v in r.items() if not k.startswith("_")} for r in sample]
    timer = _StepTimer()
    disable_progress_bar()
    with tempfile.TemporaryDirectory() as tmp:
        trainer, lengths = _calibration_trainer(config, base, clean, Path(tmp), steps, timer)
        trainer.train()
    if all(r.get("_tokens") for r in records):
        train_tokens = sum(int(r["_tokens"]) for r in records)
    else:  # a mixture's rows carry no measured length: scale up the sample's
        train_tokens = round(sum(lengths) / max(1, len(lengths)) * len(records))
    measured = list(zip(timer.starts, timer.ends, strict=True))[1:]  # the first step warms caches up
    seconds = sum(end - start for start, end in measured)
    tokens = sum(lengths[batch : batch * steps])
    tokens_per_second = tokens / seconds if seconds else 0.0
    return Estimate(
        method=config.train.method,
        tokens_per_second=tokens_per_second,
        train_tokens=train_tokens,
        seconds_per_epoch=train_tokens / tokens_per_second if tokens_per_second else float("inf"),
        # a multitask mixture's train split already holds every epoch's rows
        epochs=1.0 if config.train.objective == "multitask" else config.train.num_train_epochs,
        calibration_steps=steps,
    )


def _calibration_trainer(
    config: ProjectConfig, base: Any, records: list[dict[str, Any]], folder: Path, steps: int, timer: Any
) -> tuple[Any, list[int]]:
    """The run's own trainer on `records` for `steps` steps, and the token length of each row."""
    from datasets import Dataset
    from transformers import PrinterCallback, TrainingArguments
    from trl import SFTTrainer

    from tunesmith.train.classify import HEADS, encode, make_trainer
    from tunesmith.train.lm_head import use_answer_only_head
    from tunesmith.train.sft import lora_config, sft_config, trainer_kwargs, training_rows

    train = config.train
    if train.objective in HEADS:
        kwargs = trainer_kwargs(train, folder, False, TrainingArguments)
        kwargs.update(max_steps=steps, logging_steps=steps, save_strategy="no", report_to=[])
        label2id = {name: int(i) for i, name in base.model.config.id2label.items()}
        rows = encode(train.objective, records, base.tokenizer, label2id, train.max_length)
        trainer = make_trainer(
            config, base.model, base.tokenizer, TrainingArguments(**kwargs), {"train": rows}, [timer]
        )
        return trainer, [len(r["input_ids"]) for r in rows]
    args = sft_config(train, folder, has_eval=False)
    args.max_steps, args.logging_steps, args.report_to = steps, steps, []
    trainer = SFTTrainer(
        model=base.model,
        args=args,
        train_dataset=Dataset.from_list(training_rows(train.objective, records, base.tokenizer)),
        processing_class=base.tokenizer,
        peft_config=lora_config(train) if train.method in ("lora", "qlora") else None,
        callbacks=[timer],
    )
    trainer.remove_callback(PrinterCallback)
    use_answer_only_head(trainer)
    tokenized: Any = trainer.train_dataset
    return trainer, [len(r["input_ids"]) for r in tokenized]
