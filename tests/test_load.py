"""A bounded load test against a real uvicorn on 127.0.0.1: 16 concurrent clients for a fixed time,
twice. No 5xx; overload is answered 429 with Retry-After; memory settles; every answered request
is in the request log."""

from __future__ import annotations

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


def hammer(url: str, model: str, seconds: float) -> list[tuple[int, str | None, str | None]]:
    """(status, Retry-After, request id) of every request that CLIENTS clients sent for `seconds`."""
    answers: list[tuple[int, str | None, str | None]] = []
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def client(n: int) -> None:
        with httpx.Client(base_url=url, timeout=60) as session:
            i = 0
            while time.monotonic() < stop:
                i += 1
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
                        )
                    )
                if response.status_code == 429:
                    time.sleep(0.05)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(CLIENTS)]
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
        answered = {rid for status, _, rid in first + second if status == 200}
        with session(server.workspace.engine) as s:
            logged = set(s.scalars(select(RequestLog.id).where(RequestLog.id.in_(answered))))
    statuses = Counter(status for status, _, _ in first + second)
    print(f"\nload: {dict(statuses)} in 2 × {SECONDS:g} s, RSS {after_first:.0f} → {after_second:.0f} MiB")
    assert not [s for s in statuses if s >= 500], statuses
    assert set(statuses) <= {200, 429}, statuses
    assert statuses[200] > 50 and statuses[429] > 0, statuses  # it answered, and it was overloaded
    assert all(retry and int(retry) >= 1 for status, retry, _ in first + second if status == 429)
    assert logged == answered, f"{len(answered - logged)} answered requests are missing from the log"
    assert after_second - after_first < 60, (after_first, after_second)  # memory settles under load
