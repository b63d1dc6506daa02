"""The server's FastAPI app: one factory that mounts the routers (`tunesmith.serve.routes`) over a
`Server`, and the ways to run it (`tunesmith serve`, or in the background for tests and notebooks).

Routes: `POST /v1/chat/completions`, `POST /v1/completions` (both with `stream`), `GET /v1/models`,
`GET /v1/models/{id}`, `POST /v1/feedback`, `GET /health`, `GET /ready`, `GET /metrics`; admin
(admin-scope key): `POST /admin/promote`, `POST /admin/rollback`, `POST /admin/reload`,
`GET|POST /admin/rollouts`, `POST /admin/rollouts/{id}/abort`, `GET /admin/status`.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager, suppress
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from tunesmith.config import ProjectConfig
from tunesmith.registry.versions import RegistryError
from tunesmith.serve.routes import ROUTERS
from tunesmith.serve.routes.deps import BODIES
from tunesmith.serve.schemas import ApiError, ChatCompletionRequest, CompletionRequest
from tunesmith.serve.server import Server

log = logging.getLogger("tunesmith.serve")


def create_app(server: Server) -> FastAPI:
    """The FastAPI app of `server`: its routers, OpenAI-shaped errors; its lifespan starts and stops it."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        server.start()
        try:
            yield
        finally:
            await asyncio.to_thread(server.stop)

    app = FastAPI(
        title="tunesmith", summary="OpenAI-compatible API over the tunesmith registry", lifespan=lifespan
    )
    app.state.server = server
    app.add_exception_handler(ApiError, _api_error)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, _internal_error)
    for router in ROUTERS:
        app.include_router(router)
    _document_bodies(app, server, BODIES)
    return app


async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
    return JSONResponse(exc.body, status_code=exc.status, headers=exc.headers)


async def _internal_error(_: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error")
    return JSONResponse(ApiError(500, f"internal error: {exc}", type="server_error").body, status_code=500)


def _document_bodies(app: FastAPI, server: Server, models: list[type[BaseModel]]) -> None:
    """Put the schemas that the routes' bodies refer to into the app's OpenAPI document; the `model` field of
    the generation requests lists the names this server answers to as examples (for /docs, and for
    API fuzzers, which then reach generation instead of only 404s)."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = generate()
            schemas = document.setdefault("components", {}).setdefault("schemas", {})
            for model in models:
                schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
                schemas.update(schema.pop("$defs", {}))
                schemas[model.__name__] = schema
        schemas = app.openapi_schema["components"]["schemas"]  # type: ignore[index]
        names = sorted(server.table.names()) if server.ready else []
        for request in (ChatCompletionRequest, CompletionRequest):
            field = schemas[request.__name__]["properties"]["model"]
            if names:
                field["examples"] = names
        return app.openapi_schema  # type: ignore[return-value]

    app.openapi = openapi  # type: ignore[method-assign]


def run_server(config: ProjectConfig, *, host: str | None = None, port: int | None = None) -> None:
    """`tunesmith serve`: run the app under uvicorn until interrupted.

    Raises:
        RegistryError: a configured model that names no version (before the port opens), served
            models that could not be loaded (the server stops: it would only ever answer 503), or a
            port it could not listen on.
    """
    import uvicorn

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    host = host or config.serve.host
    server = Server(config)
    server.keys.check_exposure(host, "serve.auth")
    server.check_models()
    port = config.serve.port if port is None else port  # 0: a free port, which uvicorn prints
    runner = uvicorn.Server(uvicorn.Config(create_app(server), host=host, port=port, log_level="info"))
    server.on_startup_error = lambda _: setattr(runner, "should_exit", True)
    try:
        with suppress(KeyboardInterrupt):  # uvicorn raises ctrl-c again once it has shut down
            runner.run()
    except SystemExit:  # uvicorn's own exit, when it cannot listen (it has logged why)
        raise RegistryError(f"the server could not listen on {host}:{port}; see the error above") from None
    if server.startup_error:
        raise RegistryError(f"could not load the served models: {server.startup_error}")


@contextmanager
def uvicorn_in_background(
    app: Any, *, name: str, ready: Callable[[], object] = lambda: True, timeout: float = 60.0
) -> Iterator[str]:
    """The base URL of `app` under uvicorn on a free 127.0.0.1 port, in a thread, until the block ends.

    Waits until uvicorn has started and `ready()` is true (or `timeout` passes; the caller checks).
    """
    import socket

    import uvicorn

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    runner = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=runner.run, name=name, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and thread.is_alive() and not (runner.started and ready()):
        time.sleep(0.02)
    try:
        if not runner.started:
            raise RuntimeError(f"{name} did not start on 127.0.0.1:{port}")
        yield f"http://127.0.0.1:{port}"
    finally:
        runner.should_exit = True
        thread.join(timeout=60)


@contextmanager
def serve_in_background(config: ProjectConfig, *, timeout: float = 300.0) -> Iterator[tuple[str, Server]]:
    """(base URL, server) of a server under uvicorn on a free 127.0.0.1 port, ready, until the block ends.

    For tests, benchmarks and notebooks; `tunesmith serve` is the way to run one for real.
    """
    server = Server(config)
    app = create_app(server)

    def ready() -> object:
        return server.ready or server.startup_error

    with uvicorn_in_background(app, name="tunesmith-uvicorn", ready=ready, timeout=timeout) as url:
        if not server.ready:
            raise RegistryError(f"the server did not become ready: {server.startup_error or 'timed out'}")
        yield url, server
