"""Bounded load tests against a real uvicorn on 127.0.0.1.

16 concurrent clients for a fixed time, twice: no 5xx; overload is answered 429 with Retry-After;
memory settles; every answered request is in the request log. Two API keys at 4:1 request rates for
60 s (16 clients on one key, 4 on the other, enough to fill the queue): both are served, the light
one is not refused for the heavy one's traffic, and memory stays flat."""

from __future__ import annotations

import statistics
import threading
import time
from collections import Counter
from pathlib import Path

import httpx2 as httpx

from tunesmith.config import load_config

CLIENTS = 16
SECONDS = 5.0


def rss_mb() -> float:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * 4096 / 2**20


def hammer(
    url: str, model: str, seconds: float, clients: int = CLIENTS, key: str | None = None
) -> list[tuple[int, str | None, str | None, float]]:
    """(status, Retry-After, request id, seconds) of every request `clients` clients sent for `seconds`."""
    answers: list[tuple[int, str | None, str | None, float]] = []
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def client(n: int) -> None:
        headers = {"authorization": f"Bearer {key}"} if key else {}
        with httpx.Client(base_url=url, timeout=60, headers=headers) as session:
            i = 0
            while time.monotonic() < stop:
                i += 1
                sent = time.monotonic()
                response = session.post(
                    "/v1/chat/completions",
                    json={
                        "model": model,
                        "messages": [
                            {"role": "user", "content": f"client {n} question {i}: when do you open?"}
                        ],
                        "max_tokens": 6,
                        "user": f"load-{n}",
                    },
                )
                with lock:
                    answers.append(
                        (
                            response.status_code,
                            response.headers.get("retry-after"),
                            response.headers.get("x-request-id"),
                            time.monotonic() - sent,
                        )
                    )
                if response.status_code == 429:
                    time.sleep(0.05)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return answers


def test_sixteen_clients_get_no_5xx_429_with_retry_after_and_every_answer_is_logged(serve_project):
    from sqlalchemy import select

    from tunesmith.serve import serve_in_background
    from tunesmith.store import RequestLog, session

    config = load_config(
        serve_project["path"],
        [*serve_project["settings"], "serve.max_queue=6", "serve.max_batch_size=4", "serve.batch_wait_ms=2"],
    )
    with serve_in_background(config) as (url, server):
        hammer(url, serve_project["family"], 1.0)  # warm-up: first allocations, caches
        first = hammer(url, serve_project["family"], SECONDS)
        after_first = rss_mb()
        second = hammer(url, serve_project["family"], SECONDS)
        after_second = rss_mb()
        server.request_log.flush()
        answered = {rid for status, _, rid, _ in first + second if status == 200}
        with session(server.workspace.engine) as s:
            logged = set(s.scalars(select(RequestLog.id).where(RequestLog.id.in_(answered))))
    statuses = Counter(status for status, *_ in first + second)
    print(f"\nload: {dict(statuses)} in 2 × {SECONDS:g} s, RSS {after_first:.0f} → {after_second:.0f} MiB")
    assert not [s for s in statuses if s >= 500], statuses
    assert set(statuses) <= {200, 429}, statuses
    assert statuses[200] > 50 and statuses[429] > 0, statuses  # it answered, and it was overloaded
    assert all(retry and int(retry) >= 1 for status, retry, *_ in first + second if status == 429)
    assert logged == answered, f"{len(answered - logged)} answered requests are missing from the log"
    assert after_second - after_first < 60, (after_first, after_second)  # memory settles under load


def test_two_keys_at_four_to_one_are_both_served_and_memory_stays_flat_for_a_minute(serve_project):
    from tunesmith.serve import serve_in_background
    from tunesmith.serve.keys import create_key, revoke_key

    config = load_config(
        serve_project["path"],
        [*serve_project["settings"], "serve.auth=keys", "serve.max_queue=8", "serve.max_batch_size=4"],
    )
    from tunesmith.workspace import open_workspace

    workspace = open_workspace(config)
    heavy, light = (create_key(workspace, name)[1] for name in ("heavy-load", "light-load"))
    try:
        with serve_in_background(config) as (url, _):
            hammer(url, serve_project["family"], 1.0, clients=2, key=light)  # warm-up
            results: dict[str, list] = {}
            samples: list[float] = []

            def run(name: str, key: str, clients: int) -> None:
                results[name] = hammer(url, serve_project["family"], 60.0, clients=clients, key=key)

            runs = [
                threading.Thread(target=run, args=("heavy", heavy, 16)),
                threading.Thread(target=run, args=("light", light, 4)),
            ]
            for thread in runs:
                thread.start()
            for _ in range(6):
                time.sleep(10)
                samples.append(rss_mb())
            for thread in runs:
                thread.join()
    finally:
        revoke_key(workspace, "heavy-load")
        revoke_key(workspace, "light-load")
    heavy_statuses = Counter(s for s, *_ in results["heavy"])
    light_statuses = Counter(s for s, *_ in results["light"])
    heavy_wait, light_wait = (
        statistics.median(t for s, _, _, t in results[k] if s == 200) for k in ("heavy", "light")
    )
    print(
        f"\n4:1 load for 60 s: heavy {dict(heavy_statuses)} (median {heavy_wait:.2f} s), "
        f"light {dict(light_statuses)} (median {light_wait:.2f} s), RSS {samples}"
    )
    assert set(heavy_statuses) | set(light_statuses) <= {200, 429}
    assert heavy_statuses[200] > 0 and light_statuses[200] > 0  # both served
    # the light key is never refused for the heavy one's traffic: its share of the queue is its own
    assert light_statuses[429] <= 0.05 * sum(light_statuses.values()), light_statuses
    assert heavy_statuses[429] > 0, heavy_statuses  # the heavy key was held to its share
    assert max(samples[1:]) - samples[1] < 60, samples  # flat after the first 20 s
