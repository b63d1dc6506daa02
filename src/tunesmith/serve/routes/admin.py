"""Admin routes (an admin-scope key): `POST /admin/promote`, `POST /admin/rollback`, `POST /admin/reload`,
`GET|POST /admin/rollouts`, `POST /admin/rollouts/{id}/abort`, `GET /admin/status`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Depends, Request

from tunesmith.config import ConfigError
from tunesmith.registry.aliases import PromotionError, describe, promote, rollback
from tunesmith.registry.versions import RegistryError, get_version, version_names
from tunesmith.serve import rollout as rollouts
from tunesmith.serve.keys import Caller
from tunesmith.serve.routes.deps import admin, body, parse, server_of
from tunesmith.serve.schemas import AliasMove, AliasRollback, ApiError, RolloutStart
from tunesmith.serve.server import Server
from tunesmith.store import AliasEvent

router = APIRouter(prefix="/admin")


async def alias_change(server: Server, move: Callable[[], AliasEvent]) -> dict[str, Any]:
    """Apply an alias move through the registry, then follow it at once (load, warm up, switch)."""
    try:
        event = await server.off_path(move)
    except PromotionError as exc:
        raise ApiError(409, str(exc), code="promotion_refused") from None
    except RegistryError as exc:
        raise ApiError(404 if "no version" in str(exc) or "unknown" in str(exc) else 409, str(exc)) from None
    changes = await server.off_path(server.table.refresh, force=True)
    names = version_names(server.workspace)
    return {
        "event": describe(event, names),
        "swaps": [{"model": m, "version": v, "result": r} for m, v, r in changes],
    }


@router.post("/promote", openapi_extra=body(AliasMove))
async def admin_promote(
    request: Request, who: Caller = Depends(admin), server: Server = Depends(server_of)
) -> dict[str, Any]:
    move = await parse(request, AliasMove)

    def run() -> AliasEvent:
        version = get_version(server.workspace, move.version)
        registry, actor = server.config.registry, f"api:{who.name}"
        return promote(
            server.workspace, registry, version, move.alias, force=move.force, reason=move.reason, actor=actor
        )

    return await alias_change(server, run)


@router.post("/rollback", openapi_extra=body(AliasRollback))
async def admin_rollback(
    request: Request, who: Caller = Depends(admin), server: Server = Depends(server_of)
) -> dict[str, Any]:
    move = await parse(request, AliasRollback)
    return await alias_change(
        server,
        lambda: rollback(
            server.workspace, move.family, alias=move.alias, reason=move.reason, actor=f"api:{who.name}"
        ),
    )


@router.post("/reload")
async def admin_reload(_: Caller = Depends(admin), server: Server = Depends(server_of)) -> dict[str, Any]:
    try:
        settings = server.runtime.reload()
    except ConfigError as exc:
        server.metrics.reloads.labels("rejected").inc()
        raise ApiError(
            400, f"runtime config rejected; the previous settings keep serving: {exc}", code="invalid_config"
        ) from None
    server.metrics.reloads.labels("ok").inc()
    return {"status": "reloaded", "models": sorted(settings.models)}


def rollout_list(server: Server) -> list[dict[str, Any]]:
    names = version_names(server.workspace)
    return [rollouts.describe(r, names) for r in rollouts.list_rollouts(server.workspace)]


@router.get("/rollouts")
async def admin_rollouts(_: Caller = Depends(admin), server: Server = Depends(server_of)) -> dict[str, Any]:
    return {"data": await server.off_path(rollout_list, server)}


@router.post("/rollouts", openapi_extra=body(RolloutStart))
async def admin_rollout_start(
    request: Request, _: Caller = Depends(admin), server: Server = Depends(server_of)
) -> dict[str, Any]:
    start = await parse(request, RolloutStart)

    def run() -> dict[str, Any]:
        version = get_version(server.workspace, start.version)
        row = rollouts.start_rollout(server.workspace, server.serve, start.route, version)
        server.router.refresh_rollouts()
        return rollouts.describe(row, {version.id: version.name})

    try:
        return await server.off_path(run)
    except RegistryError as exc:
        raise ApiError(409, str(exc), code="conflict") from None


@router.post("/rollouts/{rollout_id}/abort")
async def admin_rollout_abort(
    rollout_id: str, who: Caller = Depends(admin), server: Server = Depends(server_of)
) -> dict[str, Any]:
    def run() -> dict[str, Any]:
        reason = f"aborted through the API by {who.name}"
        row = rollouts.abort_rollout(server.workspace, rollout_id, reason)
        server.router.refresh_rollouts()
        return rollouts.describe(row, {})

    try:
        return await server.off_path(run)
    except RegistryError as exc:
        raise ApiError(404, str(exc), code="not_found") from None


@router.get("/status")
async def admin_status(_: Caller = Depends(admin), server: Server = Depends(server_of)) -> dict[str, Any]:
    return {
        "backend": server.backend.name,
        "ready": server.ready,
        "models": {name: v.name for name, v in server.table.names().items()},
        "loaded": sorted(server.backend.loaded()),
        "engines": {v: server.backend.engine(v) for v in sorted(server.backend.loaded())},
        "queue": server.backend.queue_depth(),
        "runtime_config": str(server.runtime.path) if server.runtime.path else None,
        "request_log_pending": server.request_log.pending() if server.request_log else None,
    }
