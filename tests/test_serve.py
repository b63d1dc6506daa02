"""The server through the official `openai` client against a real uvicorn on 127.0.0.1."""

from __future__ import annotations

import concurrent.futures
import json
import os
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx2 as httpx  # the HTTP client the openai package ships with
import openai
import pytest
from typer.testing import CliRunner

from serve_helpers import metric, ready, start_cli_server, wait_for
from tunesmith.cli import app
from tunesmith.config import load_config
from tunesmith.pipeline import write_demo_project
from tunesmith.registry.aliases import promote
from tunesmith.registry.versions import get_version
from tunesmith.serve import serve_in_background as running
from tunesmith.store import RequestLog, session
from tunesmith.train.run import train
from tunesmith.workspace import open_workspace

runner = CliRunner()
QUESTION = [{"role": "user", "content": "When does the Fernwick library open?"}]


@pytest.fixture
def project(serve_project: dict) -> dict:
    return serve_project


def config_of(project: dict, *extra: str):
    return load_config(project["path"], [*project["settings"], "serve.poll_seconds=0.2", *extra])


def client(url: str, key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)


@contextmanager
def serving(project: dict, *extra: str) -> Iterator[tuple[openai.OpenAI, str, Any]]:
    """The project served with `extra` settings: an OpenAI client for it, its URL and the server."""
    with running(config_of(project, *extra)) as (url, server):
        yield client(url), url, server


def test_the_openai_client_works_unchanged_streaming_included(project):
    family = project["family"]
    with serving(project) as (api, url, server):
        raw = api.chat.completions.with_raw_response.create(
            model=f"{family}@production", messages=QUESTION, max_tokens=6, temperature=0
        )
        answer = raw.parse()
        assert raw.headers["x-tunesmith-version"] == project["first"] == answer.model
        assert raw.headers["x-tunesmith-route"] == "primary"
        assert answer.choices[0].finish_reason in ("stop", "length")
        assert answer.usage.completion_tokens <= 6 and answer.usage.prompt_tokens > 0

        chunks = list(
            api.chat.completions.create(
                model=f"{family}@production",
                messages=QUESTION,
                max_tokens=6,
                temperature=0,
                stream=True,
                stream_options={"include_usage": True},
            )
        )
        streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert streamed == answer.choices[0].message.content
        assert chunks[-1].usage.completion_tokens == answer.usage.completion_tokens
        assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == answer.choices[
            0
        ].finish_reason

        by_version = api.chat.completions.create(
            model=project["first"], messages=QUESTION, max_tokens=6, temperature=0
        )
        by_family = api.chat.completions.create(model=family, messages=QUESTION, max_tokens=6, temperature=0)
        assert by_version.choices[0].message.content == by_family.choices[0].message.content == streamed

        sampled = api.chat.completions.create(
            model=family, messages=QUESTION, max_tokens=8, temperature=1.0, top_p=0.9, n=3, seed=7
        )
        again = api.chat.completions.create(
            model=family, messages=QUESTION, max_tokens=8, temperature=1.0, top_p=0.9, n=3, seed=7
        )
        assert [c.index for c in sampled.choices] == [0, 1, 2]
        assert [c.message.content for c in sampled.choices] == [c.message.content for c in again.choices]

        completion = api.completions.create(
            model=family, prompt=["The library", "Opening hours"], max_tokens=4, temperature=0
        )
        assert [c.index for c in completion.choices] == [0, 1] and completion.object == "text_completion"
        stream = list(
            api.completions.create(
                model=family, prompt="The library", max_tokens=4, temperature=0, stream=True
            )
        )
        assert "".join(c.choices[0].text for c in stream) == completion.choices[0].text

        assert api.models.retrieve(f"{family}@production").version == project["first"]
        ids = {m.id for m in api.models.list().data}
        assert {f"{family}@production", project["first"], project["second"]} <= ids

        with pytest.raises(openai.NotFoundError, match="does not exist"):
            api.chat.completions.create(model="nobody@production", messages=QUESTION)
        with pytest.raises(openai.BadRequestError, match="max_tokens is too large"):
            api.chat.completions.create(model=family, messages=QUESTION, max_tokens=10**5)
        with pytest.raises(openai.BadRequestError, match="maximum context length is 256 tokens"):
            api.chat.completions.create(model=family, messages=QUESTION, max_tokens=250)
        unbounded = api.chat.completions.create(model=family, messages=QUESTION)  # default fits the window
        assert unbounded.usage.prompt_tokens + unbounded.usage.completion_tokens <= 256
        with pytest.raises(openai.BadRequestError, match="functions"):  # the legacy field: refused by name
            api.chat.completions.create(
                model=family,
                messages=QUESTION,
                extra_body={"functions": [{"name": "f", "parameters": {}}]},
            )
        bad = httpx.post(
            f"{url}/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"}
        )
        assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_request_error"
        assert httpx.get(f"{url}/health").json() == {"status": "ok"}
        assert httpx.get(f"{url}/ready").json()["models"][f"{family}@production"] == project["first"]
        assert metric(url, "tunesmith_requests_total", version=project["first"], status="200") >= 6

        server.request_log.flush()
        with session(server.workspace.engine) as s:
            row = s.get(RequestLog, raw.headers["x-request-id"])
        assert row.output == [answer.choices[0].message.content]
        assert row.prompt == QUESTION and row.route == "primary" and row.ttft_ms is not None
        assert row.tokens_out == answer.usage.completion_tokens


def cli(project: dict, *args: str):
    return runner.invoke(app, [*args, "--config", str(project["path"])])


def test_alias_moves_swap_without_restart_and_a_failed_load_keeps_the_old_version(project):
    family, first, second = project["family"], project["first"], project["second"]
    with serving(project) as (api, url, server):

        def served() -> str:
            raw = api.chat.completions.with_raw_response.create(model=family, messages=QUESTION, max_tokens=2)
            return raw.headers["x-tunesmith-version"]

        assert served() == first
        stream = api.completions.create(
            model=family, prompt="The library", max_tokens=64, temperature=0, stream=True
        )
        head = next(iter(stream))
        promoted = httpx.post(
            f"{url}/admin/promote",
            json={"version": second, "alias": "production", "force": True, "reason": "swap test"},
        )
        assert promoted.status_code == 200, promoted.text
        assert promoted.json()["swaps"] == [
            {"model": f"{family}@production", "version": second, "result": "swapped"}
        ]
        rest = list(stream)
        assert {c.model for c in [head, *rest]} == {
            first
        }  # the in-flight request finished on the old version
        assert served() == second

        rolled = cli(project, "registry", "rollback", family, "--reason", "back")
        assert rolled.exit_code == 0, rolled.output
        wait_for(lambda: served() == first)  # the CLI moved the alias; the server followed within a poll

        adapter = Path(get_version(server.workspace, second).path) / "adapter_model.safetensors"
        good = adapter.read_bytes()
        wait_for(lambda: server.table.refresh(force=True) is not None and len(server.backend.loaded()) == 1)
        try:
            adapter.write_bytes(b"not a safetensors file")
            moved = httpx.post(
                f"{url}/admin/promote",
                json={"version": second, "alias": "production", "force": True, "reason": "broken"},
            )
            assert moved.json()["swaps"][0]["result"] == "failed"
            assert served() == first
            assert metric(url, "tunesmith_model_swaps_total", result="failed") == 1
        finally:
            adapter.write_bytes(good)
            rollback = httpx.post(f"{url}/admin/rollback", json={"family": family, "reason": "restore"})
            assert rollback.status_code == 200


def test_a_swap_between_routing_and_queueing_routes_the_request_again(project, monkeypatch):
    """The registry poll may swap an alias after a request is routed and before its jobs are queued:
    the request is routed again and answered by the new version, never 500 for one just unloaded."""
    family, first, second = project["family"], project["first"], project["second"]
    config = config_of(project, "serve.poll_seconds=600")
    with running(config) as (url, server):
        old = get_version(server.workspace, first)
        ensure, armed = server.table.ensure, [True]

        def swap_after_routing(name: str):
            version = ensure(name)
            if armed.pop() if armed else False:
                new = get_version(server.workspace, second)
                promote(server.workspace, config.registry, new, "production", force=True, reason="race")
                assert server.table.refresh() == [(f"{family}@production", second, "swapped")]
                wait_for(lambda: old.id not in server.backend.loaded())
            return version

        monkeypatch.setattr(server.table, "ensure", swap_after_routing)
        raw = client(url).chat.completions.with_raw_response.create(
            model=family, messages=QUESTION, max_tokens=2
        )
        assert raw.headers["x-tunesmith-version"] == second
        promote(server.workspace, config.registry, old, "production", force=True, reason="restore")


def test_a_route_whose_shadow_and_canary_aliases_are_not_set_yet_serves_and_follows_them(project):
    """A server started before its shadow or canary alias is set (the closed loop's first day) serves
    the primary, and mirrors or splits once the registry sets the alias."""
    from tunesmith.registry.versions import move_alias

    family, first, second = project["family"], project["first"], project["second"]
    route = (
        f"serve.routes=[{{model: '{family}@production', shadow: '{family}@staging', "
        f"canary: [{{to: '{family}@staging', percent: 50}}]}}]"
    )
    with serving(project, route) as (api, _, server):

        def ask(user: int) -> Any:
            return api.chat.completions.with_raw_response.create(
                model=f"{family}@production", messages=QUESTION, max_tokens=2, user=f"user-{user}"
            ).headers

        before = [ask(user) for user in range(8)]
        assert {h["x-tunesmith-version"] for h in before} == {first}
        assert all("x-tunesmith-shadow" not in h for h in before)
        try:
            staged = get_version(server.workspace, second)
            move_alias(server.workspace, family, "staging", staged, reason="test")
            wait_for(lambda: any(ask(user)["x-tunesmith-version"] == second for user in range(8)), timeout=10)
            after = [ask(user) for user in range(8)]
            assert {h["x-tunesmith-route"] for h in after} == {"primary", "canary"}
            assert all(h["x-tunesmith-shadow"] == second for h in after if h["x-tunesmith-version"] == first)
        finally:
            move_alias(server.workspace, family, "staging", None, reason="test done")


def test_canary_is_sticky_rules_route_by_header_and_the_shadow_is_logged_not_returned(project):
    family, first, second = project["family"], project["first"], project["second"]
    route = (
        f"serve.routes=[{{model: '{family}@production', canary: [{{to: {second}, percent: 50}}], "
        f"shadow: {second}, rules: [{{name: beta, to: {second}, headers: {{x-beta: '1'}}}}]}}]"
    )
    with serving(project, route) as (api, url, server):
        seen: dict[str, set[str]] = {}
        shadowed: list[str] = []
        for _ in range(2):
            for user in range(16):
                raw = api.chat.completions.with_raw_response.create(
                    model=f"{family}@production", messages=QUESTION, max_tokens=2, user=f"user-{user}"
                )
                version = raw.headers["x-tunesmith-version"]
                seen.setdefault(f"user-{user}", set()).add(version)
                assert raw.headers["x-tunesmith-route"] == ("canary" if version == second else "primary")
                if version == first:
                    assert raw.headers["x-tunesmith-shadow"] == second
                    shadowed.append(raw.headers["x-request-id"])
                else:
                    assert "x-tunesmith-shadow" not in raw.headers
        assert all(len(v) == 1 for v in seen.values())  # sticky per user
        assert {next(iter(v)) for v in seen.values()} == {first, second}
        beta = api.chat.completions.with_raw_response.create(
            model=f"{family}@production",
            messages=QUESTION,
            max_tokens=2,
            user="user-0",
            extra_headers={"x-beta": "1"},
        )
        assert (
            beta.headers["x-tunesmith-version"] == second and beta.headers["x-tunesmith-route"] == "rule:beta"
        )

        wait_for(
            lambda: (
                metric(url, "tunesmith_shadow_requests_total", version=second, status="200") == len(shadowed)
            )
        )
        server.request_log.flush()
        with session(server.workspace.engine) as s:  # (other tests' shadows share the store)
            shadows = list(
                s.query(RequestLog).filter(RequestLog.route == "shadow", RequestLog.shadow_of.in_(shadowed))
            )
        assert sorted(r.shadow_of for r in shadows) == sorted(shadowed)
        assert {r.version_id for r in shadows} == {get_version(server.workspace, second).id}
        assert metric(url, "tunesmith_requests_total", route="canary") > 0


def test_concurrent_requests_for_two_adapters_are_batched_and_answer_as_alone(project):
    first, second = project["first"], project["second"]
    prompts = [f"Question {i}: when does the library open?" for i in range(8)]
    settings = ["serve.batch_wait_ms=100", "serve.backend=transformers"]  # its batches, looked into
    with serving(project, *settings) as (api, url, server):

        def ask(i: int) -> str:
            answer = api.completions.create(
                model=[first, second][i % 2], prompt=prompts[i], max_tokens=8, temperature=0
            )
            return answer.choices[0].text

        alone = [ask(i) for i in range(8)]
        batches_before = metric(url, "tunesmith_batch_sequences_count")
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            together = list(pool.map(ask, range(8)))
        batches = metric(url, "tunesmith_batch_sequences_count") - batches_before
        assert together == alone
        assert batches < 8  # some requests shared a batch (of both adapters on one base)
        assert len(server.backend._groups) == 1


def test_runtime_config_reloads_on_edit_and_a_bad_edit_keeps_the_old_settings(project, tmp_path):
    family = project["family"]
    runtime = tmp_path / "serve.yaml"
    runtime.write_text(
        f"models:\n  {family}:\n    system_prompt: You are Fern.\n    max_tokens: 3\n", encoding="utf-8"
    )
    with serving(project, f"serve.runtime_config={runtime}") as (api, url, server):

        def system_prompt() -> str:
            answer = api.chat.completions.with_raw_response.create(model=family, messages=QUESTION)
            server.request_log.flush()
            with session(server.workspace.engine) as s:
                row = s.get(RequestLog, answer.headers["x-request-id"])
            assert answer.parse().usage.completion_tokens <= 3
            return row.prompt[0]["content"]

        assert system_prompt() == "You are Fern."
        runtime.write_text(f"models:\n  {family}:\n    temperature: 5\n", encoding="utf-8")
        refused = httpx.post(f"{url}/admin/reload")
        assert refused.status_code == 400 and "temperature" in refused.json()["error"]["message"]
        assert "serve.yaml:3" in refused.json()["error"]["message"]
        assert system_prompt() == "You are Fern."  # the old settings keep serving
        runtime.write_text(
            f"models:\n  {family}:\n    system_prompt: You are Wick.\n    max_tokens: 3\n", encoding="utf-8"
        )
        wait_for(lambda: system_prompt() == "You are Wick.")  # picked up from the file, no restart
        assert metric(url, "tunesmith_config_reloads_total", result="rejected") >= 1


def test_stop_and_the_penalties_work_through_the_client(project):
    family = project["family"]
    with serving(project) as (api, _, _):
        ask = {"model": family, "messages": QUESTION, "max_tokens": 24, "temperature": 0}
        whole = api.chat.completions.create(**ask).choices[0].message.content
        assert len(whole) > 6, whole
        cut = whole[len(whole) // 2 :][:3]  # a piece from the middle of the greedy answer
        stopped = api.chat.completions.create(**ask, stop=[cut]).choices[0]
        assert stopped.message.content == whole[: whole.index(cut)] and stopped.finish_reason == "stop"
        streamed = api.chat.completions.create(**ask, stop=cut, stream=True)
        assert (
            "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
            == whole[: whole.index(cut)]
        )
        long = {**ask, "max_tokens": 40}
        plain = api.chat.completions.create(**long).choices[0].message.content
        for name in ("presence_penalty", "frequency_penalty"):
            assert api.chat.completions.create(**long, **{name: 0}).choices[0].message.content == plain
            penalised = api.chat.completions.create(**long, **{name: 2.0}).choices[0].message.content
            assert penalised != plain  # applied, not ignored
            words = penalised.split()
            assert len(set(words)) >= len(set(plain.split())) or len(words) < len(plain.split())
        with pytest.raises(openai.BadRequestError, match="frequency_penalty"):
            api.chat.completions.create(**ask, frequency_penalty=3)  # OpenAI's range is -2 to 2


def test_unknown_model_names_are_one_metric_label(project):
    with running(config_of(project)) as (url, _):
        for i in range(12):
            missing = httpx.post(
                f"{url}/v1/chat/completions", json={"model": f"made-up-{i}", "messages": QUESTION}
            )
            assert missing.status_code == 404
        text = httpx.get(f"{url}/metrics").text
        assert "made-up-" not in text
        assert metric(url, "tunesmith_requests_total", model="(unrouted)", status="404") >= 12


def test_api_keys_scopes_groups_and_revocation(project):
    family, second = project["family"], project["second"]
    created = cli(project, "serve", "keys", "create", "ops", "--admin")
    internal = cli(project, "serve", "keys", "create", "tester", "--group", "internal")
    assert created.exit_code == 0 and internal.exit_code == 0
    admin_key, user_key = created.stdout.strip().splitlines()[-1], internal.stdout.strip().splitlines()[-1]
    route = f"serve.routes=[{{model: {family}, rules: [{{name: staff, to: {second}, groups: [internal]}}]}}]"
    try:
        with running(config_of(project, route, "serve.auth=keys")) as (url, server):
            with pytest.raises(openai.AuthenticationError):
                client(url, "wrong").models.list()
            no_key = httpx.get(f"{url}/v1/models")
            assert no_key.status_code == 401 and no_key.json()["error"]["code"] == "invalid_api_key"
            raw = client(url, user_key).chat.completions.with_raw_response.create(
                model=family, messages=QUESTION, max_tokens=2
            )
            assert (
                raw.headers["x-tunesmith-version"] == second
                and raw.headers["x-tunesmith-route"] == "rule:staff"
            )
            forbidden = httpx.post(f"{url}/admin/reload", headers={"authorization": f"Bearer {user_key}"})
            assert forbidden.status_code == 403 and forbidden.json()["error"]["type"] == "permission_error"
            allowed = httpx.get(f"{url}/admin/status", headers={"authorization": f"Bearer {admin_key}"})
            assert allowed.status_code == 200 and allowed.json()["backend"] == "auto"
            assert set(allowed.json()["engines"].values()) == {"transformers"}  # word-level: not for GGUF

            database = Path(server.workspace.root / "tunesmith.db").read_bytes()
            assert user_key.encode() not in database and admin_key.encode() not in database
            assert cli(project, "serve", "keys", "revoke", "tester").exit_code == 0
            wait_for(
                lambda: (
                    httpx.get(f"{url}/v1/models", headers={"authorization": f"Bearer {user_key}"}).status_code
                    == 401
                )
            )
            server.request_log.flush()
            with session(server.workspace.engine) as s:
                assert s.get(RequestLog, raw.headers["x-request-id"]).api_key_id.startswith("key-")
    finally:
        cli(project, "serve", "keys", "revoke", "ops")
    listed = cli(project, "serve", "keys", "list")
    assert "ops" in listed.stdout and "tester" in listed.stdout and admin_key not in listed.stdout


def test_overload_answers_429_with_retry_after_and_oversized_bodies_413(project):
    family = project["family"]
    settings = (
        "serve.max_queue=2",
        "serve.max_batch_size=1",
        "serve.batch_wait_ms=0",
        "serve.max_request_bytes=20000",
    )
    with running(config_of(project, *settings)) as (url, server):

        def post(i: int) -> httpx.Response:
            body = {
                "model": family,
                "prompt": f"Tell me about the library {i}",
                "max_tokens": 200,
                "temperature": 1.0,
            }
            return httpx.post(f"{url}/v1/completions", json=body, timeout=120)

        with concurrent.futures.ThreadPoolExecutor(12) as pool:
            answers = list(pool.map(post, range(24)))
        statuses = [a.status_code for a in answers]
        assert set(statuses) <= {200, 429} and 429 in statuses and 200 in statuses
        refused = next(a for a in answers if a.status_code == 429)
        assert (
            int(refused.headers["retry-after"]) >= 1 and refused.json()["error"]["type"] == "rate_limit_error"
        )
        big = httpx.post(f"{url}/v1/completions", json={"model": family, "prompt": "x" * 30000})
        assert big.status_code == 413
        server.request_log.flush()
        answered = [a.headers["x-request-id"] for a in answers if a.status_code == 200]
        with session(server.workspace.engine) as s:
            logged = s.query(RequestLog).filter(RequestLog.id.in_(answered)).count()
        assert logged == len(answered)
        assert metric(url, "tunesmith_rejected_requests_total", reason="overloaded") == statuses.count(429)


def test_a_rollout_advances_step_by_step_and_completes_by_promoting(project):
    from tunesmith.registry.aliases import history

    family, first, second = project["family"], project["first"], project["second"]
    route = (
        f"serve.routes=[{{model: '{family}@production', rollout: {{steps: [shadow, 50, 100], "
        "hold_minutes: 0.005, min_requests: 2, max_latency_ratio: 100}}]"
    )
    settings = (route, "registry.gated=[]")
    started = runner.invoke(
        app,
        [
            "serve",
            "rollout",
            "start",
            second,
            "--route",
            f"{family}@production",
            "--config",
            str(project["path"]),
            *[a for s in [*project["settings"], *settings] for a in ("--set", s)],
        ],
    )
    assert started.exit_code == 0, started.output
    with serving(project, *settings) as (api, url, server):
        routes_seen: set[str] = set()

        def done() -> bool:
            for user in range(6):
                raw = api.chat.completions.with_raw_response.create(
                    model=f"{family}@production", messages=QUESTION, max_tokens=2, user=f"u{user}"
                )
                routes_seen.add(raw.headers["x-tunesmith-route"])
                if "x-tunesmith-shadow" in raw.headers:
                    routes_seen.add("shadowed")
            return _rollout(server).status == "completed"

        wait_for(done, timeout=90, every=0.05)
        assert {"shadowed", "rollout:50%"} <= routes_seen
        moves = history(server.workspace, family, "production")
        assert moves[0].reason.startswith("rollout ") and moves[0].action == "promote"
        wait_for(
            lambda: (
                api.chat.completions.with_raw_response.create(
                    model=f"{family}@production", messages=QUESTION, max_tokens=2
                ).headers["x-tunesmith-version"]
                == second
            )
        )
        events = [h["event"] for h in _rollout(server).history]
        shown = cli(project, "serve", "rollout", "status")
        assert _rollout(server).id in shown.stdout and "complete" in shown.stdout
        assert events == ["start", "advance", "advance", "complete"]
        assert metric(url, "tunesmith_rollout_events_total", event="complete") == 1
    promote(
        open_workspace(config_of(project)),
        config_of(project).registry,
        get_version(open_workspace(config_of(project)), first),
        "production",
        force=True,
        reason="restore",
    )


def _rollout(server):
    from tunesmith.serve.rollout import list_rollouts

    return list_rollouts(server.workspace)[0]


def test_a_rollout_whose_gate_fails_is_rolled_back(project):
    from tunesmith.monitor.gates import GateResult, register_rollout_gate
    from tunesmith.serve.rollout import list_rollouts

    @register_rollout_gate("test_quality_drop")
    def quality_drop(ctx) -> GateResult:
        return GateResult("test_quality_drop", False, "mean score 0.2 below 0.5")

    family, second = project["family"], project["second"]
    route = (
        f"serve.routes=[{{model: '{family}@production', rollout: {{steps: [10, 100], hold_minutes: 60, "
        "gates: [error_rate, test_quality_drop]}}]"
    )
    with running(config_of(project, route)) as (url, server):
        started = httpx.post(
            f"{url}/admin/rollouts", json={"route": f"{family}@production", "version": second}
        )
        assert started.status_code == 200, started.text
        wait_for(lambda: list_rollouts(server.workspace)[0].status == "rolled_back")
        last = list_rollouts(server.workspace)[0].history[-1]
        assert last["event"] == "rollback" and "mean score 0.2 below 0.5" in last["reasons"][0]

        def route() -> str:
            raw = client(url).chat.completions.with_raw_response.create(
                model=f"{family}@production", messages=QUESTION, max_tokens=2, user="anyone"
            )
            return raw.headers["x-tunesmith-route"]

        # the server's router follows the store within one poll (serve.poll_seconds)
        wait_for(lambda: route() == "primary", timeout=10)
        assert [route() for _ in range(5)] == ["primary"] * 5


def test_optional_backends_that_cannot_run_here_say_what_is_missing(project):
    import importlib.util

    import torch

    from tunesmith.models.llamacpp import find_server

    if find_server() is None:
        result = cli(project, "serve", "--backend", "llamacpp")
        assert result.exit_code == 1 and "needs llama.cpp's llama-server" in result.output
    if importlib.util.find_spec("vllm") is None or not torch.cuda.is_available():
        result = cli(project, "serve", "--backend", "vllm")
        assert result.exit_code == 1 and "vllm backend needs" in result.output
    broken = Path(project["path"]).parent / "broken-runtime.yaml"
    broken.write_text("models:\n  '*':\n    temperature: hot\n", encoding="utf-8")
    refused = runner.invoke(
        app, ["serve", "--config", str(project["path"]), "--set", f"serve.runtime_config={broken}"]
    )
    assert refused.exit_code == 2 and "broken-runtime.yaml:3" in refused.output
    unknown = cli(project, "serve", "--backend", "tgi")
    assert unknown.exit_code == 1 and "known: auto, llamacpp, transformers, vllm" in unknown.output


def test_the_default_backend_serves_what_llama_cpp_cannot_run_with_transformers_and_says_why(project, caplog):
    import logging

    from tunesmith.registry.export import gguf_refusal

    workspace = open_workspace(config_of(project))
    version = get_version(workspace, project["first"])
    assert gguf_refusal(version) == "GGUF export covers BPE tokenizers; this one is WordLevel"
    with caplog.at_level(logging.INFO, "tunesmith.serve"), running(config_of(project)) as (url, server):
        assert server.backend.name == "auto"
        assert server.backend.backend_of(version.id) is server.backend.transformers
        answer = client(url).chat.completions.create(model=project["family"], messages=QUESTION, max_tokens=3)
        assert answer.choices[0].message.content is not None
    assert f"{version.name} is served by transformers: GGUF export covers BPE tokenizers" in caplog.text


def llama_servers() -> int:
    """llama-server processes this test process started and that are still running."""
    count = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            head, tail = stat.read_text().rsplit(")", 1)
        except OSError:
            continue
        count += head.split("(", 1)[1] == "llama-server" and int(tail.split()[1]) == os.getpid()
    return count


@pytest.mark.slow
def test_by_default_llama_cpp_serves_the_gguf_export_with_continuous_batching(tmp_path):
    from tunesmith.models.llamacpp import find_server

    if find_server() is None:
        pytest.skip("llama.cpp's llama-server is not installed (make setup builds it)")
    config_path = write_demo_project(tmp_path)
    settings = ["train.max_steps=2", "train.save_strategy=no", "train.forgetting.probe=false"]
    version = train(load_config(config_path, settings)).version
    other = train(load_config(config_path, [*settings, "train.seed=7", "train.lr=1e-3"])).version
    serving = [f"serve.models=[{version.name}, {other.name}]", "serve.auth=none", "serve.max_batch_size=4"]
    config = load_config(config_path, [*settings, *serving])
    assert config.serve.backend == "auto"  # the default picks llama.cpp for this version
    with running(config) as (url, server):
        api = client(url)
        status = httpx.get(f"{url}/admin/status").json()
        assert status["engines"] == {version.id: "llamacpp", other.id: "llamacpp"}
        # both LoRA versions are GGUF adapters over one base GGUF, in one llama-server
        wait_for(lambda: llama_servers() == 1, timeout=30)
        for name in (version.name, other.name):
            raw = api.chat.completions.with_raw_response.create(
                model=name, messages=QUESTION, max_tokens=4, temperature=0
            )
            assert raw.headers["x-tunesmith-version"] == name and raw.parse().choices[0].message.content
        lora = server.workspace.root / "exports" / f"{version.name}-gguf-lora" / "parity.json"
        assert (
            json.loads(lora.read_text())["passed"]
            and json.loads(lora.read_text())["checked_with"] == "llama.cpp"
        )
        answer = api.chat.completions.create(
            model=version.name, messages=QUESTION, max_tokens=8, temperature=0
        )
        chunks = api.chat.completions.create(
            model=version.name, messages=QUESTION, max_tokens=8, temperature=0, stream=True
        )
        streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert answer.model == version.name and streamed == answer.choices[0].message.content
        assert answer.choices[0].message.content.strip() and answer.usage.completion_tokens <= 8
        shaped = api.chat.completions.create(
            model=version.name,
            messages=[{"role": "user", "content": "Give me the opening hours as JSON."}],
            max_tokens=100,
            temperature=0,
            response_format={
                "type": "json_schema",
                "json_schema": {
                    "name": "hours",
                    "schema": {
                        "type": "object",
                        "properties": {"open": {"type": "integer"}, "close": {"type": "integer"}},
                        "required": ["open", "close"],
                    },
                },
            },
        )
        assert shaped.choices[0].finish_reason == "stop"  # llama.cpp's own grammar kept it to the schema
        assert set(json.loads(shaped.choices[0].message.content)) == {"open", "close"}

        # a request that arrives while a long one decodes joins the running batch: it is answered
        # while the long one is still streaming, not after it
        counting = [{"role": "user", "content": "Count from 1 to 100, one number per line."}]
        long = api.chat.completions.create(
            model=version.name, messages=counting, max_tokens=300, temperature=0, stream=True
        )
        arrivals: list[float] = []
        first = threading.Event()

        def read_long() -> None:
            for chunk in long:
                arrivals.append(time.monotonic())
                if chunk.choices and chunk.choices[0].delta.content:
                    first.set()

        reader = threading.Thread(target=read_long)
        reader.start()
        assert first.wait(60)
        short = api.chat.completions.create(
            model=version.name, messages=QUESTION, max_tokens=4, temperature=0
        )
        answered = time.monotonic()
        reader.join(120)
        assert short.choices[0].finish_reason == "length" and len(arrivals) > 50
        assert sum(1 for t in arrivals if t > answered) >= 10  # well before the long answer ended
        two = api.chat.completions.create(
            model=version.name, messages=QUESTION, max_tokens=6, temperature=0.9, seed=1, n=2
        )
        assert [c.index for c in two.choices] == [0, 1] and two.usage.completion_tokens <= 12

        # the version on every engine that runs it: its GGUF under llama.cpp and this server
        argv = ["registry", "parity", version.name, "--engines", "gguf,server", "--server", f"{url}/v1"]
        checked = runner.invoke(app, [*argv, "--config", str(config_path)])
        assert checked.exit_code == 0, checked.output
        (report,) = (server.workspace.root / "parity").glob("*.json")
        gguf = json.loads(report.read_text())["engines"]["gguf"]
        assert gguf["metrics"]["token_agreement"] >= 0.9 and gguf["metrics"]["mean_kl"] <= 0.05
        assert gguf["lora"].endswith("-lora.gguf")  # as the server runs it: the adapter over the base's GGUF
        served = json.loads(report.read_text())["engines"]["server"]
        assert set(served["identical_by_engine"]) == {"reference", "gguf"}  # matched to what it runs
        assert served["logprobs"] and served["metrics"]["token_agreement"] >= 0.9, (
            served
        )  # llama.cpp's n_probs
        scored = api.chat.completions.create(
            model=version.name, messages=QUESTION, max_tokens=6, temperature=0, logprobs=True, top_logprobs=2
        )
        entries = scored.choices[0].logprobs.content
        assert "".join(e.token for e in entries) == scored.choices[0].message.content
        assert all(
            len(e.top_logprobs) == 2 and e.logprob == pytest.approx(e.top_logprobs[0].logprob)
            for e in entries
        )


@pytest.mark.slow
def test_the_vllm_backend_serves_lora_versions_on_a_gpu(project):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("the vllm backend needs a CUDA GPU")
    pytest.importorskip("vllm", reason="vLLM is not installed (pip install 'tunesmith[vllm]')")
    with serving(project, "serve.backend=vllm") as (api, _, _):
        for name in (project["first"], project["second"]):
            answer = api.chat.completions.create(model=name, messages=QUESTION, max_tokens=8, temperature=0)
            assert answer.model == name


def test_pickled_weights_in_a_version_folder_are_refused(project):
    family, second = project["family"], project["second"]
    with running(config_of(project)) as (url, server):
        folder = Path(get_version(server.workspace, second).path)
        pickled = folder / "adapter_model.bin"
        pickled.write_bytes(b"\x80\x04K\x01.")  # a pickle; loading it could run code
        try:
            with pytest.raises(openai.APIStatusError) as refused:
                client(url).chat.completions.create(model=second, messages=QUESTION, max_tokens=2)
            assert refused.value.status_code == 503 and "safetensors only" in refused.value.message
        finally:
            pickled.unlink()
        assert second in {m.id for m in client(url).models.list().data}
        assert family + "@production" in {m.id for m in client(url).models.list().data}


def test_tunesmith_serve_runs_from_the_command_line_and_flushes_its_log_on_shutdown(project, tmp_path):
    import signal

    process = start_cli_server(project["path"], project["settings"], 0)  # 0: any free port
    assert process.stdout is not None
    said, bound = [], None
    try:
        for line in process.stdout:  # until uvicorn says which port the system gave it
            said.append(line)
            if bound := re.search(r"Uvicorn running on (http://127\.0\.0\.1:\d+)", line):
                break
        assert bound and not bound.group(1).endswith(":8000"), "".join(said)
        url = bound.group(1)
        wait_for(lambda: ready(url), timeout=120, every=0.2)
        answer = client(url).chat.completions.create(
            model=project["family"], messages=QUESTION, max_tokens=3, metadata={"ticket": "T-1"}
        )
        assert answer.model == project["first"]
    finally:
        process.send_signal(signal.SIGINT)
        output = "".join(said) + process.communicate(timeout=60)[0]
    assert process.returncode == 0, output
    assert "auth is none" in output and "ready:" in output  # open, as the project chose, and said so
    with session(open_workspace(config_of(project)).engine) as s:
        row = s.query(RequestLog).filter(RequestLog.id == "req-" + answer.id.removeprefix("chatcmpl-")).one()
    assert row.client["metadata"] == {"ticket": "T-1"} and row.version_id is not None


def test_a_server_that_cannot_serve_its_models_stops_and_says_why(project, tmp_path, tiny_model_dir):
    """A misspelt version in serve.models stopped nothing: the server listened and answered 503 for
    ever, with a 0 exit whenever it was stopped. Now a name that points at no version stops
    `tunesmith serve` before the port opens, weights that do not load stop it once they fail, and a
    port in use is an error of tunesmith's (exit 1), not uvicorn's exit 3 (a failed gate here)."""
    from tunesmith.registry import RegistryError
    from tunesmith.serve.app import run_server

    process = start_cli_server(project["path"], [*project["settings"], "serve.models=[nope-v9]"], 0)
    try:
        output = process.communicate(timeout=120)[0]
    finally:
        process.kill()  # when it keeps running, as it did
    assert process.returncode == 1, output
    assert "the model `nope-v9` does not exist" in " ".join(output.split()), output
    assert "fix serve.models or serve.routes" in " ".join(output.split()) and "Uvicorn running" not in output

    import socket

    with socket.socket() as taken:  # a port already in use: exit 1 and say so (uvicorn's own exit was 3,
        taken.bind(("127.0.0.1", 0))  # which here means a failed gate)
        taken.listen()
        process = start_cli_server(project["path"], project["settings"], taken.getsockname()[1])
        try:
            output = process.communicate(timeout=120)[0]
        finally:
            process.kill()
    assert process.returncode == 1 and "the server could not listen on 127.0.0.1:" in output, output

    config_path = write_demo_project(tmp_path)
    settings = [f"model.id={tiny_model_dir}", "train.method=lora", "train.epochs=1", "serve.auth=none"]
    version = train(load_config(config_path, settings)).version
    (Path(version.path) / "adapter_model.safetensors").write_bytes(b"not weights")
    failed: list[BaseException] = []

    def serve() -> None:
        try:
            run_server(load_config(config_path, [*settings, f"serve.models=[{version.name}]"]), port=0)
        except BaseException as exc:  # the test reads it
            failed.append(exc)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    thread.join(timeout=120)
    assert not thread.is_alive(), "the server kept running without its model"
    (error,) = failed
    assert isinstance(error, RegistryError) and "could not load the served models" in str(error), error


def test_a_client_that_goes_away_mid_stream_stops_its_decoding_and_is_logged(project):
    family = project["family"]
    with running(config_of(project)) as (url, server):
        body = {"model": family, "prompt": "The library", "max_tokens": 240, "temperature": 1.0}
        seed = next(  # a seed whose answer runs to the limit when nobody stops it
            seed
            for seed in range(20)
            if client(url).completions.create(**body, seed=seed).choices[0].finish_reason == "length"
        )
        body |= {"seed": seed, "stream": True}
        with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=60) as response:
            request_id = response.headers["x-request-id"]
            next(response.iter_lines())
        wait_for(lambda: server.backend.in_flight() == 0)
        server.request_log.flush()

        def row() -> RequestLog | None:
            server.request_log.flush()
            with session(server.workspace.engine) as s:
                return s.get(RequestLog, request_id)

        logged = wait_for(row)
        assert logged.status == 499 and logged.tokens_out < 240


def test_refused_requests_are_logged_with_their_status_and_reason(project):
    with running(config_of(project)) as (url, server):
        with pytest.raises(openai.BadRequestError) as refused:
            client(url).chat.completions.create(model=project["family"], messages=QUESTION, max_tokens=10**5)
        with pytest.raises(openai.NotFoundError):
            client(url).chat.completions.create(model="ghost-v1", messages=QUESTION)
        server.request_log.flush()
        with session(server.workspace.engine) as s:
            rows = {r.status: r for r in s.query(RequestLog).filter(RequestLog.status.in_([400, 404]))}
        assert rows[400].version_id == get_version(server.workspace, project["first"]).id
        assert rows[400].error == refused.value.body["message"] and rows[400].output == []
        assert rows[404].version_id is None and rows[404].route == "refused" and "ghost-v1" in rows[404].error


def test_per_key_rate_limits_answer_429_with_retry_after_and_leave_other_keys_alone(project):
    family = project["family"]
    limited = cli(project, "serve", "keys", "create", "limited", "--rpm", "2")
    frugal = cli(project, "serve", "keys", "create", "frugal", "--tpm", "60")
    other = cli(project, "serve", "keys", "create", "other")
    assert limited.exit_code == frugal.exit_code == other.exit_code == 0, limited.output
    limited_key, frugal_key, other_key = (r.stdout.strip().splitlines()[-1] for r in (limited, frugal, other))
    assert "2 rpm" in cli(project, "serve", "keys", "list").stdout
    try:
        settings = ("serve.auth=keys", "serve.rate_limit.requests_per_minute=3")
        with running(config_of(project, *settings)) as (url, _):

            def ask(key: str, **extra) -> httpx.Response:
                body = {"model": family, "messages": QUESTION, "max_tokens": 2, **extra}
                headers = {"authorization": f"Bearer {key}"}
                return httpx.post(f"{url}/v1/chat/completions", json=body, headers=headers, timeout=60)

            assert [ask(limited_key).status_code for _ in range(2)] == [200, 200]
            refused = ask(limited_key)
            error = refused.json()["error"]
            assert refused.status_code == 429 and error["type"] == "rate_limit_error", refused.text
            assert error["code"] == "rate_limit_exceeded" and "2 per minute" in error["message"]
            assert 1 <= int(refused.headers["retry-after"]) <= 60
            assert refused.headers["x-ratelimit-limit-requests"] == "2"
            with pytest.raises(openai.RateLimitError):  # the official client sees a rate limit
                client(url, limited_key).chat.completions.create(
                    model=family, messages=QUESTION, max_tokens=2
                )
            # another key has its own window, under the server's default of 3 per minute
            assert [ask(other_key).status_code for _ in range(3)] == [200, 200, 200]
            assert ask(other_key).status_code == 429
            # tokens: prompt plus max_tokens x n count when the request is admitted
            too_large = ask(frugal_key, max_tokens=100)
            assert (
                too_large.status_code == 429 and "Request too large" in too_large.json()["error"]["message"]
            )
            assert "retry-after" not in too_large.headers  # waiting never helps
            assert ask(frugal_key, max_tokens=2).status_code == 200
            assert metric(url, "tunesmith_rejected_requests_total", reason="rate_limited") >= 4
    finally:
        for name in ("limited", "frugal", "other"):
            cli(project, "serve", "keys", "revoke", name)


def test_serve_models_restricts_what_may_be_loaded_and_max_loaded_unloads_the_least_recent(project):
    family, first, second = project["family"], project["first"], project["second"]
    with serving(project, f"serve.models=[{first}]") as (api, _, server):
        with pytest.raises(openai.NotFoundError, match="not served here"):
            api.chat.completions.create(model=second, messages=QUESTION, max_tokens=2)
        assert [m.id for m in api.models.list().data] == [first]
        assert second not in {v for v in server.backend.loaded()}
    with serving(project, "serve.max_loaded=1") as (api, _, server):
        (production,) = server.backend.loaded()  # the production alias, loaded at start
        api.chat.completions.create(model=second, messages=QUESTION, max_tokens=2)
        second_id = get_version(server.workspace, second).id
        wait_for(lambda: server.backend.loaded() == {second_id})  # the first left once idle
        again = api.chat.completions.with_raw_response.create(model=family, messages=QUESTION, max_tokens=2)
        assert again.headers["x-tunesmith-version"] == first
        wait_for(lambda: server.backend.loaded() == {production})


def test_feedback_waiting_on_a_locked_store_does_not_hold_up_answers(project):
    import sqlite3
    import time

    family = project["family"]
    with running(config_of(project)) as (url, server):
        answer = client(url).chat.completions.create(model=family, messages=QUESTION, max_tokens=2)
        server.request_log.flush()
        request_id = "req-" + answer.id.removeprefix("chatcmpl-")
        lock = sqlite3.connect(server.workspace.root / "tunesmith.db", timeout=30)
        lock.execute("BEGIN EXCLUSIVE")  # a long write elsewhere: feedback writes wait for it
        try:

            def give(i: int) -> int:
                body = {"request_id": request_id, "rating": 1, "comment": f"note {i}"}
                return httpx.post(f"{url}/v1/feedback", json=body, timeout=60).status_code

            with concurrent.futures.ThreadPoolExecutor(16) as pool:
                waiting = [pool.submit(give, i) for i in range(16)]
                time.sleep(0.5)
                started = time.monotonic()
                client(url).chat.completions.create(model=family, messages=QUESTION, max_tokens=2)
                took = time.monotonic() - started
                assert took < 4.0 and not any(f.done() for f in waiting), took  # answered under the lock
                lock.rollback()
                assert {f.result() for f in waiting} == {200}
        finally:
            lock.close()


def test_a_client_that_goes_away_before_a_whole_answer_stops_its_decoding(project):
    import time

    from tunesmith.store.schema import utcnow

    family = project["family"]
    with running(config_of(project)) as (url, server):
        body = {"model": family, "prompt": "The library", "max_tokens": 240, "temperature": 1.0}
        for seed in range(20):  # a seed whose answer runs to the limit when nobody stops it
            started = time.monotonic()
            if client(url).completions.create(**body, seed=seed).choices[0].finish_reason == "length":
                whole = time.monotonic() - started
                break
        before = utcnow()
        with pytest.raises(httpx.ReadTimeout):  # the client leaves a quarter of the way through
            httpx.post(f"{url}/v1/completions", json={**body, "seed": seed}, timeout=whole / 4)
        wait_for(lambda: server.backend.in_flight() == 0)

        def row() -> RequestLog | None:
            server.request_log.flush()
            with session(server.workspace.engine) as s:
                return s.query(RequestLog).filter(RequestLog.status == 499, RequestLog.at >= before).first()

        logged = wait_for(row)
        assert logged.error == "client closed the connection" and logged.tokens_out < 200


def test_servers_sharing_a_store_decide_a_rollout_step_once(project):
    from datetime import UTC, datetime, timedelta

    from tunesmith.registry.aliases import history
    from tunesmith.serve.rollout import list_rollouts, start_rollout, tick

    family, first, second = project["family"], project["first"], project["second"]
    route = f"serve.routes=[{{model: '{family}@production', rollout: {{steps: [50, 100], gates: []}}}}]"
    config = config_of(project, route, "registry.gated=[]")
    workspace = open_workspace(config)
    rollout = start_rollout(workspace, config.serve, f"{family}@production", get_version(workspace, second))
    try:
        for step in (1, 2):  # advance, then complete: each decided by one of two servers
            seen = [
                r for r in list_rollouts(workspace, running_only=True) if r.id == rollout.id
            ]  # both servers read the same state
            later = datetime.now(UTC) + timedelta(hours=2 * step)  # past the step's hold time
            first_server = tick(workspace, config.serve, config.registry, lambda _: None, later, seen)
            second_server = tick(workspace, config.serve, config.registry, lambda _: None, later, seen)
            assert [e for _, e in first_server] == ["advance" if step == 1 else "complete"]
            assert second_server == []
        (done,) = [r for r in list_rollouts(workspace) if r.id == rollout.id]
        assert [h["event"] for h in done.history] == ["start", "advance", "complete"]
        assert done.status == "completed" and done.step == 1
        mine = f"rollout {rollout.id} completed"
        promotions = [e for e in history(workspace, family, "production") if e.reason == mine]
        assert len(promotions) == 1  # promoted once, not once per server
    finally:
        promote(
            workspace, config.registry, get_version(workspace, first), "production", force=True, reason="t"
        )


def test_a_server_killed_between_claiming_a_rollout_and_promoting_leaves_it_to_the_next_tick(
    project, monkeypatch
):
    from datetime import UTC, datetime, timedelta

    from tunesmith.registry import aliases
    from tunesmith.registry.versions import alias_target
    from tunesmith.serve import rollout as rollouts

    family, first, second = project["family"], project["first"], project["second"]
    route = f"serve.routes=[{{model: '{family}@production', rollout: {{steps: [100], gates: []}}}}]"
    config = config_of(project, route, "registry.gated=[]")
    workspace = open_workspace(config)
    started = rollouts.start_rollout(
        workspace, config.serve, f"{family}@production", get_version(workspace, second)
    )
    later = datetime.now(UTC) + timedelta(hours=2)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # the process dies after the claim, before the alias moves

    try:
        monkeypatch.setattr(aliases, "promote", killed)
        with pytest.raises(KeyboardInterrupt):
            rollouts.tick(workspace, config.serve, config.registry, lambda _: None, later)
        monkeypatch.undo()
        (claimed,) = [r for r in rollouts.list_rollouts(workspace) if r.id == started.id]
        assert claimed.status == "promoting" and alias_target(workspace, family, "production").name == first
        assert (
            rollouts.tick(workspace, config.serve, config.registry, lambda _: None, later) == []
        )  # too soon
        monkeypatch.setattr(rollouts, "STALLED_SECONDS", 0.0)  # as a minute later
        (finished,) = rollouts.tick(workspace, config.serve, config.registry, lambda _: None, later)
        assert finished[0].status == "completed" and finished[1] == "complete"
        assert alias_target(workspace, family, "production").name == second
        assert "finished after the server that claimed it stopped" in finished[0].history[-1]["reasons"]
    finally:
        promote(
            workspace, config.registry, get_version(workspace, first), "production", force=True, reason="t"
        )


def test_response_format_json_schema_is_enforced_while_decoding(tmp_path, tiny_byte_model_dir):
    config_path = write_demo_project(tmp_path)
    settings = [f"model.id={tiny_byte_model_dir}", "train.method=lora", "train.max_steps=2"]
    settings += ["train.save_strategy=no", "train.forgetting.probe=false", "serve.auth=none"]
    settings += ["serve.backend=transformers"]  # llguidance's masks on the transformers backend
    family = train(load_config(config_path, settings)).version.name
    schema = {
        "type": "object",
        "properties": {
            "answer": {"type": "string", "maxLength": 12},
            "open": {"type": "boolean"},
            "floor": {"enum": [1, 2, 3]},
        },
        "required": ["answer", "open", "floor"],
        "additionalProperties": False,
    }
    response_format = {"type": "json_schema", "json_schema": {"name": "hours", "schema": schema}}
    with running(load_config(config_path, [*settings, f"serve.models=[{family}]"])) as (url, server):
        api = client(url)
        # the tiny test model writes noise: only the grammar can make it valid JSON of this shape
        answer = api.chat.completions.create(
            model=family,
            messages=QUESTION,
            max_tokens=120,
            temperature=1.0,
            seed=3,
            n=3,
            response_format=response_format,
        )
        for choice in answer.choices:
            value = json.loads(choice.message.content)
            assert set(value) == {"answer", "open", "floor"} and choice.finish_reason == "stop"
            assert (
                len(value["answer"]) <= 12 and isinstance(value["open"], bool) and value["floor"] in (1, 2, 3)
            )
        chunks = api.chat.completions.create(
            model=family,
            messages=QUESTION,
            max_tokens=120,
            temperature=0,
            stream=True,
            response_format=response_format,
        )
        streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert set(json.loads(streamed)) == {"answer", "open", "floor"}
        any_object = api.chat.completions.create(
            model=family, messages=QUESTION, max_tokens=6, response_format={"type": "json_object"}
        )
        assert any_object.choices[0].message.content.startswith("{")  # an object, cut at 6 tokens
        plain = api.chat.completions.create(model=family, messages=QUESTION, max_tokens=8, temperature=0)
        with pytest.raises(json.JSONDecodeError):  # without it, the same model writes no JSON
            json.loads(plain.choices[0].message.content)
        for bad, message in (
            ({"type": "xml"}, "not one of text, json_object, json_schema"),
            (
                {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "objekt"}}},
                "json_schema",
            ),
        ):
            with pytest.raises(openai.BadRequestError, match=message) as refused:
                api.chat.completions.create(model=family, messages=QUESTION, response_format=bad)
            assert refused.value.body["param"] == "response_format" or "response_format" in str(refused.value)
        server.request_log.flush()
        with session(server.workspace.engine) as s:
            logged = s.get(RequestLog, "req-" + answer.id.removeprefix("chatcmpl-"))
            assert logged.params["response_format"]["type"] == "json_schema"


def test_response_format_on_a_model_whose_tokenizer_cannot_be_constrained_is_refused(project):
    with (
        running(config_of(project)) as (url, _),
        pytest.raises(openai.BadRequestError, match="cannot be constrained") as refused,
    ):
        client(url).chat.completions.create(
            model=project["family"], messages=QUESTION, response_format={"type": "json_object"}
        )
    assert refused.value.body["param"] == "response_format"  # a word-level tokenizer cannot spell JSON
