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
    rows_per_step: Callable[[TrainConfig], float] = _one_row_per_sample
    # optimizer steps after which the work per step repeats: RL samples answers once per cycle
    step_cycle: Callable[[TrainConfig], int] = _every_step
    labelled: bool = False  # the head's outputs are the data's labels
    cross_validates: bool = True  # `eval --cv` folds its one dataset
    single_pass: bool = False  # the train split already holds every epoch (a mixture's stream)

    @property
    def generative(self) -> bool:
        """Its versions are causal LMs: they answer prompts (and serve), and forgetting is probed."""
        return self.head == "causal-lm"

    def build_trainer(self, job: TrainerJob) -> Any:
        """Its trainer for `job`, with what every run (and its dry-run calibration) trains with:
        LoRA adapters that read their layer's input as is under autocast."""
        from tunesmith.train.methods import share_lora_inputs_under_autocast

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
    if objective.name not in accepted:
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
    """The table's entry for `name` (a version recorded before `objective` existed is `sft`)."""
    return OBJECTIVES[name or "sft"]


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
    accepted = set(get_args(TrainConfig.model_fields["objective"].annotation))
    unregistered = accepted - set(OBJECTIVES)
    if unregistered:
        raise ValueError(f"train.objective accepts {sorted(unregistered)} but no entry trains them")
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
    from tunesmith.train.classify import classifier_trainer, describe_classifier, finish_classifier
    from tunesmith.train.preference import describe_preference, finish_reward, preference_trainer
    from tunesmith.train.rl import describe_rl, finish_rl, rl_trainer
    from tunesmith.train.sft import describe_lm, sft_records, sft_trainer

    lm: dict[str, Any] = {
        "head": "causal-lm",
        "trainer": sft_trainer,
        "records": sft_records,
        "describe": describe_lm,
    }
    register_objective(Objective("sft", rows="sft", task="generation", **lm))
    register_objective(Objective("pretrain", rows="text", task="lm", **lm))
    register_objective(
        Objective("multitask", rows="sft", task="generation", cross_validates=False, single_pass=True, **lm)
    )
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
            **classifier,
        )
    )
    register_objective(
        Objective("tag", rows="tagging", head="token-classification", task="tagging", **classifier)
    )
    preference: dict[str, Any] = {
        "rows": "preference",
        "trainer": preference_trainer,
        "describe": describe_preference,
    }
    register_objective(
        Objective("reward", head="sequence-classification", task="reward", finish=finish_reward, **preference)
    )
    register_objective(Objective("dpo", head="causal-lm", task="generation", **preference))
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
        )
    )
    _check_complete()


_register_all()
