"""A run held to `train.time_budget_minutes`.

A few steps of the run are timed on a base loaded for the purpose (the run's own stays untouched),
and `train.max_steps` is capped to what the budget allows (`recipe.budget_steps`). For a classifier,
`train.encoder: auto` first asks whether the configured decoder can see its train rows once in the
budget; when it cannot, the bundled sentence encoder (MiniLM, a sixth of the size) is timed too and
trains instead if it sees more of them (`recipe.encoder_blocker` says when it may): on the task
suite, under such budgets, it scored higher (docs/recipes.md).
"""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tunesmith.config import ProjectConfig
from tunesmith.store import DatasetVersion
from tunesmith.workspace import Workspace

if TYPE_CHECKING:
    from tunesmith.train.estimate import Estimate

BUDGET_TIMING_STEPS = 8  # the first warms up: a new row length costs a step some kernel set-up,
# so few steps overstate the time a long run takes per step
# `choose_body` times each body with fewer: its question (does the decoder see the rows once?) is
# coarse, and every second of timing comes out of the budget; an overstated step time only trains less
BODY_TIMING_STEPS = 4


@dataclass(frozen=True)
class StepTiming:
    """Steps timed for a budget: when its clock started (`time.monotonic`), and the measured seconds
    a step of the config the run trains."""

    started: float
    seconds_per_step: float


def time_steps(
    config: ProjectConfig, dataset: DatasetVersion, workspace: Workspace, steps: int = BUDGET_TIMING_STEPS
) -> Estimate:
    """`steps` steps of `config`'s run on a base loaded for the purpose, with the attention and
    activation checkpointing the run will decide (`estimate.estimate_epoch_time`)."""
    from tunesmith.train.estimate import estimate_epoch_time
    from tunesmith.train.run import load_base, with_settings_decided

    timed = load_base(config, dataset, workspace)
    decided, attention = with_settings_decided(config, dataset, timed, say=False)
    try:
        return estimate_epoch_time(decided, dataset, timed, workspace, steps=steps, callbacks=attention)
    finally:
        del timed
        gc.collect()


def fit_budget(
    config: ProjectConfig, dataset: DatasetVersion, workspace: Workspace, timing: StepTiming | None = None
) -> tuple[ProjectConfig, float | None]:
    """`config` fitted into `train.time_budget_minutes`, and the wall-clock deadline (`time.monotonic`)
    by which its last step must end (None: no budget).

    The steps are timed here unless `timing` (from `choose_body`) already measured them. The deadline
    keeps time for the work after the last step; `BudgetStop` holds the run to it should the steps
    run slower than timed. Runs that name max_steps (or resume one whose budget was fitted) and
    distributed runs are left as they are.

    Raises:
        TrainConfigError: when the budget is too small to learn in.
    """
    from tunesmith.progress import console
    from tunesmith.train.sft import is_main_process

    train = config.train
    if train.time_budget_minutes is None or train.max_steps > 0:
        return config, None
    if train.processes > 1:
        if is_main_process():
            console.print("[yellow]train.time_budget_minutes is not applied to a distributed run[/yellow]")
        return config, None
    if timing is None:
        started = time.monotonic()
        timing = StepTiming(started, time_steps(config, dataset, workspace).seconds_per_step)
    spent = time.monotonic() - timing.started
    config, reserve = apply_budget(config, dataset, timing.seconds_per_step, spent)
    return config, timing.started + train.time_budget_minutes * 60 - reserve


def apply_budget(
    config: ProjectConfig, dataset: DatasetVersion, seconds_per_step: float, spent: float
) -> tuple[ProjectConfig, float]:
    """`config` with max_steps capped to what `train.time_budget_minutes` allows at `seconds_per_step`
    after `spent` seconds (`recipe.budget_steps`), the choice printed and recorded as the recipe's;
    and the seconds the budget keeps for the work after the last step."""
    from tunesmith.progress import console
    from tunesmith.train.recipe import budget_steps

    train = config.train
    if train.time_budget_minutes is None or train.max_steps > 0:
        return config, 0.0
    plan = budget_steps(config, dataset, seconds_per_step, spent)
    if plan.epochs is not None:
        return _more_epochs(config, dataset, plan.epochs, plan.reason), plan.reserve
    if plan.steps is None:
        console.print(
            f"[dim]time budget of {train.time_budget_minutes:g} min: {plan.reason}[/dim]", highlight=False
        )
        return config, plan.reserve
    console.print(f"[dim]recipe: max_steps {plan.steps}: {plan.reason}[/dim]", highlight=False)
    chosen = {**train.chosen_by_recipe, "max_steps": plan.reason}
    capped = train.model_copy(update={"max_steps": plan.steps, "chosen_by_recipe": chosen})
    return config.model_copy(update={"train": capped}), plan.reserve


def _more_epochs(config: ProjectConfig, dataset: DatasetVersion, epochs: float, reason: str) -> ProjectConfig:
    """`config` trained for `epochs` (`recipe.budget_steps` raised them), with early stopping on the
    validation split where the recipe would have turned it on for that many (printed, recorded)."""
    from tunesmith.progress import console
    from tunesmith.train.recipe import EARLY_STOPPING_PATIENCE, MIN_VAL_ROWS, early_stopping_reason

    train = config.train
    update: dict[str, Any] = {"num_train_epochs": epochs}
    chosen = {**train.chosen_by_recipe, "num_train_epochs": reason}
    console.print(f"[dim]recipe: num_train_epochs {epochs:g}: {reason}[/dim]", highlight=False)
    val = int(dataset.counts.get("val", 0))
    if train.early_stopping_patience is None and val >= MIN_VAL_ROWS and train.save_strategy != "no":
        update["early_stopping_patience"] = EARLY_STOPPING_PATIENCE
        chosen["early_stopping_patience"] = early_stopping_reason(val)
        console.print(
            f"[dim]recipe: early_stopping_patience {EARLY_STOPPING_PATIENCE}: "
            f"{chosen['early_stopping_patience']}[/dim]",
            highlight=False,
        )
    update["chosen_by_recipe"] = chosen
    return config.model_copy(update={"train": train.model_copy(update=update)})


def choose_body(
    requested: ProjectConfig,
    planned: ProjectConfig,
    dataset: DatasetVersion,
    workspace: Workspace,
    steps: int = BODY_TIMING_STEPS,
) -> tuple[ProjectConfig, StepTiming | None]:
    """The config a classifier trains within its time budget: `planned` (the run of `requested` as
    planned on `dataset`), or the same run on the bundled encoder when `train.encoder: auto` allows
    it and the decoder cannot see the train rows once in the budget while the encoder sees more of
    them (printed, with both measurements, and recorded as the recipe's choice).

    Returns the timing of the config returned (None when nothing was timed), for `fit_budget`.
    """
    from tunesmith.progress import console
    from tunesmith.train.recipe import encoder_blocker, plan_run, with_encoder

    blocker = encoder_blocker(requested, planned, dataset)
    if blocker is not None:
        if blocker:
            console.print(f"[dim]{blocker}[/dim]", highlight=False)
        return planned, None
    started = time.monotonic()
    decoder = _seen(planned, dataset, time_steps(planned, dataset, workspace, steps), started)
    if decoder.fits or decoder.rows >= decoder.total:  # it sees every row at least once: it stays
        return planned, StepTiming(started, decoder.seconds_per_step)
    encoder_config = plan_run(with_encoder(requested), dataset)
    encoder = _seen(encoder_config, dataset, time_steps(encoder_config, dataset, workspace, steps), started)
    if encoder.rows <= decoder.rows:
        return planned, StepTiming(started, decoder.seconds_per_step)
    minutes = planned.train.time_budget_minutes
    reason = (
        f"{encoder_config.model.id} instead of {planned.model.id}: in the {minutes:g}-min budget "
        f"{planned.model.id} sees {decoder.describe()}, {encoder_config.model.id} {encoder.describe()}; "
        "under budgets too tight for the decoder to see its rows once, the encoder scored higher "
        "(docs/recipes.md)"
    )
    console.print(f"[dim]recipe: model {reason}[/dim]", highlight=False)
    for key, value, why in _changed(planned, encoder_config):
        console.print(f"[dim]  {key} {value}: {why}[/dim]", highlight=False)
    chosen = {**encoder_config.train.chosen_by_recipe, "encoder": reason}
    train = encoder_config.train.model_copy(update={"chosen_by_recipe": chosen})
    return encoder_config.model_copy(update={"train": train}), StepTiming(started, encoder.seconds_per_step)


@dataclass(frozen=True)
class _Seen:
    """What a config's run sees of the train rows within its budget, at its measured step time."""

    seconds_per_step: float
    rows: int  # train rows seen (counted again in each epoch)
    total: int  # train rows in the split
    fits: bool  # the planned run fits the budget

    def describe(self) -> str:
        seen = (
            f"{self.rows / self.total:.0%} of the {self.total:,} train rows once"
            if self.rows < self.total
            else f"{self.rows / self.total:.1f} epochs"
        )
        return f"{seen} ({self.seconds_per_step:.2f} s a step)"


def _seen(config: ProjectConfig, dataset: DatasetVersion, timing: Estimate, started: float) -> _Seen:
    from tunesmith.train.objectives import get_objective
    from tunesmith.train.recipe import budget_steps
    from tunesmith.train.sft import TrainConfigError

    total = int(dataset.counts.get("train", 0))
    planned = total * config.train.num_train_epochs
    try:
        plan = budget_steps(config, dataset, timing.seconds_per_step, time.monotonic() - started)
    except TrainConfigError:  # fewer steps than anything learns in
        return _Seen(timing.seconds_per_step, 0, total, fits=False)
    if plan.steps is None:
        epochs = plan.epochs or config.train.num_train_epochs
        return _Seen(timing.seconds_per_step, int(total * epochs), total, fits=True)
    per_step = get_objective(config.train.objective).rows_per_step(config.train)
    return _Seen(timing.seconds_per_step, int(min(plan.steps * per_step, planned)), total, fits=False)


def _changed(before: ProjectConfig, after: ProjectConfig) -> list[tuple[str, Any, str]]:
    """The recipe's settings that differ between two planned configs, with the reasons of `after`."""
    from tunesmith.train.recipe import PLANNED, get_setting, shown_value

    rows = []
    for key in ("method", *PLANNED):
        new = get_setting(after.train, key)
        if get_setting(before.train, key) != new:
            rows.append((key, shown_value(new), after.train.chosen_by_recipe.get(key, "default")))
    return rows
