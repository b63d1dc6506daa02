"""A small OpenAI-compatible chat completions server whose 'model' is a rule, for judge tests.

It runs under a real uvicorn on 127.0.0.1 and is called through the official `openai` client, so
everything between tunesmith and a hosted judge API is exercised except the hosted model itself.

Model `fair`: rates a response 5 when it contains the reference answer's key word, 2 otherwise,
and prefers the response that contains it. Model `first`: always prefers response A (a judge with
pure position bias). Model `nologprobs`: like `fair` but rejects `logprobs`, as some servers do.
"""

from __future__ import annotations

import math
import re
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn
from fastapi import FastAPI, HTTPException, Request


def _section(prompt: str, title: str) -> str:
    match = re.search(rf"{title}:\n(.*?)(?:\n\n|\Z)", prompt, flags=re.S)
    return match.group(1).strip() if match else ""


def _key(prompt: str) -> str:
    reference = _section(prompt, "Reference answer")
    words = [w for w in re.findall(r"\w+", reference) if len(w) > 3]
    return words[-1].lower() if words else ""


def decide(model: str, prompt: str) -> str:
    key = _key(prompt)
    if "Response A:" in prompt:
        if model == "first":
            return "A"
        a, b = key in _section(prompt, "Response A").lower(), key in _section(prompt, "Response B").lower()
        return "A" if a and not b else "B" if b and not a else "T"
    if "Evaluation steps:" not in prompt:
        return "1. Check the facts against the reference.\n2. Check that the request is answered."
    return "5" if key and key in _section(prompt, "Response").lower() else "2"


def make_app() -> FastAPI:
    app = FastAPI()
    app.state.calls = 0
    app.state.keys = []  # the bearer token of each call: which key reached this host

    @app.post("/v1/chat/completions")
    async def completions(request: Request) -> dict[str, Any]:
        body = await request.json()
        app.state.calls += 1
        app.state.keys.append(request.headers.get("authorization", "").removeprefix("Bearer "))
        model = body["model"]
        if model == "nologprobs" and body.get("logprobs"):
            raise HTTPException(status_code=400, detail="logprobs are not supported")
        text = decide(model, body["messages"][-1]["content"])
        choice: dict[str, Any] = {
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "finish_reason": "stop",
        }
        if body.get("logprobs"):
            others = [t for t in ("1", "2", "3", "4", "5", "A", "B", "T") if t != text][:4]
            top = [{"token": text, "logprob": math.log(0.9), "bytes": None}]
            top += [{"token": t, "logprob": math.log(0.025), "bytes": None} for t in others]
            choice["logprobs"] = {
                "content": [{"token": text, "logprob": math.log(0.9), "bytes": None, "top_logprobs": top}]
            }
        return {
            "id": "judge-1",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [choice],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }

    return app


@contextmanager
def serve(app: FastAPI | None = None) -> Iterator[tuple[str, FastAPI]]:
    """(base URL ending in /v1, the app) of a server running until the block ends (the judge by default)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    app = app or make_app()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}/v1", app
    finally:
        server.should_exit = True
        thread.join(timeout=10)
