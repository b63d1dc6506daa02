"""Hyperparameter search with Optuna: every trial a recorded run, judged on a validation metric.

The objective is any metric a trial reports on the validation split: the validation loss, a
classifier's accuracy or F1, or an eval metric of generated answers (ROUGE-L, key facts, ...),
which is computed on the validation items after the trial trains. The test split is never looked
at, so the best trial can still be compared honestly against production afterwards.

Pruning compares each trial's validation scores, as training goes, with the median of earlier
trials at the same step (the objective itself when the trainer reports it, else the validation
loss), and stops trials that trail. The budget is a number of trials, a wall time, or a number of
training tokens over all trials, whichever runs out first.

The study lives in an Optuna storage: a SQLite file beside the project's store by default, or any
database URL (`--storage`), which lets workers on several machines share one study.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from tunesmith.config import ParamRange, ProjectConfig, load_config
from tunesmith.progress import console
from tunesmith.store import exclusive
from tunesmith.workspace import Workspace, open_workspace

# Ranges that suit each method when `sweep.space` is empty: the learning rate matters most,
# then the adapter's rank and the number of epochs.
DEFAULT_SPACES: dict[str, dict[str, ParamRange]] = {
    "lora": {
        "train.lr": ParamRange(low=5e-5, high=5e-3, log=True),
        "train.lora.r": ParamRange(choices=[4, 8, 16, 32]),
        "train.epochs": ParamRange(choices=[1, 2, 3]),
    },
    "full": {
        "train.lr": ParamRange(low=1e-6, high=1e-4, log=True),
        "train.epochs": ParamRange(choices=[1, 2, 3]),
    },
    "freeze": {
        "train.lr": ParamRange(low=1e-5, high=1e-3, log=True),
        "train.epochs": ParamRange(choices=[1, 2, 3]),
    },
    "head": {
        "train.lr": ParamRange(low=1e-4, high=1e-2, log=True),
        "train.epochs": ParamRange(choices=[1, 2, 3, 5]),
    },
}
DEFAULT_SPACES["qlora"] = DEFAULT_SPACES["lora"]
LOWER_IS_BETTER = ("loss", "perplexity", "ppl", "error", "latency")


class SweepError(ValueError):
    """A sweep that cannot run as configured."""


@dataclass
class SweepResult:
    study: Any  # optuna.Study
    direction: str
    objective: str
    best_run: str | None
    version: Any  # the registered best trial (ModelVersion), or None
    warnings: list[str]
    registered_now: bool = False  # this worker registered `version` (not another, or an earlier sweep)


def search_space(config: ProjectConfig) -> dict[str, ParamRange]:
    return dict(config.sweep.space) or DEFAULT_SPACES.get(config.train.method, DEFAULT_SPACES["full"])


def direction_of(config: ProjectConfig) -> str:
    if config.sweep.direction != "auto":
        return config.sweep.direction
    name = config.sweep.objective.lower()
    return "minimize" if any(word in name for word in LOWER_IS_BETTER) else "maximize"


def grid_values(p: ParamRange) -> list[Any]:
    """The values the grid strategy tries: the choices, each step of a stepped range, or `grid_points`."""
    if p.choices is not None:
        return list(p.choices)
    assert p.low is not None and p.high is not None
    if p.step is not None:
        count = round((p.high - p.low) / p.step) + 1
        values = [p.low + i * p.step for i in range(count)]
        return [int(v) if float(v).is_integer() and float(p.step).is_integer() else v for v in values]
    n = p.grid_points
    if p.log:
        ratio = (p.high / p.low) ** (1 / (n - 1))
        return [float(f"{p.low * ratio**i:.3g}") for i in range(n)]
    return [float(f"{p.low + (p.high - p.low) * i / (n - 1):.4g}") for i in range(n)]


def space_size(space: dict[str, ParamRange], strategy: str) -> float:
    """Distinct settings in the space: infinite for a continuous range unless the grid discretises it."""
    size = 1.0
    for p in space.values():
        if p.choices is not None or p.step is not None or strategy == "grid":
            size *= len(grid_values(p))
        else:
            return math.inf
    return size


def suggest(trial: Any, name: str, p: ParamRange) -> Any:
    if p.choices is not None:
        return trial.suggest_categorical(name, p.choices)
    assert p.low is not None and p.high is not None
    if p.step is not None and all(float(v).is_integer() for v in (p.low, p.high, p.step)):
        return trial.suggest_int(name, int(p.low), int(p.high), step=int(p.step), log=p.log and p.step == 1)
    return trial.suggest_float(name, p.low, p.high, log=p.log, step=None if p.log else p.step)


def storage_url(config: ProjectConfig, storage: str | None) -> tuple[str, dict[str, Any]]:
    """(URL, engine kwargs) of the Optuna storage.

    The project's own store works as a storage: Optuna keeps its tables (and its own migration
    history) in a SQLite file beside a SQLite store, or in a schema of its own on PostgreSQL, so
    the two never share a table.
    """
    url = storage or config.sweep.storage or config.resolved_store_url
    if url != config.resolved_store_url:
        return url, {}
    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///"))
        return f"sqlite:///{path.with_name(path.stem + '-sweeps.db')}", {}
    if url.startswith("postgresql"):
        return url, {"connect_args": {"options": f"-csearch_path={SWEEP_SCHEMA}"}}
    return url, {}


SWEEP_SCHEMA = "tunesmith_sweeps"


def optuna_storage(config: ProjectConfig, storage: str | None = None) -> Any:
    """Optuna's RDB storage for this project's sweeps, its tables created if they are missing.

    Workers started together on a fresh database create the tables one at a time, under a lock held
    in that database: Optuna's own creation of its tables is not safe against a concurrent start.
    """
    import sqlalchemy
    from optuna.storages import RDBStorage

    url, engine_kwargs = storage_url(config, storage)
    engine = sqlalchemy.create_engine(url, **engine_kwargs)
    try:
        with exclusive(engine, "tunesmith sweep storage"):
            if engine_kwargs:  # the project's PostgreSQL store: the study lives in a schema of its own
                with engine.begin() as connection:
                    connection.execute(sqlalchemy.text(f"CREATE SCHEMA IF NOT EXISTS {SWEEP_SCHEMA}"))
            # heartbeats: a trial whose worker was killed is marked failed, not left running for ever
            return RDBStorage(
                url,
                engine_kwargs=engine_kwargs or None,
                heartbeat_interval=HEARTBEAT_SECONDS,
                grace_period=GRACE_SECONDS,
            )
    finally:
        engine.dispose()


HEARTBEAT_SECONDS = 30
GRACE_SECONDS = 120


BUDGET_SLOT = "budget_slot"  # a trial's user attribute: it counts against sweep.trials
OVER_BUDGET = "over_budget"  # a trial's user attribute: a worker's look past the budget, it trained nothing


def open_study(config: ProjectConfig, storage: str | None = None, *, create: bool = True) -> Any:
    import optuna

    sweep = config.sweep
    rdb = optuna_storage(config, storage)
    name = study_name(config)
    if not create:
        return optuna.load_study(study_name=name, storage=rdb)
    space = search_space(config)
    if sweep.strategy == "grid":
        sampler: Any = optuna.samplers.GridSampler(
            {k: grid_values(p) for k, p in space.items()}, seed=sweep.seed
        )
    elif sweep.strategy == "random":
        sampler = optuna.samplers.RandomSampler(seed=sweep.seed)
    else:
        sampler = optuna.samplers.TPESampler(seed=sweep.seed, n_startup_trials=sweep.startup_trials)
    pruner = (
        optuna.pruners.MedianPruner(n_startup_trials=sweep.startup_trials, n_warmup_steps=0)
        if sweep.prune
        else optuna.pruners.NopPruner()
    )
    study = optuna.create_study(
        study_name=name,
        storage=rdb,
        sampler=sampler,
        pruner=pruner,
        direction="minimize" if direction_of(config) == "minimize" else "maximize",
        load_if_exists=True,
    )
    _same_aim(study, config)
    return study


def study_name(config: ProjectConfig) -> str:
    """`sweep.study`, or one name per project, objective and direction, so that two sweeps after
    different things never share a study by default."""
    return config.sweep.study or f"{config.project}-{config.sweep.objective}-{direction_of(config)}"


def _same_aim(study: Any, config: ProjectConfig) -> None:
    """Record what a new study optimises; refuse to resume one that optimises something else.

    Raises:
        SweepError: the study's metric, direction or training objective differs from this sweep's.
    """
    aim = {
        "objective": config.sweep.objective,
        "direction": direction_of(config),
        "train_objective": config.train.objective,
    }
    recorded = {key: study.user_attrs.get(key) for key in aim}
    recorded["direction"] = study.direction.name.lower()
    differing = [
        f"{key} {recorded[key]} (this sweep: {aim[key]})"
        for key in aim
        if recorded[key] is not None and recorded[key] != aim[key]
    ]
    if differing:
        raise SweepError(
            f"study {study.study_name!r} was started for other aims: {', '.join(differing)}; its trials "
            "cannot be compared with this sweep's. Name another study (sweep.study) or match its settings"
        )
    for key, value in aim.items():
        if key not in study.user_attrs:
            study.set_user_attr(key, value)


class PruningCallback:
    """Reports each validation evaluation to the trial; stops training when the pruner says so."""

    def __init__(self, trial: Any, objective: str, direction: str) -> None:
        self.trial, self.objective, self.direction = trial, objective, direction
        self.pruned = False

    def __getattr__(self, name: str) -> Any:  # every other TrainerCallback event: nothing to do
        if name.startswith("on_"):
            return lambda *args, **kwargs: None
        raise AttributeError(name)

    def on_evaluate(self, args: Any, state: Any, control: Any, metrics: dict[str, float], **_: Any) -> None:
        value = metrics.get(f"eval_{self.objective}", metrics.get(self.objective))
        if value is None:  # the objective is scored after training: follow the loss meanwhile
            loss = metrics.get("eval_loss")
            if loss is None:
                return
            value = loss if self.direction == "minimize" else -loss
        self.trial.report(float(value), state.global_step)
        if self.trial.should_prune():
            self.pruned = True
            control.should_training_stop = True


def objective_value(config: ProjectConfig, result: Any, dataset: Any) -> tuple[float, dict[str, float]]:
    """The trial's objective on the validation split, and the validation scores it is chosen from."""
    name = config.sweep.objective
    metrics = {k: v for k, v in result.metrics.items() if isinstance(v, (int, float))}
    for key in (f"eval_{name}", name):
        if key in metrics:
            return float(metrics[key]), metrics
    from tunesmith.data import load_split
    from tunesmith.evaluate import evaluate_model

    items = load_split(dataset, "val")
    settings = config.eval.model_copy(update={"metrics": [name]})
    scored = evaluate_model(result.model, result.tokenizer, items, settings, label="trial")
    if name not in scored.means:
        raise SweepError(f"sweep.objective: the trials report no {name!r} (got {', '.join(sorted(metrics))})")
    return float(scored.means[name]), {**metrics, name: float(scored.means[name])}


class _Trials:
    """The objective Optuna calls: one recorded training run per trial, scored on validation."""

    def __init__(
        self, config_path: Path | None, overrides: list[str], config: ProjectConfig, dataset: Any, study: Any
    ) -> None:
        self.config_path, self.overrides, self.config = config_path, overrides, config
        self.dataset, self.study = dataset, study
        self.workspace = open_workspace(config)
        self.space = search_space(config)
        self.direction = direction_of(config)
        self.tokens = 0
        self.finished: dict[
            str, tuple[ProjectConfig, Any, str | None]
        ] = {}  # run -> config, result, base rev

    def __call__(self, trial: Any) -> float:
        import optuna

        from tunesmith.store import Run, session
        from tunesmith.train.callbacks import extra_callbacks
        from tunesmith.train.recipe import plan_run
        from tunesmith.train.run import load_base, run_objective

        if not self.take_budget_slot(trial):
            trial.set_user_attr(OVER_BUDGET, True)
            self.study.stop()
            raise optuna.TrialPruned(f"the study's {self.config.sweep.trials} trials are taken")
        params = {name: suggest(trial, name, p) for name, p in self.space.items()}
        config = load_config(self.config_path, [*self.overrides, *(f"{k}={v}" for k, v in params.items())])
        config = plan_run(config, self.dataset)
        console.rule(f"[bold]Trial {trial.number}[/bold] " + ", ".join(f"{k}={v}" for k, v in params.items()))
        base = load_base(config, self.dataset, self.workspace)
        pruning = PruningCallback(trial, config.sweep.objective, self.direction)
        with extra_callbacks(pruning):
            result = run_objective(config, self.workspace, self.dataset, base, kind="sweep")
        spent = int(result.metrics.get("train_tokens", 0))
        self.tokens += spent
        trial.set_user_attr("run_id", result.run_id)
        trial.set_user_attr("train_tokens", spent)
        trial.set_user_attr("weights_dir", str(result.adapter_dir))  # for whichever worker registers it
        trial.set_user_attr("base_revision", base.base_revision)
        with session(self.workspace.engine) as s:
            row = s.get(Run, result.run_id)
            assert row is not None
            row.metrics = {**row.metrics, "sweep_study": self.study.study_name, "sweep_trial": trial.number}
            if pruning.pruned:
                row.status = "pruned"
        if pruning.pruned:
            raise optuna.TrialPruned()
        value, scores = objective_value(config, result, self.dataset)
        trial.set_user_attr("scores", scores)
        # what registering needs, not the model: memory stays flat however many trials run
        self.finished[result.run_id] = (config, replace(result, model=None), base.base_revision)
        return value

    def budget_left(self) -> int | None:
        """Trials of `sweep.trials` no worker has taken yet; None without a trial budget."""
        budget = self.config.sweep.trials
        taken = sum(1 for t in self.study.get_trials(deepcopy=False) if t.user_attrs.get(BUDGET_SLOT))
        return None if budget is None else max(budget - taken, 0)

    def take_budget_slot(self, trial: Any) -> bool:
        """Count `trial` against `sweep.trials`, the study's budget over every worker; False when the
        other workers have taken it all. Workers take slots one at a time (a lock in the project's store,
        which workers of one study share)."""
        with exclusive(self.workspace.engine, f"tunesmith sweep budget {self.study.study_name}"):
            if self.budget_left() == 0:
                return False
            trial.set_user_attr(BUDGET_SLOT, True)
        return True

    def stop_when_budget_taken(self, study: Any, _: Any) -> None:
        if self.budget_left() == 0:  # the usual end; a worker that still asks finds the budget taken
            study.stop()

    def stop_on_tokens(self, study: Any, _: Any) -> None:
        limit = self.config.sweep.max_tokens
        if limit is not None and self.tokens >= limit:
            console.print(f"Token budget spent: {self.tokens:,} of {limit:,} training tokens")
            study.stop()


def run_sweep(
    config_path: Path | None,
    overrides: list[str] | None = None,
    *,
    storage: str | None = None,
    register_best: bool = True,
) -> SweepResult:
    """Run trials until the budget is spent; register the best trial as the candidate version.

    Raises:
        SweepError: when the objective cannot be measured (no validation rows).
    """
    import optuna

    from tunesmith.data import prepare_data
    from tunesmith.train.recipe import plan_run

    overrides = list(overrides or [])
    config = load_config(config_path, overrides)
    sweep = config.sweep
    dataset = prepare_data(config, open_workspace(config))
    config = plan_run(config, dataset, announce=True)
    if not dataset.counts.get("val"):
        raise SweepError(
            f"dataset {dataset.id} has no validation rows; trials are judged on the validation split "
            "(set data.split.val, e.g. 0.1)"
        )
    warnings = _budget_warnings(search_space(config), sweep.strategy, sweep.trials)
    for warning in warnings:
        console.print(f"[yellow]warning:[/yellow] {warning}", soft_wrap=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = open_study(config, storage)
    trials = _Trials(config_path, overrides, config, dataset, study)
    optuna.storages.fail_stale_trials(study)  # trials of workers that were killed
    if trials.budget_left() == 0:
        console.print(
            f"Study {study.study_name} already holds its {sweep.trials} trials (sweep.trials counts every "
            "worker's); raise --trials to run more"
        )
    else:
        _optimize(study, trials)
    best_run, version, now = None, None, False
    if any(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials):
        best_run = study.best_trial.user_attrs.get("run_id")
        if register_best:
            version, now = register_if_last(study, trials.workspace, trials.finished)
    return SweepResult(study, trials.direction, sweep.objective, best_run, version, warnings, now)


def _optimize(study: Any, trials: _Trials) -> None:
    timeout = trials.config.sweep.timeout_minutes
    study.optimize(
        trials,  # until the study's budget (sweep.trials, over every worker) is taken, or time or tokens
        timeout=timeout * 60 if timeout else None,
        callbacks=[trials.stop_when_budget_taken, trials.stop_on_tokens],
    )


def register_if_last(
    study: Any, workspace: Workspace, finished: dict[str, tuple[ProjectConfig, Any, str | None]]
) -> tuple[Any, bool]:
    """Register the study's best trial when no other worker still trains one (the last worker to
    finish registers it, once): (its version, whether this call registered it); (None, False) while
    another worker trains. Workers decide one at a time (a lock in the store)."""
    import optuna

    with exclusive(workspace.engine, f"tunesmith sweep register {study.study_name}"):
        optuna.storages.fail_stale_trials(study)
        running = [
            t
            for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
            if t.user_attrs.get(BUDGET_SLOT)
        ]
        if running:
            console.print(
                f"{len(running)} trial(s) still running on other workers; the last one to finish "
                "registers the best trial"
            )
            return None, False
        earlier = registered_version(workspace, study.best_trial.user_attrs.get("run_id"))
        if earlier is not None:
            return earlier, False
        return register_best_trial(study, workspace, finished), True


def registered_version(workspace: Workspace, run_id: str | None) -> Any:
    """The version registered from run `run_id`, or None."""
    from sqlalchemy import select

    from tunesmith.store import ModelVersion, session

    with session(workspace.engine) as s:
        return s.scalars(select(ModelVersion).where(ModelVersion.run_id == run_id)).first()


def register_best_trial(
    study: Any, workspace: Workspace, finished: dict[str, tuple[ProjectConfig, Any, str | None]] | None = None
) -> Any:
    """Register the study's best trial as the candidate version, whichever worker ran it: its run and
    weights are read from the store and the study's storage (`finished`: this worker's own trials,
    still in memory). A trial already registered (by another worker) is not registered twice.

    Raises:
        SweepError: the best trial's weights are not on this machine.
    """
    from tunesmith.registry import register_trained
    from tunesmith.store import Run, session

    best = study.best_trial
    run_id = best.user_attrs.get("run_id")
    extra = {"sweep_study": study.study_name, "sweep_trial": best.number}
    existing = registered_version(workspace, run_id)
    if existing is not None:
        return existing
    with session(workspace.engine) as s:
        row = s.get(Run, run_id)
    if finished and run_id in finished:
        config, result, revision = finished[run_id]
        return register_trained(config, workspace, result, revision, extra)
    weights = Path(best.user_attrs.get("weights_dir") or "")
    if row is None or not weights.is_dir():
        raise SweepError(
            f"the best trial ({best.number}, run {run_id}) ran on another worker and its weights "
            f"({weights}) are not on this machine; register it there, or share the workspace folder"
        )
    import transformers

    from tunesmith.train.sft import TrainResult

    result = TrainResult(
        run_id=row.id,
        run_dir=Path(row.path),
        adapter_dir=weights,
        metrics=dict(row.metrics),
        model=None,
        tokenizer=transformers.AutoTokenizer.from_pretrained(str(weights)),
    )
    config = ProjectConfig.model_validate(row.config)
    return register_trained(config, workspace, result, best.user_attrs.get("base_revision"), extra)


def _budget_warnings(space: dict[str, ParamRange], strategy: str, trials: int | None) -> list[str]:
    size = space_size(space, strategy)
    if trials is None or size <= trials:
        return []
    if math.isinf(size):
        ranges = ", ".join(k for k, p in space.items() if p.choices is None)
        if trials >= 10 * len(space):
            return []
        return [
            f"the space has continuous ranges ({ranges}) and {len(space)} settings; {trials} trials "
            "sample it sparsely (TPE needs about 10 trials per setting to do better than random search)"
        ]
    return [f"the space has {size:g} combinations but the budget allows {trials} trials: most stay untried"]
