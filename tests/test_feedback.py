"""Human feedback collection: sampled answers, terminal and browser review, preference datasets."""

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tunesmith.cli import app
from tunesmith.config import load_config
from tunesmith.data import load_split
from tunesmith.feedback import FeedbackError, open_session, preference_pairs
from tunesmith.feedback.collect import parse_answer
from tunesmith.pipeline import write_demo_project
from tunesmith.store import DatasetVersion, RequestLog, session
from tunesmith.train.run import train
from tunesmith.workspace import open_workspace

runner = CliRunner()


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model_dir):
    """A tiny registered SFT version to sample answers from."""
    folder = tmp_path_factory.mktemp("feedback")
    config_path = write_demo_project(folder)
    settings = [f"model.id={tiny_model_dir}", "train.max_steps=2", "train.save_strategy=no"]
    outcome = train(load_config(config_path, settings))
    (folder / "prompts.txt").write_text(
        "When was Fernwick Labs founded?\nWho runs Fernwick Labs?\nWhere is the Fernwick office?\n"
    )
    return folder, config_path, settings, outcome.version


def cli(config_path: Path, settings: list[str], *args: str, stdin: str | None = None):
    flags = ["--config", str(config_path), *(a for s in settings for a in ("--set", s))]
    return runner.invoke(app, ["feedback", *args, *flags], input=stdin)


def collect_on(trained, *args: str, stdin: str | None = None):
    """`feedback collect` on the trained version's prompts, six new tokens per answer."""
    folder, config_path, settings, version = trained
    prompts = str(folder / "prompts.txt")
    return cli(
        config_path,
        settings,
        "collect",
        version.name,
        "--prompts",
        prompts,
        *args,
        "--max-new-tokens",
        "6",
        stdin=stdin,
    )


def test_typed_answers_are_rankings_picks_or_skips():
    shown = ["s1", "s0", "s2"]
    assert parse_answer("B A C", shown) == {"ranking": ["s0", "s1", "s2"]}
    assert parse_answer("b>a", shown) == {"ranking": ["s0", "s1"]}
    assert parse_answer("CA", shown) == {"ranking": ["s2", "s1"]}
    assert parse_answer(" c ", shown) == {"best": "s2"}
    assert parse_answer("s", shown) == {"skip": True}
    with pytest.raises(FeedbackError, match="D is not shown"):
        parse_answer("A D", shown)
    with pytest.raises(FeedbackError, match="at most once"):
        parse_answer("A A", shown)


def test_collect_and_review_in_the_terminal_then_resume_and_write_a_preference_dataset(trained):
    _, config_path, settings, version = trained
    collected = collect_on(
        trained,
        "--k",
        "3",
        "--reviewer",
        "cleo",
        stdin="B A C\nz\nq\n",  # a full ranking, a wrong letter (asked again), then stop
    )
    assert collected.exit_code == 0, collected.output
    assert "Z is not shown" in collected.output and "1 review(s) by cleo" in collected.output
    workspace = open_workspace(load_config(config_path, settings))
    target = open_session(workspace, "latest")
    assert target.meta["version"] == version.name and len(target.items) == 3
    assert all(len(item["candidates"]) >= 2 for item in target.items)
    assert (target.folder / "review.html").exists()

    # The next review picks up at the second prompt; a pick gives the best over each other answer.
    resumed = cli(config_path, settings, "review", target.id, "--reviewer", "cleo", stdin="A\ns\n")
    assert resumed.exit_code == 0, resumed.output
    assert "2 of 3" in resumed.output and "1 of 3" not in resumed.output
    reviews = target.reviews()
    assert [(r["item"], "ranking" in r, "best" in r, r.get("skip")) for r in reviews] == [
        ("p0000", True, False, None),
        ("p0001", False, True, None),
        ("p0002", False, False, True),
    ]
    pairs = list(preference_pairs(target))
    first, second = (sum(p["origin"]["item"] == i for p in pairs) for i in ("p0000", "p0001"))
    candidates = len(target.items[1]["candidates"])
    assert first == 3 and second == candidates - 1  # B>A, B>C, A>C; the pick over each other answer
    assert {p["margin"] for p in pairs if p["origin"]["item"] == "p0000"} == {1.0, 2.0}
    assert "Preference dataset ds-" in resumed.output
    with session(workspace.engine) as s:
        dataset = s.query(DatasetVersion).order_by(DatasetVersion.created_at.desc()).first()
    assert dataset.meta["kind"] == "preference"
    assert dataset.meta["lineage"]["session"] == target.id and dataset.meta["lineage"]["reviewers"] == [
        "cleo"
    ]
    rows = [r for split in ("train", "val", "test") for r in load_split(dataset, split)]
    assert len(rows) == len(pairs)
    assert {r["group"] for r in rows} == {
        f"{target.id}:p0000",
        f"{target.id}:p0001",
    }  # pairs of one prompt together


def test_a_prompt_file_error_names_the_line(trained, tmp_path):
    _, config_path, settings, version = trained
    bad = tmp_path / "prompts.jsonl"
    bad.write_text('{"prompt": "fine"}\n{"question": "no prompt field"}\n')
    result = cli(config_path, settings, "collect", version.name, "--prompts", str(bad), "--review", "none")
    assert result.exit_code == 2 and f"{bad}:2: expected" in result.output.replace("\n", "")


def test_production_requests_are_ranked_with_the_served_answer_among_the_candidates(trained):
    _, config_path, settings, version = trained
    workspace = open_workspace(load_config(config_path, settings))
    with session(workspace.engine) as s:
        for n, (question, answer) in enumerate([("Where is the office?", "In Leeds."), ("Hi", "Hello!")]):
            s.add(
                RequestLog(
                    id=f"req-fb{n}",
                    endpoint="chat",
                    requested_model=version.name,
                    version_id=version.id,
                    route="primary",
                    prompt=[{"role": "user", "content": question}],
                    output=[answer],
                    finish_reasons=["stop"],
                    params={},
                    status=200,
                )
            )
    result = cli(
        config_path,
        settings,
        "collect",
        version.name,
        "--from-production",
        "--k",
        "2",
        "--max-new-tokens",
        "6",
        "--review",
        "none",
    )
    assert result.exit_code == 0, result.output
    target = open_session(workspace, "latest")
    assert target.meta["source"] == "production"
    served = [c for item in target.items for c in item["candidates"] if c["origin"] == "served"]
    assert {c["text"] for c in served} == {"In Leeds.", "Hello!"}
    assert {item["source"]["request_id"] for item in target.items} == {"req-fb0", "req-fb1"}


def test_the_review_page_works_in_a_real_browser_and_its_download_imports(trained, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("Debian chromium is not installed (make setup installs it)")
    from playwright.sync_api import sync_playwright

    _, config_path, settings, _ = trained
    collected = collect_on(trained, "--k", "2", "--review", "html")
    assert collected.exit_code == 0, collected.output
    workspace = open_workspace(load_config(config_path, settings))
    target = open_session(workspace, "latest")
    first, second = target.items[0]["id"], target.items[1]["id"]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page()
        page.goto((target.folder / "review.html").as_uri())
        page.fill("#reviewer", "dana")
        page.select_option(f"select[name='{first}-A']", "2")  # a ranking: B first, then A
        page.select_option(f"select[name='{first}-B']", "1")
        page.click(f"#item-{second} button[data-letter='A']")  # a pick
        assert page.inner_text("#progress") == f"2 of {len(target.items)} reviewed"
        with page.expect_download() as download:
            page.click("#download")
        saved = tmp_path / "dana.json"
        download.value.save_as(saved)
        browser.close()
    imported = cli(config_path, settings, "import", target.id, str(saved))
    assert imported.exit_code == 0, imported.output
    assert "2 new review(s)" in imported.output and "Preference dataset ds-" in imported.output
    by_item = {r["item"]: r for r in target.reviews()}
    order = target.order(target.items[0])
    assert by_item[first]["ranking"] == [order[1], order[0]] and by_item[first]["reviewer"] == "dana"
    assert by_item[second]["best"] == target.order(target.items[1])[0]
    again = cli(config_path, settings, "import", target.id, str(saved))
    assert "0 new review(s)" in again.output  # importing the same file twice adds nothing
    payload = json.loads(saved.read_text())
    payload["session"] = "fb-other"
    saved.write_text(json.dumps(payload))
    refused = cli(config_path, settings, "import", target.id, str(saved))
    assert refused.exit_code == 2 and "reviews of session 'fb-other'" in refused.output
