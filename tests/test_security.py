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


def test_every_admin_route_of_the_server_needs_the_admin_scope(serve_project, caplog):
    from tunesmith.serve import serve_in_background
    from tunesmith.serve.app import create_app

    config = load_config(serve_project["path"], [*serve_project["settings"], "serve.poll_seconds=0.2"])
    workspace = open_workspace(config)
    user, user_secret = create_key(workspace, "security-user")
    admin, admin_secret = create_key(workspace, "security-admin", admin=True)
    caplog.set_level(logging.DEBUG)
    try:
        with serve_in_background(config) as (url, server):
            routes = [
                (method, route.path)
                for route in create_app(server).routes
                if route.path.startswith("/admin")
                for method in sorted(getattr(route, "methods", ()) or ())
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
            answered = httpx.post(
                f"{url}/v1/chat/completions",
                headers={"authorization": f"Bearer {user_secret}"},
                json={
                    "model": serve_project["family"],
                    "messages": [{"role": "user", "content": "hi"}],
                    "max_tokens": 2,
                },
            )
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
