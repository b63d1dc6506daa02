"""`tunesmith monitor report`: a self-contained HTML page of how each served version is doing over time.

Per version and time bucket: traffic, errors, latency (p50/p95) and time to first token, the mean
of every online score, feedback and its negative share; per version: a summary row and, on
request, drift against its training data; and the alerts that fired in the period.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from jinja2 import Environment, PackageLoader
from sqlalchemy import select

from tunesmith.config import MonitorConfig
from tunesmith.errors import InputError
from tunesmith.monitor.alerts import recent_alerts
from tunesmith.monitor.feedback import is_negative
from tunesmith.plots import png_base64, pyplot
from tunesmith.registry.versions import version_names
from tunesmith.store import Feedback, ModelVersion, RequestLog, RequestScore, session
from tunesmith.workspace import Workspace

BUCKETS = 40  # points per time series


def parse_since(text: str) -> timedelta:
    """`30m`, `24h`, `7d` as a duration."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([mhd])", text.strip())
    if match is None:
        raise InputError(f"--since {text!r}: use a number and m, h or d, e.g. 24h")
    value, unit = float(match.group(1)), match.group(2)
    return (
        timedelta(minutes=value)
        if unit == "m"
        else timedelta(hours=value)
        if unit == "h"
        else timedelta(days=value)
    )


def _aware(at: datetime) -> datetime:
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


def collect(workspace: Workspace, since: datetime, now: datetime) -> dict[str, Any]:
    """Everything the page shows, as plain data."""
    with session(workspace.engine) as s:
        logs = s.execute(
            select(
                RequestLog.version_id,
                RequestLog.at,
                RequestLog.status,
                RequestLog.latency_ms,
                RequestLog.ttft_ms,
            ).where(RequestLog.at >= since, RequestLog.route != "shadow")
        ).all()
        scores = s.execute(
            select(RequestScore.version_id, RequestScore.at, RequestScore.name, RequestScore.value).where(
                RequestScore.at >= since
            )
        ).all()
        feedback = s.execute(
            select(Feedback.version_id, Feedback.at, Feedback.rating, Feedback.scale).where(
                Feedback.at >= since
            )
        ).all()
    names = version_names(workspace)
    width = max((now - since) / BUCKETS, timedelta(minutes=1))
    edges = [since + width * i for i in range(BUCKETS + 1)]

    def bucket(at: datetime) -> int:
        return min(BUCKETS - 1, max(0, int((_aware(at) - since) / width)))

    series: dict[str, dict[str, Any]] = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    summary: dict[str, dict[str, Any]] = defaultdict(lambda: defaultdict(list))
    for version_id, at, status, latency, ttft in logs:
        name = names.get(version_id or "", "(refused)")
        b = bucket(at)
        series[name]["requests"][b].append(1)
        series[name]["errors"][b].append(float(status >= 500))
        summary[name]["status"].append(status)
        if status == 200 and latency is not None:
            series[name]["latency"][b].append(latency)
            summary[name]["latency"].append(latency)
        if ttft is not None:
            summary[name]["ttft"].append(ttft)
    for version_id, at, score_name, value in scores:
        name = names.get(version_id or "", "?")
        series[name][f"score:{score_name}"][bucket(at)].append(value)
        summary[name][f"score:{score_name}"].append(value)
    for version_id, at, rating, scale in feedback:
        name = names.get(version_id or "", "?")
        negative = is_negative(rating, scale)
        series[name]["feedback"][bucket(at)].append(float(negative))
        summary[name]["feedback"].append(float(negative) if rating is not None else np.nan)
    return {"edges": edges, "series": series, "summary": summary}


def summary_rows(summary: dict[str, dict[str, Any]]) -> tuple[list[str], list[dict[str, Any]]]:
    score_names = sorted({k for v in summary.values() for k in v if k.startswith("score:")})
    rows = []
    for name, data in sorted(summary.items()):
        status = data.get("status", [])
        latency = data.get("latency", [])
        rated = [v for v in data.get("feedback", []) if not np.isnan(v)]
        rows.append(
            {
                "version": name,
                "requests": len(status),
                "error_rate": (sum(1 for s in status if s >= 500) / len(status)) if status else None,
                "refused": sum(1 for s in status if 400 <= s < 500),
                "p50": float(np.percentile(latency, 50)) if latency else None,
                "p95": float(np.percentile(latency, 95)) if latency else None,
                "ttft": float(np.median(data["ttft"])) if data.get("ttft") else None,
                "scores": {k[6:]: float(np.mean(data[k])) for k in score_names if data.get(k)},
                "feedback": len(data.get("feedback", [])),
                "negative": (sum(rated) / len(rated)) if rated else None,
            }
        )
    return [k[6:] for k in score_names], rows


def panels(series: dict[str, Any]) -> dict[str, tuple[str, Callable[[list[float]], float]]]:
    """The time-series panels the data has: title -> (series key, how a bucket's values reduce to a point).

    Traffic, p95 latency, error rate, negative feedback, prompt similarity and each online score;
    the report's plots and the web app's charts both draw these.
    """
    found: dict[str, tuple[str, Callable[[list[float]], float]]] = {
        "traffic (requests per bucket)": ("requests", len),
        "p95 latency (ms)": ("latency", lambda v: float(np.percentile(v, 95))),
        "error rate": ("errors", lambda v: float(np.mean(v))),
        "negative feedback share": ("feedback", lambda v: float(np.mean(v))),
        "similarity of prompts to training prompts": ("similarity", lambda v: float(np.mean(v))),
    }
    for key in sorted({k for v in series.values() for k in v if k.startswith("score:")}):
        found[f"mean {key[6:]}"] = (key, lambda v: float(np.mean(v)))
    return {title: entry for title, entry in found.items() if any(entry[0] in v for v in series.values())}


def plots(data: dict[str, Any]) -> dict[str, str]:
    """Time-series panels (PNG, base64): traffic, p95 latency, error rate, negative feedback, each score."""
    plt = pyplot()
    from matplotlib.dates import DateFormatter

    series, edges = data["series"], data["edges"]
    mids = [edges[i] + (edges[i + 1] - edges[i]) / 2 for i in range(BUCKETS)]
    images = {}
    for title, (key, reduce) in panels(series).items():
        fig, ax = plt.subplots(figsize=(6.4, 2.4))
        for version, metrics in sorted(series.items()):
            if key not in metrics:
                continue
            xs = [mids[b] for b in sorted(metrics[key])]
            ys = [reduce(metrics[key][b]) for b in sorted(metrics[key])]
            ax.plot(xs, ys, marker="o", markersize=3, linewidth=1.2, label=version)
        ax.set_title(title, fontsize=9)
        ax.set_xlim(edges[0], edges[-1])  # the whole period, however few points there are
        ax.xaxis.set_major_formatter(DateFormatter("%m-%d %H:%M"))
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7, loc="best")
        fig.autofmt_xdate()
        images[title] = png_base64(fig)
    return images


def write_report(
    workspace: Workspace,
    monitor: MonitorConfig,
    output: Path,
    *,
    since: timedelta = timedelta(hours=24),
    drift: bool = False,
) -> Path:
    """Write the HTML page to `output` (a file); returns its path."""
    now = datetime.now(UTC)
    start = now - since
    data = collect(workspace, start, now)
    score_names, rows = summary_rows(data["summary"])
    drift_rows = _drift_rows(workspace, monitor, [r["version"] for r in rows]) if drift else []
    if drift:
        _similarity_series(workspace, data, start)
    alerts = [a for a in recent_alerts(workspace, limit=200) if _aware(a.at) >= start]
    names = version_names(workspace)
    env = Environment(loader=PackageLoader("tunesmith", "monitor"), autoescape=True)
    html = env.get_template("report.html.j2").render(
        since=start.strftime("%Y-%m-%d %H:%M"),
        now=now.strftime("%Y-%m-%d %H:%M UTC"),
        score_names=score_names,
        rows=rows,
        plots=plots(data),
        drift=drift_rows,
        alerts=[
            {
                "at": a.at.strftime("%Y-%m-%d %H:%M:%S"),
                "rule": a.rule,
                "version": names.get(a.version_id or "", "-"),
                "message": a.message,
                "action": a.action or "",
            }
            for a in alerts
        ],
    )
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(f".{output.name}.tmp")
    partial.write_text(html, encoding="utf-8")
    partial.replace(output)  # a reader never sees half a page
    return output


def _similarity_series(workspace: Workspace, data: dict[str, Any], since: datetime) -> None:
    """Add, per version, the mean MiniLM cosine similarity of each bucket's prompts to the centroid of
    its training prompts: drift over time (it falls as prompts move away from what was trained)."""
    from tunesmith.models.embed import Embedder
    from tunesmith.monitor.drift import DriftError, reference_texts
    from tunesmith.monitor.scorers import prompt_of

    embedder: Embedder | None = None
    edges = data["edges"]
    width = edges[1] - edges[0]
    for name in list(data["series"]):
        with session(workspace.engine) as s:
            version = s.scalars(select(ModelVersion).where(ModelVersion.name == name)).first()
            if version is None:
                continue
            rows = s.execute(
                select(RequestLog.at, RequestLog.prompt)
                .where(RequestLog.version_id == version.id, RequestLog.at >= since, RequestLog.status == 200)
                .order_by(RequestLog.at.desc())
                .limit(2000)
            ).all()
        try:
            _, reference, _ = reference_texts(workspace, version)
        except DriftError:
            continue
        if not rows or not reference:
            continue
        embedder = embedder or Embedder()
        centre = embedder.encode(reference[:500]).mean(axis=0)
        centre /= np.linalg.norm(centre) or 1.0
        similarity = embedder.encode([prompt_of({"prompt": p}) for _, p in rows]) @ centre
        for (at, _), value in zip(rows, similarity, strict=True):
            b = min(BUCKETS - 1, max(0, int((_aware(at) - since) / width)))
            data["series"][name]["similarity"][b].append(float(value))


def _drift_rows(workspace: Workspace, monitor: MonitorConfig, versions: list[str]) -> list[dict[str, Any]]:
    from tunesmith.monitor.drift import DriftError, drift_for_version

    rows: list[dict[str, Any]] = []
    for name in versions:
        with session(workspace.engine) as s:
            version = s.scalars(select(ModelVersion).where(ModelVersion.name == name)).first()
        if version is None:
            continue
        try:
            report = drift_for_version(workspace, version, monitor.drift)
        except DriftError as exc:
            rows.append({"version": name, "note": str(exc)})
            continue
        rows.append({"version": name, "report": report})
    return rows
