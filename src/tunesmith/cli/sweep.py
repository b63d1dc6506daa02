"""`tunesmith sweep`: hyperparameter search and learning curves."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from tunesmith.cli.common import app, fail, load_project, new_table, out, reported
from tunesmith.cli.options import ConfigOpt, SetOpt
from tunesmith.config import ProjectConfig

sweep_app = typer.Typer(invoke_without_command=True)
app.add_typer(sweep_app, name="sweep", rich_help_panel="Lifecycle")
StudyOpt = Annotated[str | None, typer.Option(help="Study name (default <project>-<objective>-<direction>).")]
StorageOpt = Annotated[
    str | None,
    typer.Option(help="Optuna storage URL shared by workers (default: beside the project's store)."),
]


@sweep_app.callback()
def sweep(
    ctx: typer.Context,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    trials: Annotated[int | None, typer.Option(help="Budget: trials in the study, all workers.")] = None,
    timeout_minutes: Annotated[float | None, typer.Option(help="Budget: wall time.")] = None,
    max_tokens: Annotated[int | None, typer.Option(help="Budget: training tokens over all trials.")] = None,
    strategy: Annotated[str | None, typer.Option(help="tpe, random or grid.")] = None,
    objective: Annotated[
        str | None, typer.Option(help="Validation metric to optimise: eval_loss, accuracy, rouge_l, ...")
    ] = None,
    storage: StorageOpt = None,
    study: StudyOpt = None,
    learning_curve: Annotated[
        bool, typer.Option("--learning-curve", help="Train on growing shares of the data instead.")
    ] = False,
    register: Annotated[bool, typer.Option(help="Register the best trial as the candidate.")] = True,
) -> None:
    """Hyperparameter search judged on a validation metric, or a learning curve (--learning-curve)."""
    if ctx.invoked_subcommand is not None:
        return
    from tunesmith.train.openmp import prepare_training_process

    prepare_training_process()  # first: before anything loads torch
    from tunesmith.data import DataError
    from tunesmith.sweep import SweepError, run_sweep
    from tunesmith.sweep import learning_curve as run_curve
    from tunesmith.workspace import open_workspace

    overrides = list(set_ or [])
    for name, value in (
        ("trials", trials),
        ("timeout_minutes", timeout_minutes),
        ("max_tokens", max_tokens),
        ("strategy", strategy),
        ("objective", objective),
        ("study", study),
    ):
        if value is not None:
            overrides.append(f"sweep.{name}={value}")
    cfg = load_project(config, overrides)
    with reported(SweepError, DataError):
        if learning_curve:
            curve = run_curve(cfg, open_workspace(cfg))
            _print_curve(curve)
            return
        result = run_sweep(config, overrides, storage=storage, register_best=register)
    _print_study(result.study, cfg, storage)
    if result.version is not None:
        how = "registered as" if result.registered_now else "was registered earlier as"
        out.print(
            f"Best trial's run {result.best_run} {how} [bold]{result.version.name}[/bold] "
            f"(candidate); compare it with `tunesmith eval {result.version.name}`"
        )


@sweep_app.command("show")
def sweep_show(
    config: ConfigOpt = None,
    storage: StorageOpt = None,
    study: StudyOpt = None,
) -> None:
    """A study's trials, best first, and its plots: history, parameter importance, parallel coordinates."""
    cfg = load_project(config, [f"sweep.study={study}"] if study else None)
    from tunesmith.sweep import open_study
    from tunesmith.sweep.search import study_name

    try:
        found = open_study(cfg, storage, create=False)
    except KeyError:
        raise fail(f"no study {study_name(cfg)!r} in that storage; run `tunesmith sweep`") from None
    _print_study(found, cfg, storage)


def _print_study(study: Any, cfg: ProjectConfig, storage: str | None) -> None:
    from tunesmith.sweep.report import trial_rows, write_plots
    from tunesmith.workspace import open_workspace

    rows = trial_rows(study)
    params = sorted({k for r in rows for k in r["params"]})
    headers = [k.removeprefix("train.") for k in params]
    table = new_table("trial", "state", cfg.sweep.objective, *headers, "tokens", "run")
    for column in table.columns:  # numbers whole; the run id may fold
        column.no_wrap, column.overflow = column.header != "run", "fold"
    for r in rows:
        table.add_row(
            str(r["trial"]),
            r["state"],
            f"{r['value']:.4f}" if r["value"] is not None else "",
            *(_short_value(r["params"].get(k)) for k in params),
            f"{r['tokens']:,}" if r["tokens"] else "",
            r["run"] or "",
        )
    out.print(
        f"Study [bold]{study.study_name}[/bold]: {study.direction.name.lower()} {cfg.sweep.objective} "
        "on the validation split",
        highlight=False,
    )
    out.print(table)
    folder = open_workspace(cfg).root / "sweeps" / study.study_name
    written = write_plots(study, folder)
    if written:
        out.print("Plots: " + ", ".join(str(p) for p in written), soft_wrap=True)


def _short_value(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else "" if value is None else str(value)


def _print_curve(curve: Any) -> None:
    table = new_table("share", "train rows", f"test {curve.metric}")
    for fraction, rows, value in curve.means():
        table.add_row(f"{fraction:.0%}", str(rows), f"{value:.4f}")
    out.print(table)
    if curve.fit is not None:
        fit = curve.fit
        out.print(
            f"Power-law fit: {curve.metric} = {fit['a']:.4g} {fit['b']:+.4g} * rows^-{fit['c']:.3g}; "
            f"doubling the data ({curve.full_rows} → {2 * curve.full_rows} rows) is expected to "
            f"{'improve' if (curve.doubling_gain or 0) > 0 else 'change'} {curve.metric} by "
            f"{curve.doubling_gain:+.4f}",
            soft_wrap=True,
            highlight=False,
        )
    for note in curve.notes:
        out.print(f"[yellow]note:[/yellow] {note}")
    out.print(f"Plot: {curve.folder / 'learning_curve.png'}; points: {curve.folder / 'curve.json'}")
