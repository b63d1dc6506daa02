"""The self-contained HTML eval report: tables, verdicts, gates and plots inlined as PNG."""

from __future__ import annotations

from typing import Any

from jinja2 import Environment, PackageLoader

from tunesmith.plots import png_base64, pyplot

PER_ITEM_ROWS = 300  # the full per-item table is in answers.jsonl


def metric_bars(report: dict[str, Any]) -> str:
    """One panel per metric: each system's score with its 95% interval."""
    plt = pyplot()
    metrics = [m["name"] for m in report["metrics"]]
    columns = min(4, len(metrics))
    rows = -(-len(metrics) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 2.6 * rows), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, name in zip(axes.flat, metrics, strict=False):
        labels, values, low, high = [], [], [], []
        for system in report["systems"]:
            if name in system["scores"]:
                score = system["scores"][name]
                labels.append(system["label"])
                values.append(score["value"])
                low.append(max(0.0, score["value"] - score["low"]))
                high.append(max(0.0, score["high"] - score["value"]))
        ax.bar(range(len(values)), values, yerr=[low, high], capsize=3, color=colours[: len(values)])
        ax.set_xticks(range(len(values)), labels, rotation=20, ha="right", fontsize=7)
        ax.set_title(name, fontsize=9)
        ax.tick_params(axis="y", labelsize=7)
    for ax in list(axes.flat)[len(metrics) :]:
        ax.axis("off")
    return png_base64(fig)


def confusion_plot(labels: list[str], matrix: list[list[int]], title: str) -> str:
    plt = pyplot()
    size = min(12.0, 2.5 + 0.35 * len(labels))
    fig, ax = plt.subplots(figsize=(size, size * 0.85))
    image = ax.imshow(matrix, cmap="Blues")
    fig.colorbar(image, ax=ax, fraction=0.046)
    if len(labels) <= 30:
        ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=7)
        ax.set_yticks(range(len(labels)), labels, fontsize=7)
        if len(labels) <= 12:
            for i, row in enumerate(matrix):
                for j, count in enumerate(row):
                    ax.text(j, i, str(count), ha="center", va="center", fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    return png_base64(fig)


def slice_plot(slices: dict[str, Any], metric: str) -> str:
    """A metric per slice value, one bar per system, with intervals."""
    plt = pyplot()
    # the 20 largest slices, widest first: a plot of hundreds of one-item slices says nothing
    values = sorted(slices["slices"], key=lambda v: -slices["slices"][v]["items"])[:20]
    systems = list(next(iter(slices["slices"].values()))["systems"]) if values else []
    width = 0.8 / max(1, len(systems))
    fig, ax = plt.subplots(figsize=(min(14.0, max(5.0, 0.45 * len(values) * max(1, len(systems)))), 3.4))
    for k, system in enumerate(systems):
        scores = [slices["slices"][v]["systems"][system].get(metric) for v in values]
        ys = [s["value"] if s else 0 for s in scores]
        err = [
            [max(0.0, s["value"] - s["low"]) if s else 0 for s in scores],
            [max(0.0, s["high"] - s["value"]) if s else 0 for s in scores],
        ]
        ax.bar([i + k * width for i in range(len(values))], ys, width, yerr=err, capsize=2, label=system)
    ax.set_xticks(
        [i + width * (len(systems) - 1) / 2 for i in range(len(values))],
        [f"{v} ({slices['slices'][v]['items']})" for v in values],
        rotation=30,
        ha="right",
        fontsize=7,
    )
    ax.set_title(f"{metric} by {slices['column']}", fontsize=9)
    ax.legend(fontsize=7)
    return png_base64(fig)


def length_plot(lengths: dict[str, Any]) -> str:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3))
    top = max(max(v["values"] or [0]) for v in lengths.values()) + 1
    bins = list(range(0, top + 2, max(1, top // 30)))
    for label, stats in lengths.items():
        ax.hist(stats["values"], bins=bins, histtype="step", linewidth=1.5, label=label)
    ax.set_xlabel("words")
    ax.set_ylabel("items")
    ax.set_title("answer lengths", fontsize=9)
    ax.legend(fontsize=7)
    return png_base64(fig)


def best_and_worst(report: dict[str, Any], count: int = 5) -> tuple[list[dict], list[dict], str, str]:
    """Items where the candidate gained or lost most against the first other system, on the first metric."""
    systems = [s["label"] for s in report["systems"]]
    if len(systems) < 2 or not report["metrics"]:
        return [], [], "", ""
    candidate, other = systems[-1], systems[0]
    metric = report["metrics"][0]["name"]
    sign = 1 if report["metrics"][0]["higher_is_better"] else -1
    scored = [
        (sign * (row["scores"][candidate].get(metric, 0) - row["scores"][other].get(metric, 0)), row)
        for row in report["per_item"]
        if metric in row["scores"].get(candidate, {}) and metric in row["scores"].get(other, {})
    ]
    scored.sort(key=lambda pair: pair[0])
    worst = [row for delta, row in scored[:count] if delta < 0]
    best = [row for delta, row in reversed(scored[-count:]) if delta > 0]
    return best, worst, metric, other


def render_html(report: dict[str, Any]) -> str:
    plots: dict[str, Any] = {"bars": metric_bars(report), "slices": [], "confusion": {}}
    for slices in report["slices"]:
        metric = report["metrics"][0]["name"]
        plots["slices"].append(slice_plot(slices, metric))
    if report.get("classification"):
        details = report["classification"]
        for label, system in details["systems"].items():
            plots["confusion"][label] = confusion_plot(details["labels"], system["confusion_matrix"], label)
    if report.get("lengths"):
        plots["lengths"] = length_plot(report["lengths"])
    best, worst, metric, other = best_and_worst(report)
    environment = Environment(loader=PackageLoader("tunesmith", "evaluate"), autoescape=True)
    return environment.get_template("report.html.j2").render(
        r=report, plots=plots, best=best, worst=worst, metric=metric, other=other, limit=PER_ITEM_ROWS
    )
