"""Scoring systems on identical items, one way everywhere: each metric from its summed per-item
statistics (so corpus BLEU is corpus BLEU in a report, a gate, a sweep and quickstart), with
bootstrap intervals, paired tests, verdicts, slices, and the side-by-side table and chart."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np
from rich.table import Table

from tunesmith.chat import asked
from tunesmith.config import EvalConfig
from tunesmith.evaluate.metrics import Context, Metric, get_metric
from tunesmith.evaluate.stats import Interval, bootstrap_interval, paired_test
from tunesmith.toolcalls import written_answer

GAP_MIN_ITEMS = 5


@dataclass
class SystemResult:
    """One system's outputs on the items and every metric with its bootstrap interval."""

    label: str
    ref: str  # what the user named: base, an alias, a version name, `base+3shot`
    version_id: str | None
    outputs: list[Any]
    stats: dict[str, np.ndarray] = field(default_factory=dict)
    scores: dict[str, Interval] = field(default_factory=dict)

    def item_scores(self, metric: Metric, index: int) -> float:
        return metric.score(self.stats[metric.name][index])

    def summary(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "ref": self.ref,
            "version_id": self.version_id,
            "scores": {name: interval.as_dict() for name, interval in self.scores.items()},
        }


def score_system(
    result: SystemResult,
    references: list[Any],
    items: list[dict[str, Any]],
    metrics: list[str],
    *,
    context: Context | None = None,
    nll: list[tuple[float, int]] | None = None,
    resamples: int = 1000,
    seed: int = 0,
) -> SystemResult:
    """Fill in `result.stats` and `result.scores` for `metrics` (perplexity reads `nll`)."""
    for name in metrics:
        metric = get_metric(name)
        if metric.kind == "lm":
            if nll is None:
                continue  # a system with no likelihoods (the majority class) has no perplexity
            _, stats = metric.compute(nll, references, items, context)
        else:
            _, stats = metric.compute(result.outputs, references, items, context)
        result.stats[name] = stats
        result.scores[name] = bootstrap_interval(stats, metric.score, resamples=resamples, seed=seed)
    return result


def pairwise(
    systems: list[SystemResult],
    metrics: list[str],
    *,
    resamples: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> list[dict[str, Any]]:
    """A paired test for each pair of systems on each metric both have: B compared with A."""
    rows = []
    for a, b in combinations(systems, 2):
        for name in metrics:
            if name not in a.stats or name not in b.stats:
                continue
            metric = get_metric(name)
            test = paired_test(
                a.stats[name],
                b.stats[name],
                metric.score,
                higher_is_better=metric.higher_is_better,
                resamples=resamples,
                seed=seed,
                alpha=alpha,
            )
            rows.append({"a": a.label, "b": b.label, "metric": name, **test.as_dict()})
    return rows


def verdict_lines(comparisons: list[dict[str, Any]], candidate: str) -> list[str]:
    """One sentence per metric and opponent: how the candidate stands against it."""
    lines = []
    for row in comparisons:
        if candidate not in (row["a"], row["b"]):
            continue
        flip = row["a"] == candidate  # the test is b vs a; say it from the candidate's side
        other = row["b"] if flip else row["a"]
        verdict = row["verdict"]
        if flip and verdict != "no significant difference":
            verdict = "worse" if verdict == "better" else "better"
        delta = -row["delta"]["value"] if flip else row["delta"]["value"]
        lines.append(
            f"{row['metric']}: {candidate} is {verdict} than {other}"
            if verdict != "no significant difference"
            else f"{row['metric']}: no significant difference between {candidate} and {other}"
        )
        lines[-1] += f" (Δ {delta:+.4g}, p={row['p_value']:.3f})"
    return lines


def slice_scores(
    systems: list[SystemResult],
    items: list[dict[str, Any]],
    column: str,
    metrics: list[str],
    *,
    resamples: int = 1000,
    seed: int = 0,
    min_items: int = 1,
) -> dict[str, Any]:
    """Each metric per value of `column` for each system, and the largest gap between slices.

    Items without the column are the `(missing)` slice. A slice's interval comes from resampling
    its own items.
    """
    groups: dict[str, list[int]] = {}
    for i, item in enumerate(items):
        groups.setdefault(str(item.get(column, "(missing)")), []).append(i)
    slices = {}
    for value, index in sorted(groups.items()):
        if len(index) < min_items:
            continue
        rows: dict[str, Any] = {"items": len(index), "systems": {}}
        for system in systems:
            rows["systems"][system.label] = {
                name: bootstrap_interval(
                    system.stats[name][index], get_metric(name).score, resamples=resamples, seed=seed
                ).as_dict()
                for name in metrics
                if name in system.stats
            }
        slices[value] = rows
    # Gaps compare slices large enough to mean something (5 items), when there are such slices.
    sizeable = [v for v, rows in slices.items() if rows["items"] >= GAP_MIN_ITEMS] or list(slices)
    gaps: dict[str, dict[str, Any]] = {}
    for system in systems:
        for name in metrics:
            values = {
                v: slices[v]["systems"][system.label][name]["value"]
                for v in sizeable
                if name in slices[v]["systems"][system.label]
            }
            if len(values) < 2:
                continue
            best, worst = max(values, key=values.__getitem__), min(values, key=values.__getitem__)
            gaps.setdefault(system.label, {})[name] = {
                "gap": values[best] - values[worst],
                "highest": best,
                "lowest": worst,
                "slices_compared": len(values),
            }
    return {"column": column, "slices": slices, "gaps": gaps}


@dataclass
class EvalResult:
    """One model's answers on a list of items, each item's scores, and each metric over all items
    (`means`: a corpus metric such as BLEU from its summed statistics, as every report computes it)."""

    label: str
    answers: list[str]
    scores: list[dict[str, float]]
    means: dict[str, float]
    intervals: dict[str, Interval] = field(default_factory=dict)


def evaluate_model(
    model: Any, tokenizer: Any, items: list[dict[str, Any]], config: EvalConfig, label: str
) -> EvalResult:
    """Generate answers for `items` and score them with `config.metrics`, as `tunesmith eval` does."""
    from tunesmith.evaluate.defaults import default_metrics
    from tunesmith.models.generate import generate_answers

    answers = generate_answers(
        model,
        tokenizer,
        items,
        max_new_tokens=config.max_new_tokens,
        batch_size=config.batch_size,
        label=f"Asking {label}",
    )
    names = config.metrics or default_metrics("generation", items).metrics
    references = [written_answer(item["messages"][-1]) for item in items]
    system = score_system(
        SystemResult(label, label, None, answers),
        references,
        items,
        names,
        resamples=config.bootstrap_resamples,
        seed=config.seed,
    )
    metrics = [get_metric(name) for name in system.scores]
    scores = [{m.name: system.item_scores(m, i) for m in metrics} for i in range(len(answers))]
    means = {name: interval.value for name, interval in system.scores.items()}
    return EvalResult(label, answers, scores, means, dict(system.scores))


def comparison_table(results: list[EvalResult], title: str) -> Table:
    """Metrics of several models on the same items, with the change from the first."""
    table = Table(title=title)
    table.add_column("metric")
    for result in results:
        table.add_column(result.label, justify="right")
    if len(results) > 1:
        table.add_column("change", justify="right")
    for metric in results[0].means:
        cells = [f"{r.means[metric]:.3f}" for r in results]
        if len(results) > 1:
            delta = results[-1].means[metric] - results[0].means[metric]
            colour = "green" if delta > 0 else "red" if delta < 0 else "white"
            cells.append(f"[{colour}]{delta:+.3f}[/{colour}]")
        table.add_row(metric, *cells)
    return table


def write_answers(path: Path, items: list[dict[str, Any]], results: list[EvalResult]) -> None:
    """Write one JSON line per item: question, reference, and every model's answer and scores."""
    with path.open("w", encoding="utf-8") as handle:
        for i, item in enumerate(items):
            row = {
                "question": asked(item["messages"]),
                "reference": written_answer(item["messages"][-1]),
                **{r.label: {"answer": r.answers[i], "scores": r.scores[i]} for r in results},
            }
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def plot_comparison(results: list[EvalResult], path: Path, title: str) -> None:
    """A grouped bar chart of each metric per model."""
    from tunesmith.plots import pyplot

    plt = pyplot()

    metrics = list(results[0].means)
    width = 0.8 / len(results)
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=110)
    for index, result in enumerate(results):
        xs = [m + index * width for m in range(len(metrics))]
        bars = ax.bar(xs, [result.means[m] for m in metrics], width, label=result.label)
        ax.bar_label(bars, fmt="%.2f", fontsize=8)
    ax.set_xticks([m + width * (len(results) - 1) / 2 for m in range(len(metrics))], metrics)
    ax.set_ylim(0, 1.1)
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
