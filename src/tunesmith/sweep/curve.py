"""Learning curves: would more data help? Train on growing shares of the train split, score every
run on the same test split, and fit a power law to read off what doubling the data should add.

Scaling studies (Kaplan et al. 2020; Hestness et al. 2017) find that a model's error falls as a
power of the data size until it levels off, `error(n) = a + b * n^-c`. With a few shares of one
dataset the fit is rough, so the table shows every measured point beside it, and the plot the fit
with its extrapolation to twice the data.
"""

from __future__ import annotations

import json
import random
import warnings
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from tunesmith.config import ProjectConfig
from tunesmith.data import load_split
from tunesmith.progress import console
from tunesmith.store import DatasetVersion
from tunesmith.sweep.search import SweepError, direction_of
from tunesmith.workspace import Workspace


@dataclass
class CurvePoint:
    fraction: float
    rows: int
    seed: int
    value: float
    run_id: str


@dataclass
class LearningCurve:
    metric: str
    direction: str
    points: list[CurvePoint]
    fit: dict[str, float] | None  # a, b, c of value = a + b * n^-c (None: the fit failed)
    full_rows: int
    doubling_gain: float | None  # predicted value at 2x the rows minus at 1x (signed: + is better)
    folder: Path
    notes: list[str] = field(default_factory=list)

    def means(self) -> list[tuple[float, int, float]]:
        by: dict[float, list[CurvePoint]] = {}
        for p in self.points:
            by.setdefault(p.fraction, []).append(p)
        return [(f, ps[0].rows, float(np.mean([p.value for p in ps]))) for f, ps in sorted(by.items())]


def subset(workspace: Workspace, dataset: DatasetVersion, fraction: float, seed: int) -> DatasetVersion:
    """`dataset` with a seeded share of its train rows (whole groups stay whole), val and test unchanged."""
    import hashlib

    from tunesmith.data.versions import find_derived, store_derived

    train = load_split(dataset, "train")
    if fraction >= 1:
        return dataset
    units: dict[str, list[dict[str, Any]]] = {}
    for index, row in enumerate(train):
        units.setdefault(str(row.get("group", f"row{index}")), []).append(row)
    keys = sorted(units)
    random.Random(seed).shuffle(keys)
    target = max(1, round(len(train) * fraction))
    picked: list[dict[str, Any]] = []
    for key in keys:
        if len(picked) >= target:
            break
        picked += units[key]
    digest = hashlib.sha256(f"{dataset.content_hash}:curve:{fraction}:{seed}".encode()).hexdigest()
    existing = find_derived(workspace, digest)
    if existing is not None:
        return existing
    splits = {"train": picked, "val": load_split(dataset, "val"), "test": load_split(dataset, "test")}
    meta = {
        **{k: v for k, v in dataset.meta.items() if k != "lineage"},
        "lineage": {"source": "learning-curve", "parent": dataset.id, "fraction": fraction, "seed": seed},
    }
    return store_derived(
        workspace,
        digest,
        splits,
        name=f"{dataset.name}-{round(fraction * 100)}pct",
        source=dataset.id,
        format=dataset.format,
        meta=meta,
    )


def test_value(config: ProjectConfig, result: Any, dataset: DatasetVersion, metric: str) -> float:
    """The run's `metric` on the test split: the trainer's own test scores, the answer loss, or eval."""
    for key in (f"test_{metric}", f"test_{metric.removeprefix('eval_')}"):
        if key in result.metrics:
            return float(result.metrics[key])
    items = load_split(dataset, "test")
    if metric in ("eval_loss", "loss"):
        from tunesmith.train.forgetting import answer_loss

        return answer_loss(result.model, result.tokenizer, items)
    from tunesmith.evaluate import evaluate_model

    scored = evaluate_model(
        result.model, result.tokenizer, items, config.eval.model_copy(update={"metrics": [metric]}), "curve"
    )
    return float(scored.means[metric])


def fit_power_law(rows: list[int], values: list[float], direction: str) -> dict[str, float] | None:
    """a, b, c of value = a + b * n^-c (b > 0 for a falling loss, b < 0 for a rising score)."""
    from scipy.optimize import OptimizeWarning, curve_fit

    n, y = np.asarray(rows, dtype=float), np.asarray(values, dtype=float)
    if len(set(rows)) < 3:
        return None
    sign = 1.0 if direction == "minimize" else -1.0

    def law(x: np.ndarray, a: float, b: float, c: float) -> np.ndarray:
        return a + sign * b * np.power(x, -c)

    start = (float(y[-1]), abs(float(y[0] - y[-1])) * float(n[0]) ** 0.5 + 1e-6, 0.5)
    try:
        with warnings.catch_warnings():  # three or four points leave the covariance unknown: expected
            warnings.simplefilter("ignore", OptimizeWarning)
            params, _ = curve_fit(
                law, n, y, p0=start, bounds=([-np.inf, 0, 0], [np.inf, np.inf, 3]), maxfev=20000
            )
    except (RuntimeError, ValueError):
        return None
    a, b, c = (float(v) for v in params)
    return {"a": a, "b": sign * b, "c": c}


def predict(fit: dict[str, float], rows: float) -> float:
    return fit["a"] + fit["b"] * rows ** -fit["c"]


def learning_curve(config: ProjectConfig, workspace: Workspace) -> LearningCurve:
    """Train on each share of the train split (`sweep.learning_curve`), score on test, fit, plot."""
    from tunesmith.data import prepare_data
    from tunesmith.train.recipe import plan_run
    from tunesmith.train.run import load_base, run_objective

    settings = config.sweep.learning_curve
    metric, direction = config.sweep.objective, direction_of(config)
    dataset = prepare_data(config, workspace)
    config = plan_run(config, dataset, announce=True)
    if not dataset.counts.get("test"):
        raise SweepError(f"dataset {dataset.id} has no test rows to score the curve on (data.split.test)")
    stamp = f"{datetime.now(UTC):%Y%m%d-%H%M%S}"
    folder = workspace.root / "sweeps" / f"curve-{dataset.id}-{stamp}"
    points = []
    for fraction in settings.fractions:
        for seed in range(settings.seeds if fraction < 1 else 1):
            part = subset(workspace, dataset, fraction, seed)
            console.rule(f"[bold]{fraction:.0%} of the train rows[/bold] ({part.counts['train']} rows)")
            base = load_base(config, part, workspace)
            result = run_objective(config, workspace, part, base, kind="curve")
            value = test_value(config, result, part, metric)
            points.append(CurvePoint(fraction, part.counts["train"], seed, value, result.run_id))
            console.print(f"test {metric}: {value:.4f}")
    curve = LearningCurve(metric, direction, points, None, dataset.counts["train"], None, folder)
    means = curve.means()
    curve.fit = fit_power_law([r for _, r, _ in means], [v for _, _, v in means], direction)
    if curve.fit is not None:
        now, doubled = predict(curve.fit, curve.full_rows), predict(curve.fit, 2 * curve.full_rows)
        curve.doubling_gain = (doubled - now) if direction == "maximize" else (now - doubled)
    else:
        curve.notes.append("the power law did not fit these points; read the measured values")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "curve.json").write_text(json.dumps(_as_json(curve), indent=2), encoding="utf-8")
    plot_curve(curve, folder / "learning_curve.png")
    return curve


def _as_json(curve: LearningCurve) -> dict[str, Any]:
    return {
        "metric": curve.metric,
        "direction": curve.direction,
        "points": [vars(p) for p in curve.points],
        "fit": curve.fit,
        "full_rows": curve.full_rows,
        "doubling_gain": curve.doubling_gain,
        "notes": curve.notes,
    }


def plot_curve(curve: LearningCurve, path: Path) -> None:
    from tunesmith.plots import pyplot

    plt = pyplot()
    from matplotlib import ticker

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    ax.scatter([p.rows for p in curve.points], [p.value for p in curve.points], label="measured", zorder=3)
    if curve.fit is not None:
        xs = np.geomspace(min(p.rows for p in curve.points), 2 * curve.full_rows, 100)
        ax.plot(xs, [predict(curve.fit, x) for x in xs], label="power-law fit")
        ax.axvline(curve.full_rows, color="grey", linestyle=":", linewidth=1)
        gain = curve.doubling_gain or 0.0
        ax.annotate(
            f"2x data: {gain:+.3f}",
            (2 * curve.full_rows, predict(curve.fit, 2 * curve.full_rows)),
            ha="right",
            va="bottom",
        )
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(ticker.ScalarFormatter())
    ax.xaxis.set_minor_formatter(ticker.NullFormatter())
    ax.set_xlabel("train rows")
    ax.set_ylabel(f"test {curve.metric}")
    ax.set_title("Learning curve")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
