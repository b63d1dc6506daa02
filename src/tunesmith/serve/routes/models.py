"""`GET /v1/models`, `GET /v1/models/{id}`; and the probes: `GET /health`, `GET /ready`, `GET /metrics`."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, PlainTextResponse

from tunesmith.serve.keys import Caller
from tunesmith.serve.routes.deps import caller, server_of
from tunesmith.serve.schemas import ApiError
from tunesmith.serve.server import Server

router = APIRouter()


@router.get("/v1/models")
async def models(_: Caller = Depends(caller), server: Server = Depends(server_of)) -> dict[str, Any]:
    return {"object": "list", "data": await server.off_path(server.model_list)}


@router.get("/v1/models/{model_id:path}")
async def model(
    model_id: str, _: Caller = Depends(caller), server: Server = Depends(server_of)
) -> dict[str, Any]:
    for entry in await server.off_path(server.model_list):
        if entry["id"] == model_id:
            return entry
    raise ApiError(404, f"the model `{model_id}` does not exist", param="model", code="model_not_found")


@router.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/ready")
async def ready(server: Server = Depends(server_of)) -> JSONResponse:
    names = {name: v.name for name, v in server.table.names().items()}
    if server.ready:
        return JSONResponse({"status": "ready", "models": names})
    status = "failed" if server.startup_error else "loading"
    return JSONResponse({"status": status, "error": server.startup_error, "models": names}, status_code=503)


@router.get("/metrics")
async def metrics(server: Server = Depends(server_of)) -> PlainTextResponse:
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    server.metrics.queue.set(server.backend.queue_depth())
    return PlainTextResponse(generate_latest(server.metrics.registry), media_type=CONTENT_TYPE_LATEST)
