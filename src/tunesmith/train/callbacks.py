"""Trainer callbacks: a rich progress bar with the live loss."""

from __future__ import annotations

from typing import Any

from rich.progress import Progress, TaskID, TextColumn
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from tunesmith.progress import make_progress


class RichProgressCallback(TrainerCallback):
    """One bar over all optimizer steps, showing the latest training and validation loss."""

    def __init__(self, label: str = "Training") -> None:
        self.label = label
        self._progress: Progress | None = None
        self._task: TaskID | None = None

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self._progress = make_progress(TextColumn("{task.fields[status]}"))
        self._progress.start()
        self._task = self._progress.add_task(
            self.label, total=state.max_steps, status="", completed=state.global_step
        )

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, completed=state.global_step)

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if self._progress is None or self._task is None or not logs:
            return
        parts = [f"{key.replace('_', ' ')} {logs[key]:.3f}" for key in ("loss", "eval_loss") if key in logs]
        if parts:
            self._progress.update(self._task, status=" ".join(parts))

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
