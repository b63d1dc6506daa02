"""Online rollout gates: what must hold, on live traffic, for a version to take the next rollout step.

A gate is a function registered by name (`register_rollout_gate`) that looks at the rollout
version's traffic since its step started, usually against the route's primary over the same window,
and answers passed, failed, or not yet (too little traffic to tell). A rollout plan names the gates
it uses (`serve.routes[].rollout.gates`); the serving stage ticks them (`tunesmith.serve.rollout`).

- `error_rate`: the share of the version's requests that failed (5xx), against a limit.
- `latency`: its p95 latency over the primary's.
- `score`: each online score named in `rollout.scores` (the monitor's scorers, or the
  `reference_<metric>` scores given by corrections), the version's mean in the step against the
  primary's since the rollout started (at 100% the primary answers nothing more):
  passes when the interval of the difference rules out a drop larger than the tolerated one,
  fails when it rules out anything better than that drop, waits in between.
- `feedback`: the negative-feedback rate (thumbs down, 1-2 stars), the same way.
- `drift`: the prompts the version answered in the window against its own training data, with the
  tests of `tunesmith monitor drift`: fails when they drifted.

Nothing advances on luck: the score and feedback gates pass only on an interval, never on a mean.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
from sqlalchemy import and_, case, func, select

from tunesmith.config import MonitorConfig, RolloutPlan
from tunesmith.evaluate.stats import Interval, difference_interval
from tunesmith.monitor.feedback import is_negative
from tunesmith.plugins import Registry
from tunesmith.store import Feedback, ModelVersion, RequestLog, RequestScore, Rollout, session
from tunesmith.workspace import Workspace


@dataclass(frozen=True)
class GateContext:
    workspace: Workspace
    rollout: Rollout
    plan: RolloutPlan
    primary_version_id: str | None
    since: datetime
    monitor: MonitorConfig | None = None  # the drift gate's thresholds (default: MonitorConfig())
    embedder: Any = None  # a loaded sentence embedder the drift gate may share


@dataclass(frozen=True)
class GateResult:
    name: str
    passed: bool | None  # None: not enough traffic yet to tell
    detail: str


GateFn = Callable[[GateContext], GateResult]
GATES: Registry[GateFn] = Registry("rollout gate")


def register_rollout_gate(name: str) -> Callable[[GateFn], GateFn]:
    """Register `fn(GateContext) -> GateResult` as a rollout gate plans can name."""
    return GATES.register(name)


def gate_names() -> list[str]:
    return GATES.names()


def _window(ctx: GateContext, version_id: str, *, shadow: bool) -> Any:
    """The request-log conditions of a version's traffic since the step started."""
    conditions = [RequestLog.version_id == version_id, RequestLog.at >= ctx.since]
    if not shadow:
        conditions.append(RequestLog.route != "shadow")
    return and_(*conditions)


def _counts(ctx: GateContext, version_id: str) -> tuple[int, int]:
    """(requests, server errors) of the rollout's version in the window, counted by the store."""
    with session(ctx.workspace.engine) as s:
        total, failed = s.execute(
            select(
                func.count(), func.coalesce(func.sum(case((RequestLog.status >= 500, 1), else_=0)), 0)
            ).where(_window(ctx, version_id, shadow=True))
        ).one()
    return int(total), int(failed)


def _latencies(ctx: GateContext, version_id: str | None, *, shadow: bool) -> list[float]:
    """The latencies alone (never the prompts and answers) of a version's requests in the window."""
    if version_id is None:
        return []
    with session(ctx.workspace.engine) as s:
        query = select(RequestLog.latency_ms).where(
            _window(ctx, version_id, shadow=shadow), RequestLog.latency_ms.is_not(None)
        )
        return [float(v) for v in s.scalars(query) if v is not None]


@register_rollout_gate("error_rate")
def error_rate_gate(ctx: GateContext) -> GateResult:
    total, failed = _counts(ctx, ctx.rollout.version_id)
    if total < ctx.plan.min_requests:
        return GateResult("error_rate", None, f"{total} of {ctx.plan.min_requests} requests so far")
    rate = failed / total
    return GateResult(
        "error_rate",
        rate <= ctx.plan.max_error_rate,
        f"{rate:.1%} of {total} requests failed (limit {ctx.plan.max_error_rate:.1%})",
    )


@register_rollout_gate("latency")
def latency_gate(ctx: GateContext) -> GateResult:
    mine = _latencies(ctx, ctx.rollout.version_id, shadow=True)
    theirs = _latencies(ctx, ctx.primary_version_id, shadow=False)
    if len(mine) < ctx.plan.min_requests:
        return GateResult("latency", None, f"{len(mine)} of {ctx.plan.min_requests} requests so far")
    if not theirs:
        return GateResult("latency", True, "no primary traffic in the window to compare with")
    ratio = float(np.percentile(mine, 95)) / max(float(np.percentile(theirs, 95)), 1e-9)
    return GateResult(
        "latency",
        ratio <= ctx.plan.max_latency_ratio,
        f"p95 {ratio:.2f}x the primary's (limit {ctx.plan.max_latency_ratio}x)",
    )


def primary_since(ctx: GateContext) -> datetime:
    """Where the primary's side of a comparison starts: the rollout's start, not the step's, so that
    the last step (all traffic to the version, none left to the primary) still has a baseline."""
    started = ctx.rollout.created_at or ctx.since
    return started if started.tzinfo is not None else started.replace(tzinfo=UTC)


def score_values(workspace: Workspace, version_id: str | None, name: str, since: datetime) -> list[float]:
    """A version's online scores `name` given since `since` (its shadow answers' included)."""
    if version_id is None:
        return []
    with session(workspace.engine) as s:
        query = select(RequestScore.value).where(
            RequestScore.version_id == version_id, RequestScore.name == name, RequestScore.at >= since
        )
        return [float(v) for v in s.scalars(query)]


def score_direction(name: str) -> int | None:
    """+1 when a higher score `name` is better, -1 when lower is, None when neither (e.g. length)."""
    from tunesmith.monitor.scorers import SCORERS

    if name.startswith("reference_"):
        return 1  # agreement with a user's correction
    if name not in SCORERS:
        return None
    better = SCORERS.get(name).better
    return None if better is None else (1 if better == "higher" else -1)


def _decide(
    delta: Interval, tolerance: float, sign: int, count_mine: int, count_theirs: int, what: str
) -> tuple[bool | None, str]:
    """Non-inferiority on an interval of (version - primary): passed when its worse end is within
    `tolerance` of the primary, failed when even its better end is worse than that, else undecided."""
    worse_end, better_end = (delta.low, delta.high) if sign > 0 else (-delta.high, -delta.low)
    passed: bool | None = None
    if worse_end >= -tolerance:
        passed = True
    elif better_end < -tolerance:
        passed = False
    verdict = {True: "within", False: "worse than", None: "not yet clearly within"}[passed]
    return passed, (
        f"{what} {delta.value:+.3g} vs the primary [{delta.low:+.3g}, {delta.high:+.3g}] "
        f"({count_mine} vs {count_theirs}): {verdict} the tolerated {tolerance:g}"
    )


@register_rollout_gate("score")
def score_gate(ctx: GateContext) -> GateResult:
    """Every score in `rollout.scores`: the version's mean against the primary's in the window."""
    details: list[str] = []
    results: list[bool | None] = []
    for name, tolerance in ctx.plan.scores.items():
        sign = score_direction(name)
        if sign is None:
            return GateResult("score", False, f"score {name!r} has no better direction to compare")
        mine = score_values(ctx.workspace, ctx.rollout.version_id, name, ctx.since)
        theirs = score_values(ctx.workspace, ctx.primary_version_id, name, primary_since(ctx))
        if min(len(mine), len(theirs)) < ctx.plan.min_scores:
            details.append(f"{name}: {len(mine)} and {len(theirs)} of {ctx.plan.min_scores} scores so far")
            results.append(None)
            continue
        delta = difference_interval(np.array(mine), np.array(theirs), level=ctx.plan.level)
        passed, detail = _decide(delta, tolerance, sign, len(mine), len(theirs), f"{name} mean")
        details.append(detail)
        results.append(passed)
    outcome = False if False in results else (None if None in results else True)
    return GateResult("score", outcome, "; ".join(details) or "no scores named in rollout.scores")


def negative_ratings(workspace: Workspace, version_id: str | None, since: datetime) -> list[float]:
    """1.0 for each negative rating (thumbs down, 1-2 stars) of the version since `since`, else 0.0."""
    if version_id is None:
        return []
    with session(workspace.engine) as s:
        rated = s.execute(
            select(Feedback.rating, Feedback.scale).where(
                Feedback.version_id == version_id, Feedback.at >= since, Feedback.rating.is_not(None)
            )
        ).all()
    return [float(is_negative(rating, scale)) for rating, scale in rated]


@register_rollout_gate("feedback")
def feedback_gate(ctx: GateContext) -> GateResult:
    """The version's negative-feedback rate against the primary's in the window."""
    mine = negative_ratings(ctx.workspace, ctx.rollout.version_id, ctx.since)
    theirs = negative_ratings(ctx.workspace, ctx.primary_version_id, primary_since(ctx))
    if min(len(mine), len(theirs)) < ctx.plan.min_feedback:
        return GateResult(
            "feedback", None, f"{len(mine)} and {len(theirs)} of {ctx.plan.min_feedback} ratings so far"
        )
    delta = difference_interval(np.array(mine), np.array(theirs), level=ctx.plan.level)
    passed, detail = _decide(
        delta, ctx.plan.max_feedback_increase, -1, len(mine), len(theirs), "negative-feedback rate"
    )
    return GateResult("feedback", passed, detail)


@register_rollout_gate("drift")
def drift_gate(ctx: GateContext) -> GateResult:
    """The prompts the version answered in the window against its training data."""
    from tunesmith.monitor.drift import DriftError, Traffic, drift_for_version

    config = (ctx.monitor or MonitorConfig()).drift
    with session(ctx.workspace.engine) as s:
        version = s.get(ModelVersion, ctx.rollout.version_id)
    assert version is not None
    try:
        traffic = Traffic(since=ctx.since, shadow=True)
        report = drift_for_version(ctx.workspace, version, config, embedder=ctx.embedder, traffic=traffic)
    except DriftError as exc:
        return GateResult("drift", None, str(exc))
    if report.drifted:
        return GateResult("drift", False, "; ".join(report.reasons))
    return GateResult(
        "drift",
        True,
        f"{report.current} prompts like the training data (AUC {report.auc:.2f}, MMD p {report.mmd_p:.2f})",
    )
