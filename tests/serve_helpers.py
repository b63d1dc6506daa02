"""Helpers for server tests: waiting for a condition, reading one Prometheus metric."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx2 as httpx  # the HTTP client the openai package ships with
import uvicorn
from fastapi import FastAPI, Request


def wait_for(predicate, timeout: float = 30.0, every: float = 0.1):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError("condition not met in time")


def metric(url: str, name: str, **labels: str) -> float:
    """The sum of a Prometheus metric's samples that carry `labels` (0 when there are none)."""
    text = httpx.get(f"{url}/metrics").text
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_cli_server(config_path: Path, settings: list[str], port: int) -> subprocess.Popen[str]:
    """`tunesmith serve` in a process of its own, its output (stdout and stderr) on a pipe."""
    command = [sys.executable, "-m", "tunesmith.cli", "serve", "--config", str(config_path)]
    command += ["--port", str(port), *[a for s in settings for a in ("--set", s)]]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/ready").status_code == 200
    except httpx.TransportError:
        return False


@contextmanager
def webhook_receiver() -> Iterator[tuple[str, list[dict]]]:
    """(URL, received JSON bodies) of a local HTTP receiver under uvicorn, until the block ends."""
    received: list[dict] = []
    app = FastAPI()

    @app.post("/hook")
    async def hook(request: Request) -> dict:
        received.append(await request.json())
        return {"ok": True}

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for(lambda: server.started, timeout=20, every=0.05)
    try:
        yield f"http://127.0.0.1:{port}/hook", received
    finally:
        server.should_exit = True
        thread.join(timeout=10)
