"""Rollouts: a version moves through a route's plan (shadow → internal → 5% → 25% → 100%) one step at a time.

A step advances when its hold time has passed with every gate holding; any gate failing rolls the
rollout back (traffic returns to the route's primary at once). After the last step the version is
promoted to the route's alias through the registry, so the eval gates apply there too: one server
claims the rollout (`promoting`), moves the alias, then marks it completed; a claim left by a server
that stopped in between is finished by the next tick of any server after a minute.

Gates are functions registered by name (`register_rollout_gate`); the plan lists the ones it
uses. The monitor stage registers them (`tunesmith.monitor.gates`): `error_rate` and `latency`
from the request log, `score`, `feedback` and `drift` from online scores, ratings and prompts.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import or_, select, update

from tunesmith.config import MonitorConfig, RegistryConfig, RolloutPlan, RouteConfig, ServeConfig
from tunesmith.monitor.gates import GATES, GateContext, gate_names, score_direction
from tunesmith.registry.versions import RegistryError, alias_target, who
from tunesmith.store import ModelVersion, Rollout, session
from tunesmith.store.schema import utcnow
from tunesmith.workspace import Workspace

log = logging.getLogger("tunesmith.serve")
PROMOTING = "promoting"  # a server claimed the last step and is moving the alias
STALLED_SECONDS = 60.0  # a claim this old, still promoting, was left by a server that stopped


def route_of(config: ServeConfig, model: str) -> RouteConfig:
    for route in config.routes:
        if route.model == model:
            return route
    raise RegistryError(
        f"no route serves {model!r}; add it under serve.routes (known: "
        + (", ".join(r.model for r in config.routes) or "none")
        + ")"
    )


def start_rollout(
    workspace: Workspace, config: ServeConfig, route_model: str, version: ModelVersion
) -> Rollout:
    """Start moving `version` through the plan of the route serving `route_model`."""
    route = route_of(config, route_model)
    if "@" not in route.model:
        raise RegistryError(
            f"route {route.model!r} names a version; a rollout ends by moving an alias: use family@alias"
        )
    check_plan(route.rollout)
    family = route.model.split("@", 1)[0]
    if version.family != family:
        raise RegistryError(f"{version.name} is of family {version.family}, the route serves {family}")
    with session(workspace.engine) as s:
        running = s.scalars(
            select(Rollout).where(Rollout.route == route.model, Rollout.status.in_(("running", PROMOTING)))
        ).first()
        if running is not None:
            raise RegistryError(f"rollout {running.id} is already running on {route.model}; abort it first")
        now = utcnow()
        rollout = Rollout(
            id=f"ro-{secrets.token_hex(4)}",
            route=route.model,
            version_id=version.id,
            steps=list(route.rollout.steps),
            step=0,
            status="running",
            hold_seconds=route.rollout.hold_minutes * 60,
            step_started_at=now,
            history=[{"at": now.isoformat(), "step": route.rollout.steps[0], "event": "start", "by": who()}],
            created_by=who(),
            created_at=now,
        )
        s.add(rollout)
    return rollout


def check_plan(plan: RolloutPlan) -> None:
    """Refuse, before anything moves, a plan naming a gate nobody registered or a score without a
    better direction (which the score gate could only fail on)."""
    unknown = [name for name in plan.gates if name not in GATES]
    if unknown:
        raise RegistryError(
            f"rollout.gates names {', '.join(map(repr, unknown))}: known gates are {', '.join(gate_names())}"
        )
    if "score" in plan.gates:
        aimless = [name for name in plan.scores if score_direction(name) is None]
        if aimless:
            raise RegistryError(
                f"rollout.scores names {', '.join(map(repr, aimless))}, which no scorer says is better "
                "higher or lower; name scorers such as relevance or reference_rouge_l"
            )


def list_rollouts(workspace: Workspace, *, running_only: bool = False) -> list[Rollout]:
    with session(workspace.engine) as s:
        query = select(Rollout).order_by(Rollout.created_at.desc())
        if running_only:
            query = query.where(Rollout.status == "running")
        return list(s.scalars(query))


def abort_rollout(workspace: Workspace, ref: str, reason: str = "") -> Rollout:
    """Stop a running rollout (by id or route); traffic returns to the primary."""
    with session(workspace.engine) as s:
        rollout = s.scalars(
            select(Rollout).where(or_(Rollout.id == ref, Rollout.route == ref), Rollout.status == "running")
        ).first()
        if rollout is None:
            raise RegistryError(f"no running rollout {ref!r}; see `tunesmith serve rollout status`")
        _record(rollout, "aborted", "abort", [reason or "aborted by " + who()])
    return rollout


def _record(rollout: Rollout, status: str, event: str, reasons: list[str]) -> None:
    rollout.status = status
    rollout.history = [
        *rollout.history,
        {
            "at": utcnow().isoformat(),
            "step": rollout.steps[min(rollout.step, len(rollout.steps) - 1)],
            "event": event,
            "reasons": reasons,
        },
    ]


def tick(
    workspace: Workspace,
    config: ServeConfig,
    registry: RegistryConfig,
    primary_of: Callable[[str], str | None],
    now: datetime | None = None,
    seen: list[Rollout] | None = None,
    *,
    monitor: MonitorConfig | None = None,
    embedder: Any = None,
) -> list[tuple[Rollout, str]]:
    """Check each running rollout's gates once: advance, complete, roll back or wait; returns the changes.

    `seen`: the running rollouts as this server read them (default: read now). A decision is only
    recorded if the rollout is still as seen, so servers sharing a store never decide a step twice.
    `monitor` and `embedder`: the drift gate's thresholds and a loaded embedder to share.
    """
    now = now or datetime.now(UTC)
    changed: list[tuple[Rollout, str]] = [*_finish_stalled(workspace, registry)]
    for rollout in list_rollouts(workspace, running_only=True) if seen is None else seen:
        try:
            plan = route_of(config, rollout.route).rollout
        except RegistryError:
            plan = RolloutPlan()
        since = _aware(rollout.step_started_at)
        ctx = GateContext(workspace, rollout, plan, primary_of(rollout.route), since, monitor, embedder)
        results = [GATES.get(name)(ctx) for name in plan.gates if name in GATES]
        missing = [name for name in plan.gates if name not in GATES]
        failed = [r for r in results if r.passed is False]
        held = (now - since).total_seconds() >= rollout.hold_seconds
        if missing:
            status, event = "rolled_back", "rollback"
            reasons = [f"unknown gate {m!r} (known: {', '.join(gate_names())})" for m in missing]
        elif failed:
            status, event, reasons = "rolled_back", "rollback", [f"{r.name}: {r.detail}" for r in failed]
        elif held and all(r.passed for r in results):
            reasons = [f"{r.name}: {r.detail}" for r in results]
            status, event = "running", "advance"
            if rollout.step + 1 == len(rollout.steps):  # claimed first, promoted next (see _finish)
                status, event = PROMOTING, "complete"
        else:
            continue
        if not _transition(workspace, rollout, status, event, reasons, now):
            log.info("rollout %s: another server decided this step first", rollout.id)
            continue
        if event == "complete":
            event = _finish(workspace, registry, rollout, reasons)
        with session(workspace.engine) as s:
            row = s.get(Rollout, rollout.id)
        assert row is not None
        changed.append((row, event))
        log.info("rollout %s on %s: %s %s", row.id, row.route, event, "; ".join(reasons))
    return changed


def _finish(workspace: Workspace, registry: RegistryConfig, rollout: Rollout, reasons: list[str]) -> str:
    """Promote a rollout this server claimed (status `promoting`) and mark it completed, or blocked
    when the promotion is refused. A version the alias already points at is not promoted twice."""
    from tunesmith.registry.aliases import PromotionError, promote

    version = _version(workspace, rollout.version_id)
    family, alias = rollout.route.split("@", 1)
    event = "complete"
    current = alias_target(workspace, family, alias)
    if current is not None and current.id == version.id:
        reasons.append(f"{version.name} was already on {alias}")
    else:
        try:
            promote(workspace, registry, version, alias, reason=f"rollout {rollout.id} completed")
            reasons.append(f"{version.name} promoted to {alias}")
        except (PromotionError, RegistryError) as exc:
            event = "blocked"
            reasons.append(str(exc))
    _amend(workspace, rollout.id, event, reasons)
    return event


def _finish_stalled(workspace: Workspace, registry: RegistryConfig) -> list[tuple[Rollout, str]]:
    """Finish rollouts claimed for promotion by a server that stopped before promoting (killed
    between the claim and the alias move): after `STALLED_SECONDS`, any server completes them."""
    finished = []
    with session(workspace.engine) as s:
        claimed = list(s.scalars(select(Rollout).where(Rollout.status == PROMOTING)))
    for rollout in claimed:
        at = datetime.fromisoformat(rollout.history[-1]["at"])
        if (datetime.now(UTC) - _aware(at)).total_seconds() < STALLED_SECONDS:
            continue
        reasons = [*rollout.history[-1]["reasons"], "finished after the server that claimed it stopped"]
        event = _finish(workspace, registry, rollout, reasons)
        log.warning("rollout %s on %s: %s after a stalled promotion", rollout.id, rollout.route, event)
        with session(workspace.engine) as s:
            row = s.get(Rollout, rollout.id)
        assert row is not None
        finished.append((row, event))
    return finished


def _transition(
    workspace: Workspace, seen: Rollout, status: str, event: str, reasons: list[str], now: datetime
) -> bool:
    """Record a step's decision if the rollout is still where `seen` found it, in one conditional
    UPDATE: of several servers sharing the store that decide the same step, exactly one records it
    (the others' WHERE matches nothing), so a step never advances twice nor a version promotes twice.
    """
    entry = {
        "at": utcnow().isoformat(),
        "step": seen.steps[min(seen.step, len(seen.steps) - 1)],
        "event": event,
        "reasons": list(reasons),
    }
    values: dict[str, Any] = {"status": status, "history": [*seen.history, entry]}
    if event == "advance":
        values |= {"step": seen.step + 1, "step_started_at": now}
    with session(workspace.engine) as s:
        result = s.execute(
            update(Rollout)
            .where(
                Rollout.id == seen.id,
                Rollout.status == "running",
                Rollout.step == seen.step,
                Rollout.step_started_at == seen.step_started_at,
            )
            .values(**values)
            .execution_options(synchronize_session=False)
        )
        return bool(result.rowcount == 1)  # type: ignore[attr-defined]


def _amend(workspace: Workspace, rollout_id: str, event: str, reasons: list[str]) -> None:
    """Complete the last history entry of a rollout this server holds (after its promotion)."""
    with session(workspace.engine) as s:
        row = s.get(Rollout, rollout_id)
        assert row is not None
        history = list(row.history)
        history[-1] = {**history[-1], "event": event, "reasons": reasons}
        row.history = history
        row.status = "blocked" if event == "blocked" else "completed"


def _version(workspace: Workspace, version_id: str) -> ModelVersion:
    with session(workspace.engine) as s:
        version = s.get(ModelVersion, version_id)
    assert version is not None
    return version


def _aware(at: datetime) -> datetime:
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


def describe(rollout: Rollout, names: dict[str, str]) -> dict[str, Any]:
    step = rollout.steps[min(rollout.step, len(rollout.steps) - 1)]
    return {
        "id": rollout.id,
        "route": rollout.route,
        "version": names.get(rollout.version_id, rollout.version_id),
        "status": rollout.status,
        "step": f"{rollout.step + 1}/{len(rollout.steps)}: {_step_label(step)}",
        "since": _aware(rollout.step_started_at).strftime("%Y-%m-%d %H:%M:%S"),
        "history": rollout.history,
    }


def _step_label(step: Any) -> str:
    return step if isinstance(step, str) else f"{step:g}%"
