"""Two `tunesmith serve` replicas on one PostgreSQL store, as behind a load balancer: an alias move made
through one is followed by both, a rollout steps once per hold, both write the request log, and
killing one loses nothing the other answered."""

from __future__ import annotations

import itertools
import signal
import time
from datetime import datetime

import httpx2 as httpx
from sqlalchemy import select

from serve_helpers import free_port, ready, start_cli_server, wait_for
from tunesmith.config import load_config
from tunesmith.pipeline import write_demo_project
from tunesmith.registry.aliases import promote
from tunesmith.registry.versions import alias_target
from tunesmith.store import RequestLog, Rollout, session
from tunesmith.train.run import train
from tunesmith.workspace import open_workspace

FOLLOW_SECONDS = 10  # an alias move reaches every replica within poll_seconds plus a load and warm-up


def ask(url: str, model: str, text: str) -> tuple[str, str]:
    """(request id, version that answered) of one chat completion."""
    body = {"model": model, "max_tokens": 4, "messages": [{"role": "user", "content": text}]}
    response = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60)
    assert response.status_code == 200, response.text
    return response.headers["x-request-id"], response.headers["x-tunesmith-version"]


def test_two_replicas_on_one_postgresql_store_follow_each_other_and_lose_nothing(
    tmp_path, tiny_model_dir, postgres_server, monkeypatch
):
    monkeypatch.setenv("TUNESMITH_DB_URL", postgres_server())  # the replicas inherit it
    config_path = write_demo_project(tmp_path)
    family = "fernwick-support"
    route = f"{family}@production"  # what clients ask for
    settings = [f"model.id={tiny_model_dir}", "train.method=lora", "train.epochs=1", "train.save_strategy=no"]
    settings += [
        "train.forgetting.probe=false",
        "serve.auth=none",
        "serve.poll_seconds=0.5",
        "registry.gated=[]",
    ]
    settings += [
        f"serve.routes=[{{model: '{route}', rollout: {{steps: [50, 100], gates: [], hold_minutes: 0.03}}}}]"
    ]
    first = train(load_config(config_path, settings)).version
    second = train(load_config(config_path, [*settings, "train.seed=1", "train.lr=1e-1"])).version
    config = load_config(config_path, settings)
    workspace = open_workspace(config)
    promote(workspace, config.registry, first, "production", force=True, reason="test")

    ports = [free_port(), free_port()]
    servers = [start_cli_server(config_path, settings, port) for port in ports]
    a, b = (f"http://127.0.0.1:{port}" for port in ports)
    try:
        for url in (a, b):
            wait_for(lambda url=url: ready(url), timeout=180, every=0.2)
        assert {ask(url, route, "when do you open?")[1] for url in (a, b)} == {first.name}

        # a promotion through replica A: A follows at once, B within FOLLOW_SECONDS
        moved = httpx.post(
            f"{a}/admin/promote", json={"version": second.name, "alias": "production"}, timeout=60
        )
        assert moved.status_code == 200, moved.text
        assert ask(a, route, "and on sundays?")[1] == second.name
        started = time.monotonic()
        wait_for(
            lambda: ask(b, route, "and on sundays?")[1] == second.name, timeout=FOLLOW_SECONDS, every=0.2
        )
        print(f"replica B followed the promotion in {time.monotonic() - started:.1f} s")

        # a rollout back to the first version, ticked by both replicas: each step decided once
        body = {"route": route, "version": first.name}
        started_rollout = httpx.post(f"{b}/admin/rollouts", json=body, timeout=60)
        assert started_rollout.status_code == 200, started_rollout.text
        rollout_id = started_rollout.json()["id"]

        def finished() -> Rollout | None:
            with session(workspace.engine) as s:
                row = s.get(Rollout, rollout_id)
            return row if row is not None and row.status not in ("running", "promoting") else None

        done = wait_for(finished, timeout=60, every=0.2)
        assert done.status == "completed", done.history
        assert [h["event"] for h in done.history] == ["start", "advance", "complete"]  # no step twice
        hold = 0.03 * 60
        at = [datetime.fromisoformat(h["at"]) for h in done.history]
        assert all((later - earlier).total_seconds() >= hold for earlier, later in itertools.pairwise(at))
        wait_for(
            lambda: {ask(url, route, "hello")[1] for url in (a, b)} == {first.name}, timeout=FOLLOW_SECONDS
        )

        # both write the request log; B keeps answering and logging when A dies
        from_a = [ask(a, route, f"question {i} for a")[0] for i in range(3)]
        servers[0].send_signal(signal.SIGKILL)
        servers[0].wait(timeout=30)
        from_b = [ask(b, route, f"question {i} for b")[0] for i in range(3)]

        def logged() -> set[str]:
            with session(workspace.engine) as s:
                ids = s.scalars(select(RequestLog.id).where(RequestLog.id.in_(from_a + from_b)))
                return set(ids)

        wait_for(lambda: set(from_b) <= logged(), timeout=30, every=0.2)
    finally:
        for server in servers:
            if server.poll() is None:
                server.send_signal(signal.SIGTERM)
                server.wait(timeout=60)
    restarted = start_cli_server(config_path, settings, ports[0])  # A's journal: what it answered, replayed
    try:
        wait_for(lambda: ready(a), timeout=180, every=0.2)
        wait_for(lambda: set(from_a) <= logged(), timeout=30, every=0.2)
    finally:
        restarted.send_signal(signal.SIGTERM)
        restarted.wait(timeout=60)
    assert alias_target(workspace, family, "production").id == first.id
