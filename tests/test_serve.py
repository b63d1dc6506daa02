"""The server through the official `openai` client against a real uvicorn on 127.0.0.1."""

from __future__ import annotations

import concurrent.futures
import json
from pathlib import Path

import httpx2 as httpx  # the HTTP client the openai package ships with
import openai
import pytest
from typer.testing import CliRunner

from serve_helpers import metric, running, wait_for
from tunesmith.cli import app
from tunesmith.config import load_config
from tunesmith.pipeline import train, write_demo_project
from tunesmith.registry.aliases import promote
from tunesmith.registry.versions import get_version
from tunesmith.store import RequestLog, session
from tunesmith.workspace import open_workspace

runner = CliRunner()
QUESTION = [{"role": "user", "content": "When does the Fernwick library open?"}]


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> dict:
    """Two LoRA versions of the tiny model; the first in production, the second the candidate."""
    root = tmp_path_factory.mktemp("serve-project")
    config_path = write_demo_project(root)
    settings = [f"model.id={tiny_model_dir}", "train.method=lora", "train.epochs=1", "train.lr=5e-2"]
    first = train(load_config(config_path, settings)).version
    second = train(load_config(config_path, [*settings, "train.seed=1", "train.lr=1e-1"])).version
    workspace = open_workspace(load_config(config_path, settings))
    promote(workspace, load_config(config_path, settings).registry, first, "production", force=True, reason="test")
    return {"path": config_path, "settings": settings, "first": first.name, "second": second.name, "family": first.family}


def config_of(project: dict, *extra: str):
    return load_config(project["path"], [*project["settings"], "serve.poll_seconds=0.2", *extra])


def client(url: str, key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)


def test_the_openai_client_works_unchanged_streaming_included(project):
    family = project["family"]
    with running(config_of(project)) as (url, server):
        api = client(url)
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
                model=f"{family}@production", messages=QUESTION, max_tokens=6, temperature=0, stream=True,
                stream_options={"include_usage": True},
            )
        )
        streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert streamed == answer.choices[0].message.content
        assert chunks[-1].usage.completion_tokens == answer.usage.completion_tokens
        assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == answer.choices[0].finish_reason

        by_version = api.chat.completions.create(model=project["first"], messages=QUESTION, max_tokens=6, temperature=0)
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

        completion = api.completions.create(model=family, prompt=["The library", "Opening hours"], max_tokens=4, temperature=0)
        assert [c.index for c in completion.choices] == [0, 1] and completion.object == "text_completion"
        stream = list(api.completions.create(model=family, prompt="The library", max_tokens=4, temperature=0, stream=True))
        assert "".join(c.choices[0].text for c in stream) == completion.choices[0].text

        ids = {m.id for m in api.models.list().data}
        assert {f"{family}@production", project["first"], project["second"]} <= ids

        with pytest.raises(openai.NotFoundError, match="does not exist"):
            api.chat.completions.create(model="nobody@production", messages=QUESTION)
        with pytest.raises(openai.BadRequestError, match="max_tokens is too large"):
            api.chat.completions.create(model=family, messages=QUESTION, max_tokens=10**5)
        with pytest.raises(openai.BadRequestError, match="tools"):
            api.chat.completions.create(
                model=family, messages=QUESTION,
                tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}],
            )
        bad = httpx.post(f"{url}/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"})
        assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_request_error"
        assert httpx.get(f"{url}/health").json() == {"status": "ok"}
        assert httpx.get(f"{url}/ready").json()["models"][f"{family}@production"] == project["first"]
        assert metric(url, "tunesmith_requests_total", version=project["first"], status="200") >= 6

        server.request_log.flush()
        with session(server.workspace.engine) as s:
            rows = list(s.query(RequestLog).order_by(RequestLog.at))
        assert rows[0].output == [answer.choices[0].message.content]
        assert rows[0].prompt == QUESTION and rows[0].route == "primary" and rows[0].ttft_ms is not None
        assert rows[0].tokens_out == answer.usage.completion_tokens
