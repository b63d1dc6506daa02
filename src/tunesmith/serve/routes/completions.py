"""`POST /v1/chat/completions` and `POST /v1/completions`, both with `stream`."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, Response

from tunesmith.serve.keys import Caller
from tunesmith.serve.routes.deps import body, caller, parse, require_ready
from tunesmith.serve.schemas import ChatCompletionRequest, CompletionRequest
from tunesmith.serve.server import Server

router = APIRouter()


@router.post("/v1/chat/completions", response_model=None, openapi_extra=body(ChatCompletionRequest))
async def chat_completions(
    request: Request, who: Caller = Depends(caller), server: Server = Depends(require_ready)
) -> Response:
    return await server.answer(request, await parse(request, ChatCompletionRequest), who)


@router.post("/v1/completions", response_model=None, openapi_extra=body(CompletionRequest))
async def completions(
    request: Request, who: Caller = Depends(caller), server: Server = Depends(require_ready)
) -> Response:
    return await server.answer(request, await parse(request, CompletionRequest), who)
