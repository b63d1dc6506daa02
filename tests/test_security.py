"""Nobody is let in where they should not be: every admin route of the server and every action of
the web app needs the admin scope, found by walking the apps' routes (a new route is covered
without a new test); secrets never reach a log or the store; names from a request never reach the
filesystem."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import httpx2 as httpx
import pytest

from tunesmith.config import load_config
from tunesmith.serve.keys import create_key, revoke_key
from tunesmith.workspace import init_project, open_workspace

PARAMS = re.compile(r"\{(\w+)(:path)?\}")


def _concrete(path: str) -> str:
    return PARAMS.sub("x", path)


def say_hi(url: str, family: str, secret: str) -> httpx.Response:
    """A two-token chat completion with the key `secret`."""
    chat = {"model": family, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    return httpx.post(f"{url}/v1/chat/completions", json=chat, headers={"authorization": f"Bearer {secret}"})


def test_every_admin_route_of_the_server_needs_the_admin_scope(serve_project, caplog):
    from tunesmith.serve import serve_in_background
    from tunesmith.serve.app import create_app

    settings = [*serve_project["settings"], "serve.poll_seconds=0.2", "serve.auth=keys"]
    config = load_config(serve_project["path"], settings)
    workspace = open_workspace(config)
    user, user_secret = create_key(workspace, "security-user")
    admin, admin_secret = create_key(workspace, "security-admin", admin=True)
    caplog.set_level(logging.DEBUG)
    try:
        with serve_in_background(config) as (url, server):
            routes = [  # every admin route the app documents, from its OpenAPI document
                (method.upper(), path)
                for path, operations in create_app(server).openapi()["paths"].items()
                if path.startswith("/admin")
                for method in sorted(operations)
            ]
            assert len(routes) >= 6, (
                routes
            )  # promote, rollback, reload, rollouts (list, start, abort), status
            for method, path in routes:
                target = f"{url}{_concrete(path)}"
                anonymous = httpx.request(method, target, json={})
                assert anonymous.status_code == 401, (method, path)
                as_user = httpx.request(
                    method, target, json={}, headers={"authorization": f"Bearer {user_secret}"}
                )
                assert as_user.status_code == 403, (method, path, as_user.text)
                assert as_user.json()["error"]["type"] == "permission_error"
            allowed = httpx.get(f"{url}/admin/status", headers={"authorization": f"Bearer {admin_secret}"})
            assert allowed.status_code == 200
            answered = say_hi(url, serve_project["family"], user_secret)
            assert answered.status_code == 200
            for name in ("../../etc/passwd", "/etc/passwd", "..", "%2e%2e%2fetc"):
                missing = httpx.post(
                    f"{url}/v1/chat/completions",
                    headers={"authorization": f"Bearer {user_secret}"},
                    json={"model": name, "messages": [{"role": "user", "content": "hi"}]},
                )
                assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found", (
                    name
                )
            server.request_log.flush()
        logged = "\n".join(record.getMessage() for record in caplog.records)
        assert logged, "the server logged nothing to check"
        stored = (workspace.root / "tunesmith.db").read_bytes()
        for secret in (user_secret, admin_secret):
            assert secret not in logged and secret.encode() not in stored
    finally:
        for key in (user, admin):
            revoke_key(workspace, key.id)


def test_revoking_the_last_key_closes_the_server_it_never_opens_it(serve_project, caplog):
    """A keyed server with no active key answers nobody (401, saying how to add a key); only
    `serve.auth: none` opens it, with a warning at start, and never on an address others can reach."""
    from tunesmith.registry import RegistryError
    from tunesmith.serve import serve_in_background
    from tunesmith.serve.app import run_server

    settings = [*serve_project["settings"], "serve.poll_seconds=0.2", "serve.auth=keys"]
    config = load_config(serve_project["path"], settings)
    workspace = open_workspace(config)
    admin, admin_secret = create_key(workspace, "last-admin", admin=True)
    chat = {
        "model": serve_project["family"],
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 2,
    }
    caplog.set_level(logging.WARNING)
    with serve_in_background(config) as (url, _):
        bearer = {"authorization": f"Bearer {admin_secret}"}
        assert httpx.post(f"{url}/v1/chat/completions", json=chat, headers=bearer).status_code == 200
        revoke_key(workspace, admin.id)  # the last active key
        for method, path in [
            ("POST", "/v1/chat/completions"),
            ("GET", "/v1/models"),
            ("GET", "/admin/status"),
        ]:
            for headers in ({}, bearer):
                closed = _wait_refused(method, f"{url}{path}", chat, headers)
                assert closed.status_code == 401, (method, path, headers)
                message = closed.json()["error"]["message"]
                assert "no active API key" in message and "tunesmith serve keys create" in message
    open_config = load_config(serve_project["path"], [*settings[:-1], "serve.auth=none"])
    with serve_in_background(open_config) as (url, _):
        assert httpx.get(f"{url}/admin/status").status_code == 200  # open, as asked
    assert any("auth is none" in r.getMessage() for r in caplog.records)
    with pytest.raises(RegistryError, match=r"serve\.auth: none lets anyone who can reach 0\.0\.0\.0"):
        run_server(open_config, host="0.0.0.0", port=1)


def _wait_refused(method: str, url: str, body: dict, headers: dict) -> httpx.Response:
    """The refusal once the server has read the revocation (it polls the keys)."""
    from serve_helpers import wait_for

    def refused() -> httpx.Response | None:
        response = httpx.request(method, url, json=body, headers=headers)
        return response if "no active API key" in response.text else None

    return wait_for(refused, timeout=10)


def test_feedback_goes_on_the_callers_own_requests_only(serve_project):
    from tunesmith.serve import serve_in_background

    settings = [*serve_project["settings"], "serve.poll_seconds=0.2", "serve.auth=keys"]
    config = load_config(serve_project["path"], settings)
    workspace = open_workspace(config)
    keys = [
        create_key(workspace, name, admin=name == "fb-admin") for name in ("fb-alice", "fb-bob", "fb-admin")
    ]
    (_, alice_secret), (_, bob_secret), (_, admin_secret) = keys
    try:
        with serve_in_background(config) as (url, server):
            answered = say_hi(url, serve_project["family"], alice_secret).json()["id"]
            server.request_log.flush()

            def rate(secret: str) -> httpx.Response:
                headers = {"authorization": f"Bearer {secret}"}
                return httpx.post(
                    f"{url}/v1/feedback", json={"request_id": answered, "rating": 1}, headers=headers
                )

            by_bob = rate(bob_secret)
            assert by_bob.status_code == 404 and "made with this API key" in by_bob.json()["error"]["message"]
            assert rate(alice_secret).status_code == 200
            assert rate(admin_secret).status_code == 200  # an admin may rate any request
    finally:
        for key, _ in keys:
            revoke_key(workspace, key.id)


def test_every_action_of_the_web_app_needs_an_admin_key(tmp_path: Path):
    from tunesmith.ui import create_ui_app, ui_in_background

    config_path = init_project(tmp_path / "p")
    config = load_config(config_path)
    workspace = open_workspace(config)
    _, viewer_secret = create_key(workspace, "looker")
    from tunesmith.ui import actions as action_routes
    from tunesmith.ui import pages as page_routes

    create_ui_app(config, config_path)  # the app mounts these two routers and its own sign-in routes
    actions = [
        _concrete(route.path)
        for route in [*action_routes.router.routes, *page_routes.router.routes]
        if "POST" in (getattr(route, "methods", None) or ())
    ]
    assert len(actions) >= 7, actions  # train, eval, review sheet, promote, rollback, approve, abort
    with ui_in_background(config, config_path) as url:
        for path in actions:
            assert httpx.post(f"{url}{path}", data={}).status_code == 401, path
        with httpx.Client(base_url=url) as browser:
            browser.post("/login", data={"key": viewer_secret})
            token = re.search(r'name="csrf" value="([^"]+)"', browser.get("/runs/new").text)
            assert token is not None
            for path in actions:
                refused = browser.post(path, data={"csrf": token.group(1)})
                assert refused.status_code == 403 and "--admin" in refused.text, path
        for path in (
            "/static/../tunesmith.yaml",
            "/static/%2e%2e/tunesmith.yaml",
            "/jobs/..%2F..%2Ftunesmith.yaml",
        ):
            assert (
                httpx.get(f"{url}{path}", headers={"authorization": f"Bearer {viewer_secret}"}).status_code
                == 404
            )


@pytest.mark.parametrize("pattern", ["adapter_model.bin", "pytorch_model.bin", "model.pt", "weights.pkl"])
def test_the_server_refuses_pickled_weights(tmp_path: Path, pattern: str):
    from tunesmith.serve.backends.transformers_backend import _safetensors_only

    (tmp_path / pattern).write_bytes(b"\x80\x04")
    with pytest.raises(Exception, match="safetensors only"):
        _safetensors_only(tmp_path)


def test_a_base_model_with_only_pickled_weights_is_refused(tmp_path: Path, tiny_model_dir: Path):
    import shutil

    import torch
    from safetensors.torch import load_file

    from tunesmith.models import ModelNotFoundError, load_model

    folder = tmp_path / "pickled"
    shutil.copytree(tiny_model_dir, folder)
    weights = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    torch.save(weights, folder / "pytorch_model.bin")
    with pytest.raises(ModelNotFoundError, match="pickled weights"):
        load_model(str(folder))


REMOTE_CONFIG = """from transformers import LlamaConfig


class ShippedConfig(LlamaConfig):
    model_type = "shipped"
"""

REMOTE_MODEL = """import os
from pathlib import Path

from transformers import LlamaForCausalLM

from .configuration_shipped import ShippedConfig

Path(os.environ["SHIPPED_CODE_RAN"]).write_text("the repository's code ran")


class ShippedModel(LlamaForCausalLM):
    config_class = ShippedConfig
"""


def test_code_shipped_with_a_model_runs_only_when_the_project_opts_in(tmp_path, tiny_model_dir, monkeypatch):
    import json
    import shutil

    from tunesmith.data import prepare_data
    from tunesmith.models import ModelNotFoundError
    from tunesmith.pipeline import write_demo_project
    from tunesmith.train.run import load_base

    folder = tmp_path / "shipped"
    shutil.copytree(tiny_model_dir, folder)
    (folder / "configuration_shipped.py").write_text(REMOTE_CONFIG)
    (folder / "modeling_shipped.py").write_text(REMOTE_MODEL)
    config = json.loads((folder / "config.json").read_text())
    config |= {
        "model_type": "shipped",
        "architectures": ["ShippedModel"],
        "auto_map": {
            "AutoConfig": "configuration_shipped.ShippedConfig",
            "AutoModelForCausalLM": "modeling_shipped.ShippedModel",
        },
    }
    (folder / "config.json").write_text(json.dumps(config))
    marker = tmp_path / "ran"
    monkeypatch.setenv("SHIPPED_CODE_RAN", str(marker))
    monkeypatch.setenv("HF_MODULES_CACHE", str(tmp_path / "modules"))

    config_path = write_demo_project(tmp_path / "p")
    refused = load_config(config_path, [f"model.id={folder}"])
    with pytest.raises(ModelNotFoundError, match=r"model\.trust_remote_code: true"):
        load_base(refused, prepare_data(refused))
    assert not marker.exists()

    allowed = load_config(config_path, [f"model.id={folder}", "model.trust_remote_code=true"])
    loaded = load_base(allowed, prepare_data(allowed))
    assert type(loaded.model).__name__ == "ShippedModel" and marker.exists()


def test_a_key_secret_is_shown_once_and_stored_nowhere(tmp_path: Path):
    from typer.testing import CliRunner

    from tunesmith.cli import app

    config_path = init_project(tmp_path / "p")
    runner = CliRunner()
    created = runner.invoke(app, ["serve", "keys", "create", "ci-bot", "--config", str(config_path)])
    assert created.exit_code == 0, created.output
    secret = created.stdout.strip().splitlines()[-1]
    assert secret.startswith("tsk-"), created.stdout
    listed = runner.invoke(app, ["serve", "keys", "list", "--config", str(config_path)])
    assert listed.exit_code == 0 and "ci-bot" in listed.output and secret not in listed.output
    workspace = open_workspace(load_config(config_path))
    for path in workspace.root.rglob("*"):  # the store, its WAL, logs, anything the command wrote
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path
    from tunesmith.serve.keys import KeyRing

    caller = KeyRing(workspace).authenticate(secret)  # only its hash is kept, and it works
    assert caller is not None and caller.name == "ci-bot"


def test_the_request_log_and_feedback_can_be_scrubbed_of_personal_data(serve_project):
    from sqlalchemy import select

    from tunesmith.serve import serve_in_background
    from tunesmith.store import Feedback, RequestLog, session

    said = "I am jane.doe@example.com, call +1 415 555 0134, or write to help@fernwick.example"
    config = load_config(serve_project["path"], [*serve_project["settings"], "serve.log_pii=scrub"])
    with serve_in_background(config) as (url, server):
        answer = httpx.post(
            f"{url}/v1/chat/completions",
            json={
                "model": serve_project["family"],
                "messages": [{"role": "user", "content": said}],
                "max_tokens": 3,
                "metadata": {"contact": "bob@example.org", "ticket": "T-9"},
            },
        )
        request_id = answer.headers["x-request-id"]
        feedback = httpx.post(
            f"{url}/v1/feedback",
            json={"request_id": request_id, "rating": "down", "correction": "Mail jane.doe@example.com"},
        )
        assert feedback.status_code == 200, feedback.text
        server.request_log.flush()
    with session(server.workspace.engine) as s:
        row = s.get(RequestLog, request_id)
        given = s.scalars(select(Feedback).where(Feedback.request_id == request_id)).one()
    assert row.prompt == [
        {"role": "user", "content": "I am [EMAIL], call [PHONE], or write to help@fernwick.example"}
    ]  # the company's own address is in data.clean.pii_keep
    assert row.client["metadata"] == {"contact": "[EMAIL]", "ticket": "T-9"}
    assert given.correction == "Mail [EMAIL]"
    journals = (server.workspace.root / "request-journal").rglob("*")
    assert not [p for p in journals if p.is_file() and b"jane.doe" in p.read_bytes()]
