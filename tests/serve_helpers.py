"""Helpers for server tests: waiting for a condition, reading one Prometheus metric."""

from __future__ import annotations

import time

import httpx2 as httpx  # the HTTP client the openai package ships with


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
