"""The default recipe: the training settings a config leaves unset, sized to its dataset version.

`train.recipe: auto` (the default) decides, for each setting the config does not name, a value from
the dataset version's row count and token statistics and the run's objective and method, and says
why; `train --plan` prints the plan and stops. A setting the config names is kept as it is, and
`train.recipe: off` keeps every default. The choices are recorded in the version's config, each
with its reason under `train.chosen_by_recipe`, so a reproduced run trains exactly the same.

The rules and the measurements behind them are written down in docs/recipes.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from tunesmith.config import GENERATIVE_OBJECTIVES, ModelConfig, ProjectConfig, TrainConfig
from tunesmith.models.catalog import CATALOG, ModelNotFoundError
from tunesmith.store import DatasetVersion

# max_length: rows longer than the longest train row by this share over its 99th percentile are
# outliers, cut at the percentile instead of sizing every batch's memory for them
OUTLIER_SHARE = 1.25
LENGTH_STEP = 32  # max_length is a multiple of this
# the data report counts a row's tokens as the trainer renders it (the chat template included), not the
# special tokens a trainer may add around it (BOS, EOS, a classifier's CLS and SEP)
SPECIAL_TOKENS = 8
CPU_MAX_LENGTH, GPU_MAX_LENGTH = 1024, 4096
# batch: about this many tokens a step at the 95th-percentile row length, as a power of two in the
# range, and small enough to leave at least STEPS_PER_EPOCH steps an epoch (a small dataset learns from
# more, smaller steps)
TOKENS_PER_STEP = 2048
BATCH_RANGE = (4, 32)
STEPS_PER_EPOCH = 20
# epochs: enough to take about this many optimizer steps, within the objective's range
TARGET_STEPS = 100
EPOCH_RANGE = {"generative": (1, 5), "head": (1, 3)}
# LoRA rank by the train split's tokens: (at most this many tokens, rank)
LORA_RANKS = ((100_000, 8), (1_000_000, 16))
LORA_RANK_LARGE = 32
LEARNING_RATES = {"lora": 2e-4, "qlora": 2e-4, "full": 2e-5, "freeze": 5e-5, "head": 1e-3}
# a generative LoRA run of a model under SMALL_MODEL parameters takes SMALL_MODEL_LORA_RATE: on the
# bundled 135M model 2e-4 left the quickstart's facts unlearnt in 100 steps (key facts 0.05), 1e-3
# learnt them (0.81; bench/recipe.py, docs/recipes.md)
SMALL_MODEL = 1_000_000_000
SMALL_MODEL_LORA_RATE = 1e-3
# a classifier's or tagger's new head trained beside LoRA adapters: sst2, 2,400 rows, the same
# 1.5-min budget (bench/suite.py at reduced size), test accuracy 0.80 at 1e-3, 0.78 at 5e-4, 0.63 at 2e-4
NEW_HEAD_LORA_RATE = 1e-3
NEW_HEAD_OBJECTIVES = ("classify", "tag")
# a new head on a small encoder fine-tuned whole (MiniLM, 22.7M parameters): sst2, 2,400 rows, one
# epoch, test accuracy 0.835 at 3e-4 against 0.795 at 1e-4 (docs/recipes.md)
SMALL_ENCODER = 100_000_000
SMALL_ENCODER_HEAD_RATE = 3e-4
# `train.encoder: auto`: the encoder a classifier may train instead of the bundled decoder
BUNDLED_ENCODER = "minilm-l6"
WARMUP_SHARE = 0.05
EARLY_STOPPING_PATIENCE = 2  # evaluations (one per epoch) without a better validation loss
MIN_VAL_ROWS = 8  # fewer validation rows give a loss too noisy to stop on
# the settings the recipe decides (under `train.`), in the order the plan prints them
PLANNED = (
    "max_length",
    "per_device_train_batch_size",
    "num_train_epochs",
    "learning_rate",
    "lora.r",
    "warmup_steps",
    "early_stopping_patience",
    "forgetting.method",
)
# objectives and methods for which the recipe turns replay of general data on (the config validator
# refuses a guard for the others: a new head, a mixture, preference and RL runs)
REPLAY_OBJECTIVES = ("sft", "pretrain")
REPLAY_METHODS = ("lora", "qlora", "full", "freeze")


@dataclass(frozen=True)
class Choice:
    """One setting of the plan: its value, and where it came from (the recipe's reason, or the config)."""

    key: str  # under `train.`
    value: Any
    reason: str
    chosen: bool  # by the recipe; False: the config named it (or the recipe left the default)


def set_by_config(train: TrainConfig) -> set[str]:
    """The settings (dotted, under `train.`) that the config file or `--set` named."""
    named = set(train.model_fields_set)
    for section in ("lora", "forgetting", "preference", "rl"):
        if section in named:
            named |= {f"{section}.{key}" for key in getattr(train, section).model_fields_set}
    return named


def plan_recipe(config: ProjectConfig, dataset: DatasetVersion, named: set[str]) -> list[Choice]:
    """Every setting in `PLANNED` for a run of `config` (its objective decided) on `dataset`, where
    the config named the settings in `named` (`set_by_config`)."""
    train = config.train
    stats = dataset.meta.get("report", {}).get("stats", {})
    tokens = train_tokens(dataset)
    rows = int(dataset.counts.get("train", 0))
    context = stats.get("context_window")
    counted_for = dataset.meta.get("report", {}).get("model")
    if counted_for not in (None, config.model.id) and config.model.id in CATALOG:
        context = CATALOG[config.model.id].context_window  # the rows were counted for another model
    recipe = _Recipe(config, tokens, rows, int(dataset.counts.get("val", 0)), context)
    plan = []
    values: dict[str, Any] = {}
    for key in PLANNED:
        current = get_setting(train, key)
        if train.recipe == "off" or key in named or _not_for(train, key, named):
            why = "your config" if key in named else "default"
            plan.append(Choice(key, current, why, chosen=False))
            values[key] = current
            continue
        decided = getattr(recipe, key.replace(".", "_"))(values)
        if decided is None or isinstance(decided, str):  # the default stays, maybe with the reason
            plan.append(Choice(key, current, f"default ({decided})" if decided else "default", chosen=False))
            values[key] = current
        else:
            value, reason = decided
            plan.append(Choice(key, value, reason, chosen=True))
            values[key] = value
    return plan


def early_stopping_reason(val_rows: int) -> str:
    return (
        f"stop after {EARLY_STOPPING_PATIENCE} epochs without a better validation loss "
        f"({val_rows} validation rows); the best epoch's weights are kept"
    )


def train_tokens(dataset: DatasetVersion) -> dict[str, Any]:
    """The token statistics of the dataset's train split (max, p50, p95, p99, total), from its report."""
    stats = dataset.meta.get("report", {}).get("stats", {})
    return dict(stats.get("splits", {}).get("train", {}).get("tokens") or {})


def _not_for(train: TrainConfig, key: str, named: set[str]) -> bool:
    """Settings the recipe leaves alone for this run."""
    if train.objective == "rl":  # its batch holds groups of sampled answers: train.rl decides it
        return True
    rules = {
        # measured for the generative objectives only: on sst2 a classifier's rank 8 and warm-up lost
        # accuracy (0.67 and 0.70 against 0.77 with rank 16 and none; docs/recipes.md)
        "lora.r": lambda: (
            train.method not in ("lora", "qlora") or train.objective not in GENERATIVE_OBJECTIVES
        ),
        "warmup_steps": lambda: train.objective not in GENERATIVE_OBJECTIVES,
        # by value, not by being named: a template that spells out the defaults still gets the recipe
        "per_device_train_batch_size": lambda: (
            train.effective_batch_size is not None or train.gradient_accumulation_steps != 1
        ),
        # a step count decides the length instead; a mixture streams its own epochs
        "num_train_epochs": lambda: train.max_steps > 0 or train.objective == "multitask",
        "early_stopping_patience": lambda: train.save_strategy == "no",  # no checkpoint to restore
        "forgetting.method": lambda: (
            train.objective not in REPLAY_OBJECTIVES or train.method not in REPLAY_METHODS
        ),
    }
    rule = rules.get(key)
    return rule is not None and rule()


def get_setting(train: TrainConfig, key: str) -> Any:
    value: Any = train
    for part in key.split("."):
        value = getattr(value, part)
    return value


class _Recipe:
    """The rules, one method per setting; each returns (value, reason), or None to keep the default."""

    def __init__(
        self, config: ProjectConfig, tokens: dict[str, Any], rows: int, val_rows: int, context: int | None
    ) -> None:
        self.config, self.train = config, config.train
        self.tokens, self.rows, self.val_rows, self.context = tokens, rows, val_rows, context
        self.generative = config.train.objective in GENERATIVE_OBJECTIVES

    def max_length(self, _: dict[str, Any]) -> tuple[int, str] | None:
        if "p99" not in self.tokens:
            return None
        import torch

        longest, p99 = int(self.tokens["max"]) + SPECIAL_TOKENS, int(self.tokens["p99"]) + SPECIAL_TOKENS
        ceiling = GPU_MAX_LENGTH if torch.cuda.is_available() else CPU_MAX_LENGTH
        where = "on a GPU" if torch.cuda.is_available() else "on a CPU"
        if self.context:
            ceiling, where = (
                (min(ceiling, self.context), where)
                if self.context >= ceiling
                else (
                    self.context,
                    "the model's context window",
                )
            )
        if longest <= OUTLIER_SHARE * p99:
            value = min(_round_up(longest, LENGTH_STEP), ceiling)
            reason = f"the longest train row has {longest} tokens with the special tokens"
        else:
            value = min(_round_up(p99, LENGTH_STEP), ceiling)
            reason = f"99% of train rows have at most {p99} tokens (the longest {longest}: an outlier)"
        if value == ceiling and value < longest:
            reason += f"; at most {ceiling} {where}"
        cut = "" if value >= longest else "; longer rows are cut to it (the data report counts them)"
        return value, reason + cut

    def per_device_train_batch_size(self, values: dict[str, Any]) -> tuple[int, str] | None:
        if "p95" not in self.tokens:
            return None
        typical = max(1, min(int(self.tokens["p95"]), int(values["max_length"])))
        low, high = BATCH_RANGE
        by_tokens = _power_of_two(TOKENS_PER_STEP // typical)
        by_rows = _power_of_two(self.rows // STEPS_PER_EPOCH)
        batch = max(low, min(high, by_tokens, by_rows))
        if by_rows < by_tokens and batch > low:
            return batch, f"at least {STEPS_PER_EPOCH} steps an epoch over {self.rows:,} train rows"
        return batch, f"about {TOKENS_PER_STEP:,} tokens a step at the 95th-percentile row ({typical} tokens)"

    def num_train_epochs(self, values: dict[str, Any]) -> tuple[float, str] | None:
        if not self.rows:
            return None
        per_step = int(values["per_device_train_batch_size"]) * self.train.processes
        per_step *= self.train.gradient_accumulation_steps
        steps = math.ceil(self.rows / per_step)
        low, high = EPOCH_RANGE["generative" if self.generative else "head"]
        epochs = max(low, min(high, round(TARGET_STEPS / steps)))
        return float(epochs), (
            f"{self.rows:,} train rows are {steps} steps an epoch; about {TARGET_STEPS} steps in all, "
            f"{low}-{high} epochs"
        )

    def learning_rate(self, _: dict[str, Any]) -> tuple[float, str] | None:
        method = self.train.method
        if method in ("lora", "qlora") and self.generative:
            from tunesmith.models import model_info

            model = self.config.model
            size = model_info(model.id, model.source, model.revision).parameters
            if size is not None and size < SMALL_MODEL:
                return SMALL_MODEL_LORA_RATE, (
                    f"{method} of a {size / 1e6:,.0f}M-parameter model: small models take a higher rate "
                    f"than the usual {LEARNING_RATES[method]:.0e}"
                )
        if method == "full" and self.train.objective in NEW_HEAD_OBJECTIVES:
            from tunesmith.models import model_info

            model = self.config.model
            info = model_info(model.id, model.source, model.revision)
            if info.kind == "encoder" and info.parameters is not None and info.parameters < SMALL_ENCODER:
                return SMALL_ENCODER_HEAD_RATE, (
                    f"a new {self.train.objective} head on a {info.parameters / 1e6:,.1f}M-parameter encoder "
                    f"trained whole: a higher rate than the usual {LEARNING_RATES[method]:.0e} "
                    "(sst2: 0.835 against 0.795 at 1e-4)"
                )
        if method in ("lora", "qlora") and self.train.objective in NEW_HEAD_OBJECTIVES:
            return NEW_HEAD_LORA_RATE, (
                f"a new {self.train.objective} head trained beside {method} adapters learns from scratch: "
                f"a higher rate than the usual {LEARNING_RATES[method]:.0e} (sst2: 0.80 against 0.63)"
            )
        return LEARNING_RATES[method], f"the usual rate for {method}"

    def lora_r(self, _: dict[str, Any]) -> tuple[int, str] | None:
        total = int(self.tokens.get("total", 0))
        if not total:
            return None
        rank = next((r for limit, r in LORA_RANKS if total <= limit), LORA_RANK_LARGE)
        return rank, f"{total:,} train tokens"

    def warmup_steps(self, _: dict[str, Any]) -> tuple[float, str] | None:
        return WARMUP_SHARE, f"{WARMUP_SHARE:.0%} of the steps"

    def early_stopping_patience(self, values: dict[str, Any]) -> tuple[int, str] | str:
        if self.val_rows < MIN_VAL_ROWS:
            return f"{self.val_rows} validation rows, too few to stop on (at least {MIN_VAL_ROWS})"
        if float(values["num_train_epochs"]) < 2:
            return "one epoch: nothing to stop early"
        return EARLY_STOPPING_PATIENCE, early_stopping_reason(self.val_rows)

    def forgetting_method(self, _: dict[str, Any]) -> tuple[str, str]:
        share = self.train.forgetting.replay_fraction
        return "replay", (
            f"general rows ({share:.0%} of the train rows) replayed beside them keep what the model "
            "knew (the quickstart: general answer loss -24% with replay, +33% without)"
        )


# a time budget: evaluating a batch costs about this share of a training step (a forward pass, no
# backward), and a budget that allows fewer steps than this is refused as too small to learn in
EVAL_STEP_SHARE = 1 / 3
MIN_BUDGET_STEPS = 10


@dataclass(frozen=True)
class BudgetPlan:
    """What `train.time_budget_minutes` allows: the steps (None: the planned run fits), why, and the
    seconds kept for the work after the last step (the final evaluation, a classifier's test split)."""

    steps: int | None
    reason: str
    reserve: float
    epochs: float | None = None  # a new head's epochs raised to what the budget fits (None: as planned)


def budget_steps(
    config: ProjectConfig, dataset: DatasetVersion, seconds_per_step: float, spent: float
) -> BudgetPlan:
    """The optimizer steps that `train.time_budget_minutes` allows at a measured `seconds_per_step`
    after `spent` seconds of measuring.

    Counted in: one evaluation of the validation split at the end of every epoch the run starts
    (the last, cut short, still ends with one), and for an objective with a new head the scoring of
    the test split when it ends; a batch of either costs about `EVAL_STEP_SHARE` of a step.

    Raises:
        TrainConfigError: when the budget allows fewer than `MIN_BUDGET_STEPS` steps.
    """
    from tunesmith.train.objectives import get_objective
    from tunesmith.train.sft import TrainConfigError

    train = config.train
    assert train.time_budget_minutes is not None
    budget = train.time_budget_minutes * 60
    objective = get_objective(train.objective)
    per_step = objective.rows_per_step(train)
    rows = int(dataset.counts.get("train", 0))
    if train.forgetting.method == "replay":  # general rows join every epoch
        rows += math.ceil(rows * train.forgetting.replay_fraction)
    steps_per_epoch = max(1, math.ceil(rows / per_step))
    batch_cost = seconds_per_step * EVAL_STEP_SHARE
    evaluation = math.ceil(int(dataset.counts.get("val", 0)) / train.per_device_train_batch_size) * batch_cost
    testing = (
        0.0
        if objective.generative
        else math.ceil(int(dataset.counts.get("test", 0)) / train.per_device_train_batch_size) * batch_cost
    )

    def cost(epochs: float) -> float:
        steps = math.ceil(steps_per_epoch * epochs)
        return spent + steps * seconds_per_step + math.ceil(epochs) * evaluation + testing

    planned = math.ceil(steps_per_epoch * train.num_train_epochs)
    if cost(train.num_train_epochs) <= budget:
        epochs = train.num_train_epochs
        if train.objective in NEW_HEAD_OBJECTIVES and "num_train_epochs" in train.chosen_by_recipe:
            while epochs + 1 <= EPOCH_RANGE["head"][1] and cost(epochs + 1) <= budget:
                epochs += 1
        if epochs > train.num_train_epochs:
            return BudgetPlan(
                None,
                f"the {train.time_budget_minutes:g}-min budget fits {epochs:g} epochs at "
                f"{seconds_per_step:.2f} s a step (measured), instead of the planned "
                f"{train.num_train_epochs:g}; a new head learns "
                "from more passes (banking77 on MiniLM: 0.865 after 3 epochs, 0.73 after 1)",
                evaluation + testing,
                epochs,
            )
        return BudgetPlan(
            None,
            f"the planned {planned} steps fit at {seconds_per_step:.2f} s a step (measured)",
            evaluation + testing,
        )
    allowed = int((budget - spent - testing) / seconds_per_step)
    for _ in range(3):  # the evaluations the capped run still reaches, then what is left for steps
        started_epochs = math.ceil(max(allowed, 1) / steps_per_epoch)
        allowed = int((budget - spent - testing - started_epochs * evaluation) / seconds_per_step)
    if allowed < MIN_BUDGET_STEPS:
        raise TrainConfigError(
            f"train.time_budget_minutes={train.time_budget_minutes:g} allows {max(allowed, 0)} steps at "
            f"{seconds_per_step:.2f} s a step (measured); at least {MIN_BUDGET_STEPS} are needed to learn "
            "anything: raise the budget, or shorten train.max_length"
        )
    share = min(1.0, allowed * per_step / rows) if rows else 1.0
    seen = (
        f"{share:.0%} of the {rows:,} train rows" if share < 1 else f"{allowed / steps_per_epoch:.1f} epochs"
    )
    return BudgetPlan(
        allowed,
        f"the {train.time_budget_minutes:g}-min budget allows {allowed} steps at {seconds_per_step:.2f} s a "
        f"step (measured), {seen}, instead of the planned {planned}",
        evaluation + testing,
    )


def encoder_blocker(requested: ProjectConfig, planned: ProjectConfig, dataset: DatasetVersion) -> str | None:
    """Why a run (`requested` as the config names it, `planned` as the recipe plans it) may not train
    the bundled encoder instead of its model (`train.encoder: auto`, `budget.choose_body`): None when
    it may; a reason worth printing; or "" when the run is simply not one the rule is for.

    It may when nothing but the defaults chose the body: a classifier (`classify`), trained within a
    time budget by the recipe, on the default model (the bundled decoder the rule was measured on)
    with the default method (lora), as one process from the bare base, on rows that fit the
    encoder's window; and the encoder loads without a download.
    """
    from tunesmith.models.loading import resolve

    train = planned.train
    default = ModelConfig()
    if (
        train.encoder != "auto"
        or train.recipe != "auto"
        or train.objective != "classify"
        or train.time_budget_minutes is None
        or train.max_steps > 0
        or train.processes > 1
        or train.init_from is not None
        or requested.train.method != "lora"
        or (requested.model.id, requested.model.revision) != (default.id, default.revision)
    ):
        return ""
    encoder = CATALOG[BUNDLED_ENCODER]
    tokens = train_tokens(dataset)
    if "p99" in tokens and int(tokens["p99"]) + SPECIAL_TOKENS > encoder.context_window:
        return (
            f"encoder: {planned.model.id} (99% of the train rows fit in {int(tokens['p99'])} tokens, "
            f"more than {encoder.id}'s window of {encoder.context_window})"
        )
    try:
        download = resolve(encoder.id, source=requested.model.source).origin == "hub"
    except ModelNotFoundError:
        download = True
    if download and requested.model.source != "hub":
        return f"encoder: {planned.model.id} ({encoder.id} would need a download: {encoder.install_hint})"
    return None


def with_encoder(requested: ProjectConfig) -> ProjectConfig:
    """`requested` on the bundled encoder, fine-tuned whole (`method: full`: its 22.7M parameters
    train in about the time LoRA adapters on the decoder take), before the recipe plans it."""
    encoder = CATALOG[BUNDLED_ENCODER]
    chosen = {
        **requested.train.chosen_by_recipe,
        "method": f"the encoder's {encoder.parameters / 1e6:.1f}M parameters train whole",
    }
    train = requested.train.model_copy(update={"method": "full", "chosen_by_recipe": chosen})
    model = requested.model.model_copy(update={"id": encoder.id, "revision": None})
    return requested.model_copy(update={"model": model, "train": train})


def _power_of_two(value: int) -> int:
    """The largest power of two at most `value` (1 for less)."""
    return 2 ** int(math.log2(value)) if value >= 1 else 1


def _round_up(value: int, step: int) -> int:
    return max(step, -(-value // step) * step)


def plan_run(config: ProjectConfig, dataset: DatasetVersion, *, announce: bool = False) -> ProjectConfig:
    """`config` as a run on `dataset` trains it: `train.objective: auto` decided from the rows
    (`resolve_objective`) and the recipe's choices applied, each recorded with its reason under
    `train.chosen_by_recipe` (and printed when `announce`).

    A planned config names every setting, so planning it again changes nothing: a resumed,
    reproduced or distributed run trains what the first plan chose.

    Raises:
        TrainConfigError: when the rows do not fit the objective, or a setting does not fit the
            objective `auto` picked.
    """
    from tunesmith.train.objectives import put_setting, resolve_objective

    named = set_by_config(config.train)
    config = resolve_objective(config, dataset, announce=announce)
    chosen = [c for c in plan_recipe(config, dataset, named) if c.chosen]
    if not chosen:
        return config
    train = config.train.model_dump()
    for choice in chosen:
        put_setting(train, choice.key, choice.value)
    if "lora.r" in {c.key for c in chosen} and "lora.lora_alpha" not in named:
        train["lora"]["lora_alpha"] = 2 * train["lora"]["r"]  # the scale LoRA is usually trained at
    train["chosen_by_recipe"] = {**train["chosen_by_recipe"], **{c.key: c.reason for c in chosen}}
    config = config.model_copy(update={"train": TrainConfig.model_validate(train)})
    if announce:
        from tunesmith.progress import console

        console.print(
            "[dim]recipe (train.recipe auto; a setting your config names is kept; `train --plan` "
            "prints the plan):[/dim]",
            highlight=False,
        )
        for choice in chosen:
            console.print(
                f"[dim]  {choice.key} {shown_value(choice.value)}: {choice.reason}[/dim]", highlight=False
            )
    return config


def plan_rows(named: set[str], planned: TrainConfig) -> list[tuple[str, str, str]]:
    """(setting, value, where it came from) for each setting the recipe decides: `train --plan`."""
    rows = []
    for key in PLANNED:
        value = get_setting(planned, key)
        source = planned.chosen_by_recipe.get(key) or ("your config" if key in named else "default")
        rows.append((key, shown_value(value), source))
    return rows


def shown_value(value: Any) -> str:
    if isinstance(value, float) and 0 < value < 0.01:
        return f"{value:.0e}"
    return str(value)
