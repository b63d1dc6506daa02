"""Alerts: rules on served versions (`monitor.alerts`), sent to channels, optionally rolling back.

A rule names a metric over a window — p95 latency, error rate, the mean of any online score, the
share of negative feedback, the request count, or a drift statistic — a comparison and a
threshold, per version (all versions with traffic, or the one a `model` name points at). When it
holds it fires: an `alert_events` row, a message to each channel (`log`, `webhook`, or your own
with `register_channel`), and with `action: rollback` the rule's alias is moved back through the
registry, which records the move and why in the alias history. A rule stays quiet below
`min_requests`, and for `cooldown_minutes` after firing for the same version.
"""

from __future__ import annotations

import logging
import operator
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import numpy as np
from sqlalchemy import func, select

from tunesmith.config import AlertRule, MonitorConfig, RegistryConfig
from tunesmith.monitor.feedback import is_negative
from tunesmith.plugins import Registry
from tunesmith.registry.versions import RegistryError, alias_target
from tunesmith.store import AlertEvent, Feedback, ModelVersion, RequestLog, RequestScore, session
from tunesmith.store.schema import utcnow
from tunesmith.workspace import Workspace

log = logging.getLogger("tunesmith.monitor")
OPS: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
}


class AlertChannel(Protocol):
    """Where a fired alert goes. `send` returns nothing, or raises with what went wrong."""

    def send(self, alert: dict[str, Any], rule: AlertRule) -> None: ...


class LogChannel:
    def send(self, alert: dict[str, Any], rule: AlertRule) -> None:
        log.warning("ALERT %s: %s", alert["rule"], alert["message"])


class WebhookChannel:
    """POSTs the alert as JSON to the rule's `webhook` URL (Slack, PagerDuty or your own receiver)."""

    def send(self, alert: dict[str, Any], rule: AlertRule) -> None:
        import httpx2

        assert rule.webhook is not None
        response = httpx2.post(
            rule.webhook, json={**alert, "text": f"[tunesmith] {alert['message']}"}, timeout=10
        )
        response.raise_for_status()


CHANNELS: Registry[AlertChannel] = Registry("alert channel")
CHANNELS.add("log", LogChannel())
CHANNELS.add("webhook", WebhookChannel())


def register_channel(name: str, channel: AlertChannel) -> None:
    CHANNELS.add(name, channel)


def measure(
    workspace: Workspace, rule: AlertRule, version: ModelVersion, since: datetime, drift: Any = None
) -> tuple[float | None, int]:
    """(the rule's metric for `version` since `since`, how many data points it rests on)."""
    if rule.metric.startswith("drift_"):
        if drift is None:
            return None, 0
        value = {
            "drift_auc": drift.auc,
            "drift_mmd_p": drift.mmd_p,
            "drift_psi": max(drift.psi.values(), default=0),
        }
        return float(value[rule.metric]), drift.current
    with session(workspace.engine) as s:
        if rule.metric.startswith("score:"):
            values = list(
                s.scalars(
                    select(RequestScore.value).where(
                        RequestScore.version_id == version.id,
                        RequestScore.name == rule.metric[6:],
                        RequestScore.at >= since,
                    )
                )
            )
            return (float(np.mean(values)) if values else None), len(values)
        if rule.metric == "negative_feedback_rate":
            rated = s.execute(
                select(Feedback.rating, Feedback.scale).where(
                    Feedback.version_id == version.id, Feedback.at >= since, Feedback.rating.is_not(None)
                )
            ).all()
            negative = sum(1 for rating, scale in rated if is_negative(rating, scale))
            return (negative / len(rated) if rated else None), len(rated)
        rows = s.execute(
            select(RequestLog.status, RequestLog.latency_ms).where(
                RequestLog.version_id == version.id, RequestLog.at >= since, RequestLog.route != "shadow"
            )
        ).all()
    return _from_log(rule.metric, [(status, ms) for status, ms in rows])


def _from_log(metric: str, rows: list[tuple[int, float | None]]) -> tuple[float | None, int]:
    """requests, error_rate or p95_latency_ms of (status, latency) rows."""
    if metric == "requests":
        return float(len(rows)), len(rows)
    if metric == "error_rate":
        return (sum(1 for status, _ in rows if status >= 500) / len(rows) if rows else None), len(rows)
    latencies = [ms for status, ms in rows if status == 200 and ms is not None]
    return (float(np.percentile(latencies, 95)) if latencies else None), len(latencies)


def check_alerts(
    workspace: Workspace,
    monitor: MonitorConfig,
    registry: RegistryConfig,
    now: datetime | None = None,
    *,
    embedder: Any = None,
) -> list[AlertEvent]:
    """Evaluate every rule once; fire (record, send, act) the ones that hold. Returns what fired.

    Drift rules embed prompts; pass a loaded `embedder` to reuse it across checks.
    """
    now = now or datetime.now(UTC)
    fired = []
    for rule in monitor.alerts:
        since = now - timedelta(minutes=rule.window_minutes)
        for version in _versions(workspace, rule, since):
            if _cooling(workspace, rule, version, now):
                continue
            drift = _drift(workspace, rule, version, monitor, embedder)
            value, support = measure(workspace, rule, version, since, drift)
            if value is None or support < rule.min_requests or not OPS[rule.op](value, rule.threshold):
                continue
            fired.append(_fire(workspace, rule, version, value, support, registry, now))
    return fired


def _versions(workspace: Workspace, rule: AlertRule, since: datetime) -> list[ModelVersion]:
    if rule.model is not None:
        if "@" in rule.model:
            family, alias = rule.model.split("@", 1)
            target = alias_target(workspace, family, alias)
            return [target] if target is not None else []
        with session(workspace.engine) as s:
            return list(s.scalars(select(ModelVersion).where(ModelVersion.name == rule.model)))
    with session(workspace.engine) as s:
        ids = set(s.scalars(select(RequestLog.version_id).where(RequestLog.at >= since).distinct()))
        return [v for v in s.scalars(select(ModelVersion).where(ModelVersion.id.in_(ids - {None})))]


def _cooling(workspace: Workspace, rule: AlertRule, version: ModelVersion, now: datetime) -> bool:
    with session(workspace.engine) as s:
        last = s.scalar(
            select(func.max(AlertEvent.at)).where(
                AlertEvent.rule == rule.name, AlertEvent.version_id == version.id
            )
        )
    if last is None:
        return False
    last = last if last.tzinfo is not None else last.replace(tzinfo=UTC)
    return now - last < timedelta(minutes=rule.cooldown_minutes)


def _drift(
    workspace: Workspace, rule: AlertRule, version: ModelVersion, monitor: MonitorConfig, embedder: Any
) -> Any:
    if not rule.metric.startswith("drift_"):
        return None
    from tunesmith.monitor.drift import DriftError, drift_for_version

    try:
        return drift_for_version(workspace, version, monitor.drift, embedder=embedder)
    except DriftError as exc:
        log.info("alert %s: no drift figure for %s (%s)", rule.name, version.name, exc)
        return None


def _fire(
    workspace: Workspace,
    rule: AlertRule,
    version: ModelVersion,
    value: float,
    support: int,
    registry: RegistryConfig,
    now: datetime,
) -> AlertEvent:
    message = (
        f"{rule.metric} of {version.name} is {value:.4g} ({rule.op} {rule.threshold:g}) over the last "
        f"{rule.window_minutes:g} min, from {support} data points"
    )
    action = _act(workspace, rule, version, message, now) if rule.action == "rollback" else None
    alert = {
        "rule": rule.name,
        "version": version.name,
        "metric": rule.metric,
        "value": value,
        "threshold": rule.threshold,
        "message": message + (f"; {action}" if action else ""),
        "at": now.isoformat(),
    }
    outcomes: dict[str, str] = {}
    for name in rule.channels:
        try:
            CHANNELS.get(name).send(alert, rule)
            outcomes[name] = "sent"
        except Exception as exc:  # a channel that is down must not stop the others or the action
            log.error("alert %s could not be sent to %s: %s", rule.name, name, exc)
            outcomes[name] = f"failed: {exc}"
    event = AlertEvent(
        rule=rule.name,
        version_id=version.id,
        metric=rule.metric,
        value=value,
        threshold=rule.threshold,
        window_minutes=rule.window_minutes,
        message=alert["message"],
        channels=outcomes,
        action=action,
        at=utcnow(),
    )
    with session(workspace.engine) as s:
        s.add(event)
    return event


ROLLED = "rolled "  # how an action that moved the alias begins


def _act(workspace: Workspace, rule: AlertRule, version: ModelVersion, message: str, now: datetime) -> str:
    """Roll the rule's alias back when it still points at the version that fired, once per cooldown."""
    from tunesmith.registry.aliases import rollback

    assert rule.model is not None
    family, alias = rule.model.split("@", 1)
    current = alias_target(workspace, family, alias)
    if current is None or current.id != version.id:
        return f"no rollback: {rule.model} no longer points at {version.name}"
    with session(workspace.engine) as s:
        moved = s.scalar(
            select(func.max(AlertEvent.at)).where(
                AlertEvent.rule == rule.name, AlertEvent.action.startswith(ROLLED)
            )
        )
    moved = moved if moved is None or moved.tzinfo is not None else moved.replace(tzinfo=UTC)
    if moved is not None and now - moved < timedelta(minutes=rule.cooldown_minutes):
        return (
            f"no rollback: this rule moved {rule.model} back at {moved:%Y-%m-%d %H:%M:%S} UTC and waits "
            f"{rule.cooldown_minutes:g} min before moving it again; look at {version.name} yourself"
        )
    try:
        event = rollback(
            workspace, family, alias=alias, reason=f"alert {rule.name}: {message}", actor="tunesmith-monitor"
        )
    except RegistryError as exc:
        return f"rollback failed: {exc}"
    with session(workspace.engine) as s:
        previous = s.get(ModelVersion, event.to_version_id)
    return f"{ROLLED}{rule.model} back to {previous.name if previous else event.to_version_id}"


def recent_alerts(workspace: Workspace, limit: int = 50) -> list[AlertEvent]:
    with session(workspace.engine) as s:
        return list(s.scalars(select(AlertEvent).order_by(AlertEvent.at.desc()).limit(limit)))
