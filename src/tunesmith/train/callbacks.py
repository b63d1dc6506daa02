"""Trainer callbacks: a rich progress bar with the live numbers, and metrics to JSONL and the store."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from rich.progress import Progress, TaskID, TextColumn
from sqlalchemy import Engine
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from tunesmith.progress import make_progress
from tunesmith.store import RunMetric, session


def tokens_seen(logs: dict[str, Any]) -> float:
    """Tokens trained on so far, as TRL (`num_tokens`) or the Trainer (`num_input_tokens_seen`) logs it."""
    return float(logs.get("num_tokens", logs.get("num_input_tokens_seen", 0.0)))


def memory_mb() -> float:
    """Resident memory of this process, plus GPU memory in use where there is a GPU, in MiB."""
    import psutil
    import torch

    rss = psutil.Process().memory_info().rss
    gpu = torch.cuda.memory_allocated() if torch.cuda.is_available() else 0
    return (rss + gpu) / 2**20


# What the bar shows of each log, when present: losses, and the RL and preference figures.
_SHOWN = (
    ("loss", "loss"),
    ("eval_loss", "val"),
    ("reward", "reward"),
    ("kl", "kl"),
    ("rewards/accuracies", "acc"),
    ("accuracy", "acc"),
)


class _LogCallback(TrainerCallback):
    """A callback that acts on each log, told the tokens/s since the previous one."""

    def __init__(self) -> None:
        self._last: tuple[float, float] | None = None  # (time, tokens seen) at the previous log

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if not logs:
            return
        now, tokens = time.perf_counter(), tokens_seen(logs)
        rate = None
        if self._last is not None and tokens > self._last[1]:
            rate = (tokens - self._last[1]) / (now - self._last[0])
        if tokens:
            self._last = (now, tokens)
        self.logged(state, logs, rate)

    def logged(self, state: TrainerState, logs: dict[str, Any], tokens_per_second: float | None) -> None:
        raise NotImplementedError


class RichProgressCallback(_LogCallback):
    """One bar over all optimizer steps, with loss, learning rate, tokens/s and memory."""

    def __init__(self, label: str = "Training") -> None:
        super().__init__()
        self.label = label
        self._progress: Progress | None = None
        self._task: TaskID | None = None

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if not state.is_world_process_zero:  # one bar per run, not one per process
            return
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

    def logged(self, state: TrainerState, logs: dict[str, Any], tokens_per_second: float | None) -> None:
        if self._progress is None or self._task is None:
            return
        parts = [f"{name} {logs[key]:.3f}" for key, name in _SHOWN if key in logs]
        if "learning_rate" in logs:
            parts.append(f"lr {float(logs['learning_rate']):.1e}")
        if tokens_per_second is not None:
            parts.append(f"{tokens_per_second:.0f} tok/s")
        parts.append(f"{memory_mb():.0f} MiB")
        self._progress.update(self._task, status=" ".join(parts))

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


class MetricsCallback(_LogCallback):
    """Every log as a line of `metrics.jsonl` in the run folder and as rows of `run_metrics` in the store."""

    def __init__(self, run_id: str, path: Path, engine: Engine) -> None:
        super().__init__()
        self.run_id = run_id
        self.path = path
        self.engine = engine

    def logged(self, state: TrainerState, logs: dict[str, Any], tokens_per_second: float | None) -> None:
        if not state.is_world_process_zero:
            return
        entry = {"step": state.global_step, "epoch": state.epoch, "memory_mb": round(memory_mb(), 1), **logs}
        if tokens_per_second is not None:  # live throughput, for the web app's run page
            entry["tokens_per_second"] = round(tokens_per_second, 1)
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(entry, default=float) + "\n")
        values = {
            k: float(v) for k, v in entry.items() if isinstance(v, int | float) and k not in ("step", "epoch")
        }
        with session(self.engine) as s:
            s.add_all(
                RunMetric(
                    run_id=self.run_id, step=state.global_step, epoch=state.epoch, name=name, value=value
                )
                for name, value in values.items()
            )


_EXTRA: ContextVar[tuple[Any, ...]] = ContextVar("tunesmith_extra_callbacks", default=())


@contextmanager
def extra_callbacks(*callbacks: Any) -> Iterator[None]:
    """Add trainer callbacks to every run started inside the block (a sweep's pruning callback)."""
    token = _EXTRA.set(_EXTRA.get() + callbacks)
    try:
        yield
    finally:
        _EXTRA.reset(token)


def added_callbacks() -> list[Any]:
    return list(_EXTRA.get())


class TrainingAttention(TrainerCallback):
    """Trains with the attention `implementation` that `model.attn_implementation: auto` decided
    (`run.decide_attention`), and sets the model back to the one it was loaded with when training ends:
    what scores it afterwards (the forgetting probe, a classifier's test split, an evaluation in the
    same process) computes as `tunesmith eval` and the server will."""

    def __init__(self, implementation: str) -> None:
        self.implementation = implementation
        self.loaded: str | None = None

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        model = kwargs["model"]
        self.loaded = model.config._attn_implementation
        model.set_attn_implementation(self.implementation)

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if self.loaded is not None:
            kwargs["model"].set_attn_implementation(self.loaded)


class BudgetStop(TrainerCallback):
    """Ends training at the step that reaches `deadline` (`time.monotonic()`): the wall-clock guard
    of `train.time_budget_minutes`, for steps that run slower than they were timed. The step it
    stops at is in `stopped_at` (None: the run ended on its own)."""

    def __init__(self, deadline: float, minutes: float | None) -> None:
        self.deadline, self.minutes = deadline, minutes
        self.stopped_at: int | None = None

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if time.monotonic() >= self.deadline and state.global_step < state.max_steps:
            from tunesmith.progress import console

            self.stopped_at = state.global_step
            control.should_training_stop = True
            console.print(
                f"time budget ({self.minutes:g} min): stopping at step {state.global_step} of "
                f"{state.max_steps}, keeping the rest for the final evaluation",
                highlight=False,
            )
