"""Forgetting triggers a fix: `train.forgetting.auto` and `tunesmith improve` train again with replay
of general data, then a lower learning rate, while the forgetting probe (or gate) fails.

The general set here is counting in words, which the tiny model never sees in the Fernwick rows:
fine-tuning on Fernwick at a high learning rate raises its loss on counting (it forgets), and
replaying counting rows brings it back down, so each test sees a failing and a passing attempt."""

from __future__ import annotations

import json
import re
import uuid

import pytest
from typer.testing import CliRunner

from conftest import write_jsonl
from tunesmith.cli import app
from tunesmith.config import load_config
from tunesmith.pipeline import write_demo_project

runner = CliRunner(env={"COLUMNS": "220"})  # the tables on one line each
WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


@pytest.fixture
def project(tmp_path, tiny_model_dir):
    rows = []
    for n in range(48):
        counted = " ".join(WORDS[(n + k) % 10] for k in range(12))
        row = {"messages": [{"role": "user", "content": f"Count on from {WORDS[n % 10]}."}]}
        row["messages"].append({"role": "assistant", "content": counted})
        rows.append({**row, **({"use": "probe"} if n % 6 == 0 else {})})
    general = tmp_path / "counting.jsonl"
    write_jsonl(general, rows)
    settings = [
        f"model.id={tiny_model_dir}",
        "train.method=lora",
        "train.epochs=3",
        "train.lr=0.3",
        "train.save_strategy=no",
        f"train.forgetting.general_data={general}",
        "train.forgetting.replay_fraction=1.0",
        "train.forgetting.method=none",  # the guards start from an unguarded run (the recipe replays)
    ]
    return {"config": write_demo_project(tmp_path), "settings": settings, "general": general}


def _cli(project, command: str, settings: list[str] = ()) -> object:
    sets = [a for s in [*project["settings"], *settings] for a in ("--set", s)]
    config = [str(project["config"])] if command == "train" else ["--config", str(project["config"])]
    return runner.invoke(app, [command, *config, *sets])


def test_train_with_auto_guard_retries_with_replay_until_the_probe_holds(project):
    from tunesmith.registry.versions import alias_target
    from tunesmith.workspace import open_workspace

    guard = ["train.forgetting.auto=true", "train.forgetting.max_increase=0.0"]
    result = _cli(project, "train", settings=guard)
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())
    assert re.search(
        r"fernwick-support-v1 raised the general answer loss by \+\d+\.\d% \(at most \+0%\)", said
    )
    assert "training again with replay of general data (100% of the train rows)" in said
    assert "Registered fernwick-support-v2" in said  # the last run is the one that held
    assert "Forgetting guard: the general answer loss may rise by at most 0%" in said
    workspace = open_workspace(load_config(project["config"], project["settings"]))
    held = alias_target(workspace, "fernwick-support", "candidate")
    assert held.name == "fernwick-support-v2" and held.config["train"]["forgetting"]["method"] == "replay"

    none_left = _cli(project, "train", settings=[*guard, "train.forgetting.max_attempts=0"])
    assert none_left.exit_code == 3, none_left.output
    assert "no attempt kept the general answer loss within +0%" in " ".join(none_left.output.split())


def test_improve_trains_again_with_a_guard_while_the_forgetting_gate_fails(project):
    from tunesmith.registry.aliases import promote
    from tunesmith.registry.versions import alias_target
    from tunesmith.store import Feedback, RequestLog, session
    from tunesmith.train.run import train
    from tunesmith.workspace import open_workspace

    config = load_config(project["config"], project["settings"])
    production = train(config).version  # forgot some counting already
    workspace = open_workspace(config)
    promote(workspace, config.registry, production, "production", force=True, reason="test")
    with session(workspace.engine) as s:
        for n in range(8):
            request_id = f"req-{uuid.uuid4().hex}"
            question = f"Can I book study room {n} for the afternoon?"
            s.add(
                RequestLog(
                    id=request_id,
                    endpoint="chat",
                    requested_model="fernwick-support@production",
                    version_id=production.id,
                    route="primary",
                    prompt=[{"role": "user", "content": question}],
                    output=["no idea"],
                    finish_reasons=["stop"],
                    params={},
                    status=200,
                )
            )
            correction = f"Yes: study room {n} can be booked at the front desk for up to four hours."
            s.add(Feedback(request_id=request_id, version_id=production.id, correction=correction))
    gates = [
        f"eval.probe.text={project['general']}",
        "eval.probe.enabled=true",
        "eval.max_new_tokens=4",
        "eval.bootstrap_resamples=100",
        "eval.metrics=[rouge_l]",
        "eval.no_regression=false",
        "eval.gates=[{metric: general_perplexity, max_forgetting: 0.1}]",
    ]
    result = _cli(project, "improve", settings=gates)
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())
    assert "The forgetting gate failed, so improve trained again with each guard in turn" in said
    assert alias_target(workspace, "fernwick-support", "shadow").name == "fernwick-support-v3"
    [folder] = (workspace.root / "improve").iterdir()
    attempts = json.loads((folder / "attempts.json").read_text())
    assert [a["version"] for a in attempts] == ["fernwick-support-v2", "fernwick-support-v3"]
    assert [a["guard"] for a in attempts] == [
        "as configured",
        "replay of general data (100% of the train rows)",
    ]
    assert "general perplexity changed by +" in attempts[0]["failed"][0] and not attempts[1]["failed"]
