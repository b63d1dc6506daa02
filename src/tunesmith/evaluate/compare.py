"""Scoring models on the same items and comparing them side by side."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.table import Table

from tunesmith.config import EvalConfig
from tunesmith.evaluate.metrics import DEFAULT_METRICS, mean_scores, score_items
from tunesmith.models.generate import generate_answers


@dataclass
class EvalResult:
    """One model's answers and scores on a list of items."""

    label: str
    answers: list[str]
    scores: list[dict[str, float]]
    means: dict[str, float]


def evaluate_model(
    model: Any, tokenizer: Any, items: list[dict[str, Any]], config: EvalConfig, label: str
) -> EvalResult:
    """Generate answers for `items` and score them with `config.metrics`."""
    answers = generate_answers(
        model,
        tokenizer,
        items,
        max_new_tokens=config.max_new_tokens,
        batch_size=config.batch_size,
        label=f"Asking {label}",
    )
    scores = score_items(answers, items, config.metrics or DEFAULT_METRICS["generation"])
    return EvalResult(label=label, answers=answers, scores=scores, means=mean_scores(scores))


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
                "question": item["messages"][-2]["content"],
                "reference": item["messages"][-1]["content"],
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
