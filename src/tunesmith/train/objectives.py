"""The one table of training objectives.

Each entry says what an objective trains on (the dataset's row kind and which rows), which head it
trains, how its TRL trainer is built (the run's own, and the few calibration steps of `train
--dry-run`), what it adds when a run ends (a classifier's test report, a reward model's held-out
accuracy, an RL run's reward curves), how many rows one optimizer step consumes, and how its versions
are scored (`task`). One loop (`train.run.run_objective`) trains every objective through these
hooks, and `train`, `--dry-run`, `eval --cv`, `registry reproduce`, `sweep`, `improve` and the web
app's jobs all come through it; nothing else names objectives one by one.

Adding an objective is adding one `register_objective(Objective(...))` call here; a name the config
accepts but nothing registers, a second registration, or an entry without a trainer fails at import.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

from tunesmith.config import GENERATIVE_OBJECTIVES, ProjectConfig, TrainConfig
from tunesmith.data.formats import FORMATS
from tunesmith.store import DatasetVersion
from tunesmith.workspace import Workspace

Task = Literal["generation", "classification", "tagging", "lm", "reward"]
Head = Literal["causal-lm", "sequence-classification", "token-classification"]


@dataclass
class TrainerJob:
    """What an objective's trainer is built from: the run's own, or `train --dry-run`'s calibration."""

    config: ProjectConfig
    base: Any  # the LoadedModel to train
    records: dict[str, list[dict[str, Any]]]  # train (and val) rows
    run_dir: Path  # the trainer writes its checkpoints under run_dir / "trainer"
    callbacks: list[Any]
    workspace: Workspace  # for what a run reads from the registry (an RL reward model)


TrainerBuilder = Callable[[TrainerJob], Any]


def _one_row_per_sample(train: TrainConfig) -> float:
    return float(train.per_device_train_batch_size * train.processes * train.accumulation_steps)


@dataclass
class RunContext:
    """What an objective's `finish` hook sees of the run it ends."""

    config: ProjectConfig
    dataset: DatasetVersion
    kind: str  # train, sweep, cv, reproduce, ...
    base: Any  # the LoadedModel the run started from
    records: dict[str, list[dict[str, Any]]]  # the rows it trained and validated on


Finish = Callable[[RunContext, Any, Path, Path], dict[str, Any]]  # (run, trainer, run_dir, weights_dir)


def _split_records(config: ProjectConfig, dataset: DatasetVersion) -> dict[str, list[dict[str, Any]]]:
    from tunesmith.train.sft import split_records

    return split_records(config, dataset)


def _every_step(_: TrainConfig) -> int:
    return 1


@dataclass(frozen=True)
class Objective:
    """One training objective: everything the lifecycle needs to know about it."""

    name: str
    rows: str  # the dataset kind it trains on (`data` stage's `kind`)
    head: Head  # the head it trains (a classifier's is sized from the data's labels)
    task: Task  # how its versions are scored
    trainer: TrainerBuilder  # its TRL trainer on given records: the run's own and the calibration's
    describe: Callable[[ProjectConfig, Any], str]  # what it trains (method, guard, head), from its trainer
    records: Callable[[ProjectConfig, DatasetVersion], dict[str, list[dict[str, Any]]]] = _split_records
    finish: Finish | None = None  # metrics (and files) it adds once the weights are saved
    # what it adds to its versions' lineage (a distillation's teacher)
    lineage: Callable[[ProjectConfig, Workspace], dict[str, Any]] | None = None
    rows_per_step: Callable[[TrainConfig], float] = _one_row_per_sample
    # optimizer steps after which the work per step repeats: RL samples answers once per cycle
    step_cycle: Callable[[TrainConfig], int] = _every_step
    labelled: bool = False  # the head's outputs are the data's labels
    cross_validates: bool = True  # `eval --cv` folds its one dataset
    single_pass: bool = False  # the train split already holds every epoch (a mixture's stream)
    generates: bool = False  # it samples answers while it trains: its sequences are a row plus an answer
    # the row formats (`data` stage's FORMATS) for which `train.objective: auto` picks it, and why
    auto_for: tuple[str, ...] = ()
    auto_reason: str = ""

    @property
    def generative(self) -> bool:
        """Its versions are causal LMs: they answer prompts (and serve), and forgetting is probed."""
        return self.head == "causal-lm"

    def build_trainer(self, job: TrainerJob) -> Any:
        """Its trainer for `job`, with what every run (and its dry-run calibration) trains with:
        LoRA adapters that read their layer's input as is under autocast."""
        from tunesmith.train.methods import share_lora_inputs_under_autocast

        if job.config.train.objective != self.name:  # `auto` is decided by resolve_objective first
            raise ValueError(f"a {self.name} trainer for train.objective {job.config.train.objective}")
        trainer = self.trainer(job)
        share_lora_inputs_under_autocast(trainer.model)
        _count_parameters_once(trainer)
        return trainer


def _count_parameters_once(trainer: Any) -> None:
    """transformers' Trainer adds 6 x tokens x parameters to its FLOP count after every step and
    counts the model's parameters anew each time (9 ms on SmolLM2-135M: 2% of a step on short rows).
    They do not change while it trains, so they are counted once; the figure is the same."""
    model = trainer.model
    if not hasattr(model, "num_parameters"):
        return
    parameters = model.num_parameters(exclude_embeddings=True)
    main_input = getattr(model, "main_input_name", "input_ids")

    def floating_point_ops(inputs: dict[str, Any]) -> int:
        return 6 * inputs[main_input].numel() * parameters if main_input in inputs else 0

    trainer.floating_point_ops = floating_point_ops


OBJECTIVES: dict[str, Objective] = {}


def register_objective(objective: Objective) -> Objective:
    """Add `objective` to the table.

    Raises:
        ValueError: for a name registered twice, one the config does not accept, or an entry
            without a callable trainer or run.
    """
    if objective.name in OBJECTIVES:
        raise ValueError(f"objective {objective.name!r} is registered twice")
    accepted = get_args(TrainConfig.model_fields["objective"].annotation)
    if objective.name not in accepted or objective.name == "auto":
        raise ValueError(
            f"objective {objective.name!r} is not one train.objective accepts ({', '.join(accepted)}); "
            "add it to TrainConfig.objective"
        )
    hooks = ("trainer", "records", "describe", "rows_per_step", "step_cycle")
    missing = [name for name in hooks if not callable(getattr(objective, name))]
    if missing:
        raise ValueError(f"objective {objective.name!r} has no {' or '.join(missing)}")
    OBJECTIVES[objective.name] = objective
    return objective


def get_objective(name: str) -> Objective:
    """The table's entry for `name` (a version recorded before `objective` existed is `sft`).

    Raises:
        ValueError: for `auto`, which `resolve_objective` decides from the data first.
    """
    if name == "auto":
        raise ValueError("train.objective auto is decided from the data: call resolve_objective first")
    return OBJECTIVES[name or "sft"]


@dataclass(frozen=True)
class ObjectiveChoice:
    """What `train.objective: auto` picks for rows of one format, and why."""

    objective: str
    reason: str
    settings: dict[str, Any]  # other train settings the rows need (`--set` keys -> values)

    def describe(self) -> str:
        extra = "".join(f", {key}: {value}" for key, value in self.settings.items())
        return f"train.objective auto chose {self.objective}{extra}: {self.reason}"


def choose_objective(fmt: str, kind: str) -> ObjectiveChoice:
    """The objective `train.objective: auto` trains rows of format `fmt` (of `kind`) with.

    A format no entry names (a dataset version made by another stage) takes the first objective
    that picks any format of its kind.
    """
    for entry in OBJECTIVES.values():
        if fmt in entry.auto_for:
            break
    else:
        entry = next(e for e in OBJECTIVES.values() if e.auto_for and e.rows == kind)
    reason = entry.auto_reason.format(format=FORMATS[fmt].description if fmt in FORMATS else f"{kind} rows")
    if FORMATS.get(fmt) is not None and FORMATS[fmt].kind == "unpaired":
        return ObjectiveChoice(entry.name, reason + ", learned by KTO", {"train.preference.loss_type": "kto"})
    return ObjectiveChoice(entry.name, reason, {})


def resolve_objective(
    config: ProjectConfig, dataset: DatasetVersion, *, announce: bool = False
) -> ProjectConfig:
    """`config` with `train.objective: auto` decided from the dataset's row format (and printed when
    `announce`); an explicit objective is kept. Either way the rows are checked against it.

    Raises:
        TrainConfigError: when the rows do not fit the objective, or the settings do not fit the
            objective auto picked (packing for a classifier, say), naming both.
    """
    kind = dataset.meta.get("kind", "sft")
    return objective_for_rows(config, dataset.format, kind, f"dataset {dataset.id}", announce=announce)


def objective_for_rows(
    config: ProjectConfig, fmt: str, kind: str, where: str, *, announce: bool = False
) -> ProjectConfig:
    """`resolve_objective` for rows of format `fmt` and `kind` found in `where` (a dataset version,
    or a data file that `tunesmith validate` reads)."""
    if config.train.objective == "auto":
        choice = choose_objective(fmt, kind)
        config = with_objective(config, choice)
        if announce:
            from tunesmith.progress import console

            console.print(f"[dim]{choice.describe()}[/dim]", highlight=False)
    check_rows_kind(config.train.objective, kind, where, config.train)
    return config


def put_setting(section: dict[str, Any], key: str, value: Any) -> None:
    """Set the dotted `key` (`lora.r`) in a dumped config section."""
    *parents, last = key.split(".")
    for parent in parents:
        section = section[parent]
    section[last] = value


def with_objective(config: ProjectConfig, choice: ObjectiveChoice) -> ProjectConfig:
    """`config` training `choice`'s objective with its settings, checked as a config file would be.

    Raises:
        TrainConfigError: when another setting does not fit that objective.
    """
    from pydantic import ValidationError

    from tunesmith.train.sft import TrainConfigError

    train = config.train.model_dump()
    train["objective"] = choice.objective
    train["chosen_by_recipe"] = {**train["chosen_by_recipe"], "objective": choice.reason}
    for key, value in choice.settings.items():
        put_setting(train, key.removeprefix("train."), value)
    try:
        checked = TrainConfig.model_validate(train)
    except ValidationError as exc:
        problems = "; ".join(error["msg"].removeprefix("Value error, ") for error in exc.errors())
        raise TrainConfigError(f"{choice.describe()}, but {problems}") from None
    return config.model_copy(update={"train": checked})


def check_objective(objective: str, dataset: DatasetVersion, train: TrainConfig | None = None) -> None:
    """Refuse a dataset whose rows do not fit the objective, naming the objective that would.

    KTO (`objective: dpo` with `preference.loss_type: kto`) also takes thumbs-up/down rows.

    Raises:
        TrainConfigError: naming both kinds.
    """
    check_rows_kind(objective, dataset.meta.get("kind", "sft"), f"dataset {dataset.id}", train)


def check_rows_kind(objective: str, kind: str, where: str, train: TrainConfig | None = None) -> None:
    """Refuse rows of `kind` (found in `where`: a dataset version or a data file) for `objective`.

    Raises:
        TrainConfigError: naming both kinds and the objective that trains on these rows.
    """
    from tunesmith.train.sft import TrainConfigError

    kto = train is not None and train.preference.trainer == "kto"
    if kind == "unpaired" and objective == "dpo" and not kto:
        raise TrainConfigError(
            f"{where} holds thumbs-up/down rows, which only KTO learns from; "
            f"set train.preference.loss_type: kto"
        )
    if kind == "unpaired" and kto:
        return
    needs = get_objective(objective).rows
    if needs != kind:
        fitting = [name for name, entry in OBJECTIVES.items() if entry.rows == kind]
        hint = f"set train.objective: {fitting[0]}" if fitting else f"no objective trains on {kind} rows yet"
        raise TrainConfigError(
            f"train.objective={objective} needs {needs} rows, but {where} holds {kind} rows; " + hint
        )


def _check_complete() -> None:
    accepted = set(get_args(TrainConfig.model_fields["objective"].annotation)) - {"auto"}
    unregistered = accepted - set(OBJECTIVES)
    if unregistered:
        raise ValueError(f"train.objective accepts {sorted(unregistered)} but no entry trains them")
    picked = [fmt for entry in OBJECTIVES.values() for fmt in entry.auto_for]
    unpicked = set(FORMATS) - set(picked)
    twice = {fmt for fmt in picked if picked.count(fmt) > 1}
    if unpicked or twice or not set(picked) <= set(FORMATS):
        raise ValueError(
            f"every row format needs one objective that train.objective auto picks for it: "
            f"none for {sorted(unpicked)}, several for {sorted(twice)}, "
            f"unknown {sorted(set(picked) - set(FORMATS))}"
        )
    generative = {name for name, entry in OBJECTIVES.items() if entry.generative}
    if generative != set(GENERATIVE_OBJECTIVES):
        raise ValueError(
            f"config.GENERATIVE_OBJECTIVES {sorted(GENERATIVE_OBJECTIVES)} differs from the causal-LM "
            f"objectives {sorted(generative)}"
        )


def _rl_cycle(train: TrainConfig) -> int:
    """TRL samples a batch of answers, then takes `num_iterations` optimizer steps on it."""
    return train.rl.num_iterations


def _rl_rows_per_step(train: TrainConfig) -> float:
    """Prompts per optimizer step: each is answered `num_generations` times, each answer used
    `num_iterations` times."""
    return _one_row_per_sample(train) / train.rl.num_generations / train.rl.num_iterations


def _register_all() -> None:
    _register_language_models()
    _register_heads_and_preferences()
    _register_distillation()
    _check_complete()


def _register_language_models() -> None:
    from tunesmith.train.rl import describe_rl, finish_rl, rl_trainer
    from tunesmith.train.sft import describe_lm, sft_records, sft_trainer

    lm: dict[str, Any] = {
        "head": "causal-lm",
        "trainer": sft_trainer,
        "records": sft_records,
        "describe": describe_lm,
    }
    register_objective(
        Objective(
            "sft",
            rows="sft",
            task="generation",
            auto_for=("chat", "sharegpt", "prompt_completion", "alpaca"),
            auto_reason="the rows are {format}, so supervised fine-tuning with the loss on the answers",
            **lm,
        )
    )
    register_objective(
        Objective(
            "pretrain",
            rows="text",
            task="lm",
            auto_for=("text",),
            auto_reason="the rows are {format}, so continued pre-training on every token",
            **lm,
        )
    )
    register_objective(
        Objective("multitask", rows="sft", task="generation", cross_validates=False, single_pass=True, **lm)
    )
    register_objective(
        Objective(
            "rl",
            rows="sft",
            head="causal-lm",
            task="generation",
            trainer=rl_trainer,
            describe=describe_rl,
            finish=finish_rl,
            rows_per_step=_rl_rows_per_step,
            step_cycle=_rl_cycle,
            generates=True,
        )
    )


def _register_distillation() -> None:
    from tunesmith.train.distill import (
        describe_distill,
        distill_lineage,
        distill_records,
        distill_trainer,
        finish_distill,
    )

    register_objective(
        Objective(
            "distill",
            rows="sft",
            head="causal-lm",
            task="generation",
            trainer=distill_trainer,
            records=distill_records,
            describe=describe_distill,
            finish=finish_distill,
            lineage=distill_lineage,
            generates=True,
        )
    )


def _register_heads_and_preferences() -> None:
    from tunesmith.train.classify import classifier_trainer, describe_classifier, finish_classifier
    from tunesmith.train.preference import describe_preference, finish_reward, preference_trainer

    classifier: dict[str, Any] = {
        "trainer": classifier_trainer,
        "describe": describe_classifier,
        "finish": finish_classifier,
        "labelled": True,
    }
    register_objective(
        Objective(
            "classify",
            rows="classification",
            head="sequence-classification",
            task="classification",
            auto_for=("text_label",),
            auto_reason="the rows are {format}, so a classifier with one output per label",
            **classifier,
        )
    )
    register_objective(
        Objective(
            "tag",
            rows="tagging",
            head="token-classification",
            task="tagging",
            auto_for=("tagging",),
            auto_reason="the rows are {format}, so a tagger with one label per word",
            **classifier,
        )
    )
    preference: dict[str, Any] = {
        "rows": "preference",
        "trainer": preference_trainer,
        "describe": describe_preference,
    }
    register_objective(
        Objective(
            "reward",
            head="sequence-classification",
            task="reward",
            finish=finish_reward,
            auto_for=("ranking",),
            auto_reason="the rows are {format}, so a reward model that scores answers",
            **preference,
        )
    )
    register_objective(
        Objective(
            "dpo",
            head="causal-lm",
            task="generation",
            auto_for=("preference", "feedback"),
            auto_reason="the rows are {format}, so preference optimisation of the model itself",
            **preference,
        )
    )


_register_all()
