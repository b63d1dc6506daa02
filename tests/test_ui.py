"""The web app under a real uvicorn on 127.0.0.1, over a workspace with real records: two trained
versions, an eval report, served requests with scores and feedback. The browser tests drive Debian's
headless Chromium through Playwright and write screenshots to `test-artifacts/ui/`."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
from pathlib import Path

import httpx2 as httpx
import pytest
import yaml
from markupsafe import escape

from serve_helpers import wait_for
from tunesmith.config import ConfigError, load_config
from tunesmith.pipeline import write_demo_project
from tunesmith.registry.aliases import promote
from tunesmith.train.run import train
from tunesmith.ui import ui_in_background
from tunesmith.workspace import open_workspace

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = Path(os.environ.get("TUNESMITH_TEST_ARTIFACTS", REPO / "test-artifacts")) / "ui"
PAGES = ["/", "/datasets", "/runs", "/evaluations", "/registry", "/deployments", "/monitoring"]


@pytest.fixture(scope="module")
def ui_project(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> dict:
    """Two LoRA versions of the tiny model (the first in production), an eval report of the first,
    and requests served by a real server, with online scores and a feedback row."""
    from openai import OpenAI

    from tunesmith.evaluate.runner import run_eval
    from tunesmith.serve import serve_in_background

    root = tmp_path_factory.mktemp("ui-project")
    config_path = write_demo_project(root)
    raw = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    raw["model"]["id"] = str(tiny_model_dir)
    raw["train"].update({"method": "lora", "num_train_epochs": 1, "learning_rate": 5e-2, "logging_steps": 1})
    raw["eval"] = {
        **raw.get("eval", {}),
        "max_new_tokens": 12,
        "bootstrap_resamples": 200,
        "metrics": ["rouge_l", "key_fact"],
        "gates": [{"metric": "rouge_l", "min": 0.0}],
    }
    raw["monitor"] = {"scorers": ["empty", "length"], "sample_rate": 1.0, "drift": {"min_requests": 4}}
    raw["ui"] = {"auth": "none"}  # open on 127.0.0.1; the test of keys starts a keyed app
    raw["serve"] = {"auth": "none"}
    config_path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    config = load_config(config_path)
    first = train(config).version
    second = train(load_config(config_path, ["train.seed=1", "train.lr=1e-1"])).version
    workspace = open_workspace(config)
    promote(workspace, config.registry, first, "production", force=True, reason="first release")
    report = run_eval(config, first.name, compare=["base"])
    with serve_in_background(config) as (url, _):
        client = OpenAI(base_url=f"{url}/v1", api_key="none")
        answers = [
            client.chat.completions.create(
                model=first.family,
                messages=[{"role": "user", "content": f"When does Fernwick open on day {i}?"}],
                max_tokens=8,
                user=f"user-{i}",
            )
            for i in range(4)
        ]
        httpx.post(
            f"{url}/v1/feedback", json={"request_id": answers[0].id, "rating": "down", "comment": "vague"}
        )
    raw["serve"] = {  # what the deployments page draws: a canary and a shadow on the family's route
        "auth": "none",
        "routes": [
            {
                "model": first.family,
                "canary": [{"to": f"{first.family}@candidate", "percent": 10}],
                "shadow": second.name,
                "shadow_percent": 50,
            }
        ],
    }
    config_path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return {
        "path": config_path,
        "config": config,
        "first": first.name,
        "second": second.name,
        "family": first.family,
        "report": report.report_id,
        "dataset": first.dataset_version_id,
        "run": first.run_id,
    }


@pytest.fixture
def app_url(ui_project: dict):
    config = load_config(ui_project["path"])
    with ui_in_background(config, ui_project["path"]) as url:
        yield url


def session_client(url: str) -> httpx.Client:
    """A client that keeps the app's session cookie, like a browser."""
    return httpx.Client(base_url=url, follow_redirects=False, timeout=30)


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, "the page has no form token"
    return found.group(1)


def test_every_page_shows_the_workspace_records(ui_project, app_url):
    p = ui_project
    with session_client(app_url) as client:
        expected = {
            "/": [p["first"], "production"],
            "/datasets": [p["dataset"]],
            f"/datasets/{p['dataset']}": ["Validation report", "chart-lengths", "Rejected rows"],
            "/runs": [p["run"]],
            f"/runs/{p['run']}": ["chart-loss", "chart-throughput", "method: lora"],
            "/evaluations": [p["report"]],
            f"/evaluations/{p['report']}": ["rouge_l", "item-diff", "chart-eval", "passed"],
            "/registry": [p["first"], p["second"], p["family"]],
            f"/registry/v/{p['first']}": [
                "Lineage",
                p["dataset"],
                p["run"],
                p["report"],
                "promote",
                f"route <code>{p['family']}</code>",
            ],
            f"/registry/family/{p['family']}": ["first release", "rollback-production"],
            f"/registry/diff?a={p['first']}&b={p['second']}": ["train.seed", "train.learning_rate"],
            "/deployments": [
                f"{p['first']} 90%",
                f"{p['second']} 10%",
                "answers a mirror of 50%",
                'id="stream"',
            ],
            "/monitoring": [p["first"], "mean length", "vague"],
        }
        for path, texts in expected.items():
            response = client.get(path)
            assert response.status_code == 200, (path, response.text[:2000])
            for text in texts:
                assert text in response.text, (path, text)
            assert response.headers["content-security-policy"].startswith("default-src 'self'")
        detail = client.get("/deployments").text
        request_id = re.search(r'href="/deployments/requests/(req-[0-9a-f]+)"', detail).group(1)
        page = client.get(f"/deployments/requests/{request_id}")
        assert page.status_code == 200 and "When does Fernwick open" in page.text
        assert client.get("/runs/run-nothing").status_code == 404
        assert client.get("/registry/v/nothing-v9").status_code == 404
        assert client.get(f"/evaluations/{p['report']}/../../etc/sheet.html").status_code == 404
        live = client.get(f"/runs/{p['run']}/live.json").json()
        assert live["status"] == "finished" and any(x["name"] == "loss" for x in live["points"])
        worse = client.get(f"/evaluations/{p['report']}?show=worse&metric=rouge_l&against=base")
        assert worse.status_code == 200
        drift = client.get(f"/monitoring/drift?version={p['first']}")  # the four served prompts
        assert drift.status_code == 200 and "classifier AUC" in drift.text, drift.text[-1500:]
        too_few = client.get(f"/monitoring/drift?version={p['second']}")  # never served
        assert too_few.status_code == 409 and "drift needs at least 4" in too_few.text


def test_a_form_config_is_validated_as_the_cli_validates_it(ui_project, app_url):
    with session_client(app_url) as client:
        token = csrf_of(client.get("/runs/new").text)
        refused = client.post(
            "/runs/new", data={"csrf": token, "method": "lora", "epochs": "-1", "overrides": "train.lora.r=0"}
        )
        assert refused.status_code == 400
        with pytest.raises(ConfigError) as cli:
            load_config(ui_project["path"], ["train.method=lora", "train.epochs=-1", "train.lora.r=0"])
        assert "train.epochs: Input should be greater than 0" in refused.text  # as the form named it
        assert "train.lora.r" in refused.text
        for line in str(cli.value).splitlines()[1:]:  # the CLI's own messages, field by field
            assert str(escape(line.strip())) in refused.text
        not_a_setting = client.post("/runs/new", data={"csrf": token, "overrides": "just words"})
        assert (
            not_a_setting.status_code == 400 and "an override is `section.field=value`" in not_a_setting.text
        )
        forged = client.post("/runs/new", data={"csrf": "forged", "epochs": "1"})
        assert forged.status_code == 403 and "token" in forged.text


@pytest.fixture
def keyed_url(ui_project: dict):
    """The app as it starts by default (`ui.auth: keys`)."""
    config = load_config(ui_project["path"], ["ui.auth=keys"])
    with ui_in_background(config, ui_project["path"]) as url:
        yield url


def test_keys_gate_the_pages_and_the_actions(ui_project, keyed_url):
    from tunesmith.serve.keys import create_key, revoke_key

    app_url = keyed_url
    workspace = open_workspace(ui_project["config"])
    with session_client(app_url) as client:  # no key yet: nobody gets in, and the sign-in page says why
        assert client.get("/registry").headers["location"] == "/login?next=%2Fregistry"
        assert "No API key is active" in client.get("/login").text
    viewer_key, viewer_secret = create_key(workspace, "ui-viewer")
    admin_key, admin_secret = create_key(workspace, "ui-admin", admin=True)
    try:
        with session_client(app_url) as client:
            wait_for(lambda: client.get("/registry").status_code == 303, timeout=10)
            assert client.get("/registry").headers["location"] == "/login?next=%2Fregistry"
            assert client.get("/runs/x/live.json").status_code == 401
            wrong = client.post("/login", data={"key": "tsk-nothing", "next": "/registry"})
            assert wrong.status_code == 401 and "not an active key" in wrong.text
            signed = client.post("/login", data={"key": viewer_secret, "next": "//evil.example/x"})
            assert signed.status_code == 303 and signed.headers["location"] == "/"
            page = client.get(f"/registry/v/{ui_project['second']}")
            assert page.status_code == 200 and "ui-viewer" in page.text
            refused = client.post(
                f"/registry/v/{ui_project['second']}/promote",
                data={"csrf": csrf_of(page.text), "alias": "staging"},
            )
            assert refused.status_code == 403 and "--admin" in refused.text
            revoke_key(workspace, viewer_key.id)
            wait_for(lambda: client.get("/registry").status_code == 303, timeout=10)  # the session ended
        with session_client(app_url) as client:
            client.post("/login", data={"key": admin_secret, "next": "/"})
            page = client.get(f"/registry/v/{ui_project['second']}")
            moved = client.post(
                f"/registry/v/{ui_project['second']}/promote",
                data={"csrf": csrf_of(page.text), "alias": "staging", "reason": "try it"},
            )
            assert moved.status_code == 200 and "staging now points at" in moved.text
        bearer = httpx.get(
            f"{app_url}/registry/family/{ui_project['family']}",
            headers={"Authorization": f"Bearer {admin_secret}"},
        )
        assert bearer.status_code == 200 and "ui:ui-admin" in bearer.text  # the move's recorded actor
    finally:
        revoke_key(workspace, admin_key.id)
        with contextlib.suppress(LookupError):  # revoked in the test already, unless it failed first
            revoke_key(workspace, viewer_key.id)
    # the last key revoked: the app stays closed, to a bearer of the old key too
    with session_client(app_url) as client:
        bearer = {"Authorization": f"Bearer {admin_secret}"}
        wait_for(lambda: client.get("/runs/x/live.json", headers=bearer).status_code == 401, timeout=10)
        assert client.get("/registry").status_code == 303
        assert "No API key is active" in client.get("/login").text


def test_lists_are_paginated(ui_project, app_url):
    from datetime import timedelta

    from tunesmith.store import RequestLog, session
    from tunesmith.store.schema import utcnow

    workspace = open_workspace(ui_project["config"])
    start = utcnow() - timedelta(days=2)
    with session(workspace.engine) as s:
        s.add_all(
            RequestLog(
                id=f"req-page{i:06d}",
                at=start + timedelta(seconds=i),
                endpoint="chat",
                requested_model="elsewhere",
                route="primary",
                prompt=[{"role": "user", "content": f"row {i}"}],
                output=["ok"],
                finish_reasons=["stop"],
                params={},
                status=200 if i % 10 else 503,
                latency_ms=12.0,
            )
            for i in range(130)
        )
    with session_client(app_url) as client:
        first = client.get("/deployments?route=primary&status=error").text
        assert "1–13 of 13" in first
        third = client.get("/deployments?page=3&route=primary").text
        assert re.search(r"101–\d+ of \d+", third) and "req-page000029" in third
        beyond = client.get("/deployments?page=999").text
        assert "page 1 of" not in beyond and "next ›" not in beyond  # clamped to the last page
    with session(workspace.engine) as s:
        for row in s.query(RequestLog).filter(RequestLog.requested_model == "elsewhere"):
            s.delete(row)


def test_the_chart_library_is_vendored_and_pinned():
    static = REPO / "src" / "tunesmith" / "ui" / "static"
    library = static / "vendor" / "chart-4.5.1.umd.min.js"
    assert hashlib.sha256(library.read_bytes()).hexdigest() == (
        "48444a82d4edcb5bec0f1965faacdde18d9c17db3063d042abada2f705c9f54a"
    )
    assert (static / "vendor" / "chart-4.5.1.LICENSE.md").exists()
    for template in (REPO / "src" / "tunesmith" / "ui" / "templates").glob("*.j2"):
        text = template.read_text(encoding="utf-8")
        assert not re.search(r'(src|href)="(https?:)?//', text), f"{template.name} loads from another host"


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.skip("Debian chromium is not installed (make setup installs it)")
    pytest.importorskip("playwright", reason="playwright is not installed (the dev extra)")
    return found


def test_the_lifecycle_in_a_real_browser(ui_project, app_url):
    """Load every page, promote (refused, then through a passing gate report from an eval started
    here), roll back, and start a training run whose live curve grows."""
    from playwright.sync_api import expect, sync_playwright

    chromium = _chromium()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    p = ui_project
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        for path in PAGES:
            page.goto(app_url + path)
            expect(page.locator("header nav")).to_be_visible()
            page.screenshot(path=ARTIFACTS / f"page{path.replace('/', '-') or '-'}.png", full_page=True)
        page.goto(f"{app_url}/evaluations/{p['report']}")
        page.wait_for_function("document.querySelector('#chart-eval').height > 0")
        page.select_option("#show", "changed")
        page.click("#filter-items")
        expect(page.locator("#item-diff")).to_be_visible()
        page.screenshot(path=ARTIFACTS / "evaluation.png", full_page=True)

        # a promotion with no passing gate report against production is refused, with the reason
        page.goto(f"{app_url}/registry/v/{p['second']}")
        page.click("#promote")
        expect(page.locator("#outcome")).to_contain_text("has no passing gate report")
        page.screenshot(path=ARTIFACTS / "promote-refused.png")

        # an evaluation started here makes that report; the same button then promotes
        page.goto(f"{app_url}/evaluations/new?version={p['second']}")
        page.fill("input[name=compare]", "base,production")
        page.click("#start-eval")
        page.wait_for_url(re.compile(r".*/evaluations/er-[0-9a-f]+$"), timeout=120_000)
        expect(page.locator("h1")).to_contain_text("passed")
        page.goto(f"{app_url}/registry/v/{p['second']}")
        page.fill("#promote-reason", "better on rouge_l")
        page.click("#promote")
        expect(page.locator("#outcome")).to_contain_text(f"production now points at {p['second']}")
        expect(page.locator("#outcome")).to_contain_text("Gate report")
        page.screenshot(path=ARTIFACTS / "promoted.png")

        page.goto(f"{app_url}/registry/family/{p['family']}")
        page.fill("#aliases tr:has(#rollback-production) input[name=reason]", "checking the rollback")
        page.click("#rollback-production")
        expect(page.locator("#outcome")).to_contain_text(f"production is back on {p['first']}")
        page.screenshot(path=ARTIFACTS / "rolled-back.png")

        # a small training run from the form: the job page hands over to the run's live page
        page.goto(f"{app_url}/runs/new")
        page.fill("input[name=epochs]", "3")
        page.click("#start-train")
        page.wait_for_url(re.compile(r".*/runs/run-[\w-]+$"), timeout=120_000)
        counts = []
        for _ in range(2):
            counts.append(
                page.wait_for_function(
                    "(n) => { const c = Chart.getChart('chart-loss');"
                    " const k = c ? c.data.datasets[0].data.length : 0; return k > n ? k : false; }",
                    arg=counts[-1] if counts else 0,
                    timeout=120_000,
                ).json_value()
            )
        assert counts[1] > counts[0] > 0
        page.screenshot(path=ARTIFACTS / "run-live.png", full_page=True)
        expect(page.locator("#run-status")).to_contain_text("finished", timeout=120_000)
        expect(page.locator("#run-version")).to_contain_text(f"{p['family']}-v3")
        page.screenshot(path=ARTIFACTS / "run-finished.png", full_page=True)
        browser.close()
    assert not errors, errors
    workspace = open_workspace(p["config"])
    from tunesmith.registry.aliases import history

    moves = [(e.alias, e.action, e.actor) for e in history(workspace, p["family"], "production")[:2]]
    assert moves[0][1] == "rollback" and moves[1][1] == "promote"
    assert all(actor.startswith("ui:") for _, _, actor in moves)


def test_tunesmith_ui_runs_from_the_command_line_on_the_port_it_is_given(tmp_path):
    """`--port 0` is a free port (uvicorn names it), not the configured 8600."""
    import signal
    import subprocess
    import sys

    config = tmp_path / "tunesmith.yaml"
    config.write_text("project: p\nui:\n  auth: none\n", encoding="utf-8")
    command = [sys.executable, "-m", "tunesmith.cli", "ui", "--config", str(config), "--port", "0"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert process.stdout is not None
    said, bound = [], None
    try:
        for line in process.stdout:
            said.append(line)
            if bound := re.search(r"Uvicorn running on (http://127\.0\.0\.1:\d+)", line):
                break
        assert bound and not bound.group(1).endswith(":8600"), "".join(said)
        assert "a free port of 127.0.0.1" in "".join(said)
        assert httpx.get(f"{bound.group(1)}/", timeout=30).status_code == 200
    finally:
        process.send_signal(signal.SIGINT)
        process.communicate(timeout=60)
    assert process.returncode == 0
