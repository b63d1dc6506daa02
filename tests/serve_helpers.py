"""A project with two LoRA versions of a tiny model, and a real tunesmith server on 127.0.0.1 for it."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx2 as httpx  # the HTTP client the openai package ships with
import uvicorn

from tunesmith.config import ProjectConfig, load_config
from tunesmith.serve import Server, create_app


@contextmanager
def running(config: ProjectConfig, *, wait_ready: bool = True) -> Iterator[tuple[str, Server]]:
    """(base URL, server) of a server under a real uvicorn until the block ends."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = Server(config)
    app = create_app(server)
    uv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        if uv.started and (not wait_ready or server.ready or server.startup_error):
            break
        time.sleep(0.05)
    assert uv.started, "uvicorn did not start"
    if wait_ready:
        assert server.ready, f"server not ready: {server.startup_error}"
    try:
        yield url, server
    finally:
        uv.should_exit = True
        thread.join(timeout=60)


def wait_for(predicate, timeout: float = 30.0, every: float = 0.1):  # noqa: ANN001, ANN201
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


def project_config(path: Path, settings: list[str]) -> ProjectConfig:
    return load_config(path, settings)
