"""What a study found: its trials as a table, and Optuna's plots as PNG files."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from tunesmith.sweep.search import OVER_BUDGET


def trial_rows(study: Any) -> list[dict[str, Any]]:
    """One row per trial, best first among the finished ones, then pruned and failed ones."""
    import optuna

    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    rows = [
        {
            "trial": t.number,
            "state": t.state.name.lower(),
            "value": t.value,
            "params": t.params,
            "run": t.user_attrs.get("run_id"),
            "tokens": t.user_attrs.get("train_tokens"),
            "seconds": (t.datetime_complete - t.datetime_start).total_seconds()
            if t.datetime_complete and t.datetime_start
            else None,
        }
        for t in study.trials
        if not t.user_attrs.get(OVER_BUDGET)
    ]
    done = sorted((r for r in rows if r["state"] == "complete"), key=lambda r: r["value"], reverse=maximize)
    return done + [r for r in rows if r["state"] != "complete"]


def write_plots(study: Any, folder: Path) -> list[Path]:
    """Optimisation history, parameter importance and parallel coordinates (those the trials allow)."""
    from tunesmith.plots import pyplot

    plt = pyplot()
    import optuna
    from optuna.visualization import matplotlib as plots

    folder.mkdir(parents=True, exist_ok=True)
    finished = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    wanted: list[tuple[str, Any, int]] = [("optimization_history.png", plots.plot_optimization_history, 1)]
    if len(finished) >= 2 and finished[0].params:
        wanted += [
            ("param_importances.png", plots.plot_param_importances, 2),
            ("parallel_coordinate.png", plots.plot_parallel_coordinate, 2),
        ]
    written = []
    for name, plot, minimum in wanted:
        if len(finished) < minimum:
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                axes = plot(study)
        except (ValueError, RuntimeError):  # e.g. importance with a single distinct value
            continue
        figure: Any = axes.figure if hasattr(axes, "figure") else axes.flat[0].figure
        figure.set_size_inches(8, 5)
        figure.tight_layout()
        figure.savefig(folder / name, dpi=110)
        plt.close(figure)
        written.append(folder / name)
    return written
