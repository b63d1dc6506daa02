"""Chart.js specs (plain JSON) and the tables behind them, built from the store's records."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from tunesmith.monitor.report import panels

PALETTE = ["#2563eb", "#dc2626", "#16a34a", "#d97706", "#7c3aed", "#0891b2", "#db2777", "#4b5563"]
SPLITS = ("train", "val", "test")


def _color(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


def _axis_title(text: str) -> dict[str, Any]:
    return {"display": True, "text": text}


def dataset_charts(folder: Path, report: dict[str, Any]) -> dict[str, Any]:
    """Rows per split (and per label), and a histogram of token lengths per split (from `_tokens`)."""
    import pyarrow.parquet as pq

    found: dict[str, Any] = {}
    counts = report.get("counts", {})
    splits = [s for s in SPLITS if counts.get(s)]
    if splits:
        found["splits"] = {
            "type": "bar",
            "data": {
                "labels": splits,
                "datasets": [
                    {"label": "rows", "data": [counts[s] for s in splits], "backgroundColor": PALETTE[0]}
                ],
            },
            "options": {"plugins": {"legend": {"display": False}}},
        }
    stats = report.get("stats", {}).get("splits", {})
    labels = sorted({label for s in stats.values() for label in s.get("labels", {})})
    if labels:
        found["labels"] = {
            "type": "bar",
            "data": {
                "labels": labels,
                "datasets": [
                    {
                        "label": s,
                        "data": [stats[s]["labels"].get(lb, 0) for lb in labels],
                        "backgroundColor": _color(i),
                    }
                    for i, s in enumerate(x for x in SPLITS if x in stats)
                ],
            },
        }
    lengths = {}
    for split in splits:
        path = folder / f"{split}.parquet"
        if path.exists() and "_tokens" in pq.read_schema(path).names:
            values = pq.read_table(path, columns=["_tokens"]).column("_tokens").to_numpy(zero_copy_only=False)
            lengths[split] = values[~np.isnan(values.astype(float))].astype(float)
    if lengths:
        present = [v for v in lengths.values() if len(v)]
        low = min((float(v.min()) for v in present), default=0.0)
        high = max((float(v.max()) for v in present), default=1.0)
        edges = np.linspace(np.floor(low), max(np.ceil(high), np.floor(low) + 1.0), 21)
        found["lengths"] = {
            "type": "bar",
            "data": {
                "labels": [f"{edges[i]:.0f}–{edges[i + 1]:.0f}" for i in range(len(edges) - 1)],
                "datasets": [
                    {
                        "label": split,
                        "data": np.histogram(values, bins=edges)[0].tolist(),
                        "backgroundColor": _color(i),
                    }
                    for i, (split, values) in enumerate(lengths.items())
                ],
            },
            "options": {
                "scales": {"x": {"title": _axis_title("tokens per row")}, "y": {"title": _axis_title("rows")}}
            },
        }
    return found


LIVE_SERIES = {"loss": "loss", "eval_loss": "loss", "tokens_per_second": "throughput"}


def run_charts(metrics: list[dict[str, Any]]) -> dict[str, Any]:
    """Loss (train and validation) and tokens/s against the step; the page adds points as they come."""
    by_name: dict[str, list[dict[str, float]]] = {}
    for point in metrics:
        if point["name"] in LIVE_SERIES:
            by_name.setdefault(point["name"], []).append({"x": point["step"], "y": point["value"]})

    def chart(names: list[str], y_title: str) -> dict[str, Any]:
        return {
            "type": "line",
            "data": {
                "datasets": [
                    {
                        "label": name,
                        "data": by_name.get(name, []),
                        "borderColor": _color(i),
                        "backgroundColor": _color(i),
                        "pointRadius": 2,
                        "tension": 0.1,
                    }
                    for i, name in enumerate(names)
                ]
            },
            "options": {
                "animation": False,
                "scales": {
                    "x": {"type": "linear", "title": _axis_title("step")},
                    "y": {"title": _axis_title(y_title)},
                },
            },
        }

    return {
        "loss": chart(["loss", "eval_loss"], "loss"),
        "throughput": chart(["tokens_per_second"], "tokens/s"),
    }


def latest_values(metrics: list[dict[str, Any]]) -> dict[str, float]:
    latest: dict[str, float] = {}
    for point in metrics:
        latest[point["name"]] = point["value"]
        latest["step"] = max(latest.get("step", 0), point["step"])
    return latest


def eval_chart(report: dict[str, Any]) -> dict[str, Any] | None:
    """Each metric's interval per system, as floating bars (low to high)."""
    systems = report.get("systems", [])
    metrics = [m["name"] for m in report.get("metrics", []) if any(m["name"] in s["scores"] for s in systems)]
    if not systems or not metrics:
        return None
    return {
        "type": "bar",
        "data": {
            "labels": metrics,
            "datasets": [
                {
                    "label": system["label"],
                    "data": [
                        [system["scores"][m]["low"], system["scores"][m]["high"]]
                        if m in system["scores"]
                        else None
                        for m in metrics
                    ],
                    "backgroundColor": _color(i),
                }
                for i, system in enumerate(systems)
            ],
        },
        "options": {"plugins": {"title": {"display": True, "text": "interval per metric (low – high)"}}},
    }


def item_diffs(
    report: dict[str, Any],
    candidate: str | None,
    against: str | None,
    metric: str | None,
    show: str,
    text: str,
) -> list[dict[str, Any]]:
    """The report's items with the candidate's and the other system's answers and scores, filtered.

    `show`: all, changed (the answers differ), better / worse / same (on `metric`).
    """
    rows = []
    for item in report.get("per_item", []):
        outputs = item.get("outputs", {})
        scores = item.get("scores", {})
        mine = scores.get(candidate, {}).get(metric) if metric else None
        theirs = scores.get(against, {}).get(metric) if metric else None
        delta = mine - theirs if isinstance(mine, int | float) and isinstance(theirs, int | float) else None
        entry = {
            "index": item.get("index"),
            "prompt": str(item.get("prompt", "")),
            "reference": str(item.get("reference", "")),
            "candidate": str(outputs.get(candidate, "")),
            "against": str(outputs.get(against, "")),
            "mine": mine,
            "theirs": theirs,
            "delta": delta,
        }
        if show == "changed" and entry["candidate"] == entry["against"]:
            continue
        if show in ("better", "worse", "same") and (
            delta is None or {"better": delta <= 0, "worse": delta >= 0, "same": delta != 0}[show]
        ):
            continue
        if text and not any(
            text in entry[k].lower() for k in ("prompt", "reference", "candidate", "against")
        ):
            continue
        rows.append(entry)
    return rows


def monitor_charts(data: dict[str, Any]) -> dict[str, Any]:
    """Per version over time, one chart per panel of the monitoring report (`monitor.report.panels`)."""
    series, edges = data["series"], data["edges"]
    buckets = len(edges) - 1
    labels = [edges[i].strftime("%m-%d %H:%M") for i in range(buckets)]
    found = {}
    for title, (key, reduce) in panels(series).items():
        datasets = []
        for i, (version, values) in enumerate(sorted(series.items())):
            if key not in values:
                continue
            points = [reduce(values[key][b]) if values[key].get(b) else None for b in range(buckets)]
            datasets.append(
                {
                    "label": version,
                    "data": points,
                    "borderColor": _color(i),
                    "backgroundColor": _color(i),
                    "spanGaps": True,
                    "pointRadius": 2,
                }
            )
        found[title] = {
            "type": "line",
            "data": {"labels": labels, "datasets": datasets},
            "options": {"animation": False, "plugins": {"title": {"display": True, "text": title}}},
        }
    return found
