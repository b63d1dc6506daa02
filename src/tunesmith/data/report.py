"""The dataset report as one self-contained HTML page with plots (no external files or scripts)."""

from __future__ import annotations

import html
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunesmith.data.formats import describe_columns
from tunesmith.plots import png_base64

if TYPE_CHECKING:
    from tunesmith.data.prepare import Prepared


def _img(fig: Any) -> str:
    return f'<img alt="" src="data:image/png;base64,{png_base64(fig)}">'


def _plots(report: dict[str, Any], prepared: Prepared) -> list[str]:
    from tunesmith.plots import pyplot

    plt = pyplot()

    from tunesmith.data.split import SPLITS

    images = []
    lengths = {s: [i.tokens for i in prepared.split_items(s) if i.tokens is not None] for s in SPLITS}
    if any(lengths.values()):
        fig, ax = plt.subplots(figsize=(7, 3.2))
        for split, values in lengths.items():
            if values:
                ax.hist(values, bins=40, alpha=0.6, label=f"{split} ({len(values)})")
        truncate_at = report["stats"].get("truncate_at")
        longest = max(max(v) for v in lengths.values() if v)
        title = "Length in the model's tokens"
        if truncate_at and truncate_at <= 1.2 * longest:
            ax.axvline(truncate_at, color="red", linestyle="--", label=f"train.max_length {truncate_at}")
        elif truncate_at:
            title += f" (all under train.max_length {truncate_at})"
        ax.set_xlabel("tokens per row")
        ax.set_ylabel("rows")
        ax.set_title(title)
        ax.legend()
        images.append(_img(fig))
    splits = report["stats"]["splits"]
    if prepared.kind == "classification":
        labels = sorted({label for entry in splits.values() for label in entry.get("labels", {})})
        fig, ax = plt.subplots(figsize=(7, 0.25 * len(labels) + 1.5))
        width = 0.8 / 3
        for index, split in enumerate(SPLITS):
            total = max(1, splits[split]["rows"])
            shares = [splits[split].get("labels", {}).get(label, 0) / total for label in labels]
            ax.barh([y + index * width for y in range(len(labels))], shares, width, label=split)
        ax.set_yticks([y + width for y in range(len(labels))], labels, fontsize=7)
        ax.set_xlabel("share of the split's rows")
        ax.set_title("Label distribution per split")
        ax.legend()
        images.append(_img(fig))
    removed = [(step["name"], step["removed"]) for step in report["steps"] if step["removed"]]
    if removed:
        fig, ax = plt.subplots(figsize=(7, 0.35 * len(removed) + 1.2))
        ax.barh([name for name, _ in removed], [n for _, n in removed], color="tab:red")
        for y, (_, n) in enumerate(removed):
            ax.text(n, y, f" {n}", va="center")
        ax.set_xlabel("rows removed")
        ax.set_title("What each step removed")
        images.append(_img(fig))
    return images


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def write_html_report(report: dict[str, Any], prepared: Prepared, path: Path) -> None:
    """Write the report: counts, detection, every step, rejections by reason, stats and plots."""
    detection = report["detection"]
    steps = [
        [
            s["name"],
            s["changed"],
            s["removed"],
            ", ".join(f"{k}: {v}" for k, v in s["details"].items() if k not in ("clusters", "twins")),
        ]
        for s in report["steps"]
    ]
    splits = report["stats"]["splits"]
    token_rows = [
        [
            split,
            e["rows"],
            *(e.get("tokens", {}).get(k, "") for k in ("p50", "p90", "p99", "max", "total", "truncated")),
        ]
        for split, e in splits.items()
    ]
    samples = [[r.location, r.step, r.reason] for r in prepared.rejected[:50]]
    parts = [
        f"<h1>Dataset {html.escape(report['id'])}</h1>",
        f"<p>Source <code>{html.escape(str(report['source']))}</code>, kind <b>{report['kind']}</b>"
        + (
            f", detected format <b>{detection['format']}</b> ({100 * detection['confidence']:.0f}% of "
            f"{detection['sampled']} sampled rows"
            + (f"; {html.escape(describe_columns(detection['columns']))}" if detection.get("columns") else "")
            + ")"
            if detection
            else ""
        )
        + "</p>",
        _table(["split", "rows"], [[k, v] for k, v in report["counts"].items()]),
        "<h2>Steps</h2>",
        _table(["step", "changed", "removed", "details"], steps),
        "<h2>Tokens</h2>",
        _table(["split", "rows", "p50", "p90", "p99", "max", "total", "truncated"], token_rows),
        *("<p>" + html.escape(note) + "</p>" for note in report["notes"]),
        "<h2>Plots</h2>",
        *_plots(report, prepared),
        "<h2>Rejected rows by reason</h2>",
        _table(["reason", "rows"], [[k, v] for k, v in report["rejected_by_reason"].items()]),
        "<h2>First rejected rows</h2>",
        _table(["where", "step", "reason"], samples),
    ]
    style = (
        "body{font-family:system-ui,sans-serif;max-width:960px;margin:2em auto;color:#222}"
        "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 8px;"
        "font-size:13px;text-align:left}img{max-width:100%}"
    )
    path.write_text(
        f"<!doctype html><meta charset=utf-8><title>{html.escape(report['id'])}</title>"
        f"<style>{style}</style>{''.join(parts)}",
        encoding="utf-8",
    )
