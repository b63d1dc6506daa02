"""What the routes share: the server of the app, the caller of a request (by API key), the admin
check, and reading a request body as OpenAI does (its errors OpenAI-shaped, a body over the limit
refused before it is parsed)."""

from __future__ import annotations

import json
from typing import Any

from fastapi import Depends, Request
from pydantic import BaseModel, ValidationError

from tunesmith.serve.keys import Caller
from tunesmith.serve.schemas import ApiError
from tunesmith.serve.server import Server

# Request models that routes read themselves: the app puts their schemas into its OpenAPI document.
BODIES: list[type[BaseModel]] = []


def body(model: type[BaseModel]) -> dict[str, Any]:
    """The `openapi_extra` of a route that reads `model` itself, which declares it as the request body."""
    BODIES.append(model)
    schema = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def server_of(request: Request) -> Server:
    """The `Server` the app was made for."""
    server: Server = request.app.state.server
    return server


def caller(request: Request) -> Caller:
    """Who calls, by the `Authorization: Bearer KEY` header; 401 without an active key (unless the
    server was started with `serve.auth: none`)."""
    header = request.headers.get("authorization", "")
    token = header[7:].strip() if header.lower().startswith("bearer ") else None
    keys = server_of(request).keys
    who = keys.authenticate(token)
    if who is None:
        raise ApiError(401, keys.refusal(token), code="invalid_api_key")
    return who


def admin(who: Caller = Depends(caller)) -> Caller:
    """The caller, if its key has the admin scope; 403 otherwise."""
    if not who.admin:
        raise ApiError(
            403, f"the key {who.name!r} has no admin scope", type="permission_error", code="forbidden"
        )
    return who


async def parse(request: Request, model: type[BaseModel]) -> Any:
    """The request body as `model`: 413 over `serve.max_request_bytes`, 400 naming the first bad field."""
    limit = server_of(request).serve.max_request_bytes
    declared = request.headers.get("content-length")
    too_large = ApiError(
        413, f"the request body is over the server's limit of {limit} bytes", code="request_too_large"
    )
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large
    raw = await request.body()
    if len(raw) > limit:
        raise too_large
    try:
        data = json.loads(raw or b"null")
    except ValueError as exc:
        raise ApiError(400, f"the body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ApiError(400, "the body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or None
        message = str(first["msg"]).removeprefix("Value error, ")
        raise ApiError(400, f"{where}: {message}" if where else message, param=where) from None


def require_ready(request: Request) -> Server:
    """The server, once it has loaded its models; 503 with Retry-After before."""
    server = server_of(request)
    if not server.ready:
        raise ApiError(
            503,
            server.startup_error or "the server is still loading its models; see GET /ready",
            type="server_error",
            code="not_ready",
            headers={"Retry-After": "5"},
        )
    return server
