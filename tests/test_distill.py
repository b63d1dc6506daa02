"""Distillation (`objective: distill`) through the CLI on the tiny models: on-policy from a registered
version, off-policy from a teacher with another vocabulary and from an OpenAI-compatible endpoint
(`tunesmith serve` itself), and the version's lineage naming the teacher."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import demo_project, demo_rows
from tunesmith.cli import app
from tunesmith.config import load_config
from tunesmith.registry.versions import get_version
from tunesmith.store import RequestLog, session
from tunesmith.workspace import open_workspace

runner = CliRunner()
COMMON = ["train.max_steps=2", "train.batch_size=4", "train.save_strategy=no", "eval.max_new_tokens=4"]


def write_project(tmp_path: Path, model_dir: Path) -> Path:
    train = {"method": "lora", "lr": 1e-3, "forgetting": {"probe": False}}
    return demo_project(tmp_path, model_dir, "pupil", 40, data={"clean": {"near_dedup": False}}, train=train)


def train(config: Path, *settings: str):
    sets = [arg for s in [*COMMON, *settings] for arg in ("--set", s)]
    result = runner.invoke(app, ["train", str(config), *sets])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result, " ".join(result.output.split())


def distill(config: Path, *settings: str):
    return train(config, "train.objective=distill", *settings)


def test_on_policy_from_a_registered_version_and_the_lineage_names_it(tmp_path, tiny_model_dir):
    config = write_project(tmp_path, tiny_model_dir)
    teacher, _ = train(config)
    assert teacher.exit_code == 0, teacher.output

    distilled, said = distill(
        config, "train.distill.teacher.model=pupil-v1", "train.distill.max_completion_length=6"
    )
    assert distilled.exit_code == 0, distilled.output
    assert "Distilling on-policy: the teacher pupil-v1 has the student's vocabulary" in said
    assert "distillation from pupil-v1 (on-policy, generalised JSD beta=0.5)" in said
    workspace = open_workspace(load_config(config))
    first, second = get_version(workspace, "pupil-v1"), get_version(workspace, "pupil-v2")
    assert second.lineage["distill"] == {
        "teacher": {"version": "pupil-v1", "id": first.id, "weights_sha256": first.weights_sha256},
        "beta": 0.5,
    }
    assert second.metrics["distill_on_policy"] == 1.0 and "divergence_last_quarter" in second.metrics


def test_another_vocabulary_is_refused_on_policy_and_learned_off_policy(
    tmp_path, tiny_model_dir, tiny_byte_model_dir
):
    config = write_project(tmp_path, tiny_model_dir)
    teacher = [f"train.distill.teacher.model={tiny_byte_model_dir}", "train.distill.teacher.max_tokens=8"]
    sets = [arg for s in ["train.objective=distill", *teacher] for arg in ("--set", s)]
    planned = runner.invoke(app, ["train", str(config), "--plan", *sets])  # the mode, before a run
    said = " ".join(planned.output.split())
    assert planned.exit_code == 0 and "distill.mode" in said and "off_policy" in said, planned.output
    refused, said = distill(config, *teacher, "train.distill.mode=on_policy")
    assert refused.exit_code == 1, refused.output
    assert "mode on_policy needs the teacher's token distributions" in said
    assert "set train.distill.mode: off_policy" in said

    learned, said = distill(config, *teacher)
    assert learned.exit_code == 0, learned.output
    assert "Distilling off-policy: the teacher" in said and "vocabulary" in said
    assert "(off-policy, SFT on its answers)" in said
    workspace = open_workspace(load_config(config))
    version = get_version(workspace, "pupil-v1")
    assert version.lineage["distill"]["teacher"] == {"model": str(tiny_byte_model_dir)}
    assert version.metrics["distill_on_policy"] == 0.0
    assert list((workspace.root / "distill" / "cache").iterdir())  # the answers are kept for a rerun

    replay = ["train.forgetting.method=replay"]
    refused, said = distill(config, *teacher, *replay)
    assert refused.exit_code == 2 and "set train.distill.mode: off_policy" in said, refused.output
    guarded, said = distill(config, *teacher, *replay, "train.distill.mode=off_policy")
    assert guarded.exit_code == 0, guarded.output
    assert "Distilling off-policy: train.distill.mode is off_policy" in said


def test_off_policy_from_an_endpoint_asks_each_prompt_once(serve_project, tmp_path, tiny_model_dir):
    """`tunesmith serve` is the teacher endpoint; a second run reuses every cached answer."""
    from tunesmith.serve import serve_in_background

    served = load_config(serve_project["path"], [*serve_project["settings"], "serve.poll_seconds=0.2"])
    config = write_project(tmp_path, tiny_model_dir)
    family = serve_project["family"]

    def asked() -> int:
        with session(open_workspace(served).engine) as s:
            return s.query(RequestLog).filter(RequestLog.requested_model == family).count()

    before = asked()
    with serve_in_background(served) as (url, _):
        settings = [
            f"train.distill.teacher.endpoint={url}/v1",
            f"train.distill.teacher.model={family}",
            "train.distill.teacher.max_tokens=8",
        ]
        first, said = distill(config, *settings)
        assert first.exit_code == 0, first.output
        assert f"Distilling off-policy: the teacher {family} is an endpoint" in said
        answered = asked() - before
        assert answered > 0
        again, _ = distill(config, *settings, "train.seed=1")
        assert again.exit_code == 0, again.output
        assert asked() - before == answered  # every answer came from the cache
    workspace = open_workspace(load_config(config))
    lineage = get_version(workspace, "pupil-v1").lineage["distill"]
    assert lineage["teacher"] == {"endpoint": f"{url}/v1", "model": family}


def test_an_unreachable_endpoint_is_a_clear_refusal(tmp_path, tiny_model_dir):
    config = write_project(tmp_path, tiny_model_dir)
    refused, said = distill(
        config,
        "train.distill.teacher.endpoint=http://127.0.0.1:9/v1",
        "train.distill.teacher.model=big",
    )
    assert refused.exit_code == 1, refused.output
    assert "cannot reach the teacher endpoint http://127.0.0.1:9/v1 (train.distill.teacher.endpoint)" in said
    assert "Traceback" not in refused.output


def test_off_policy_answers_train_with_the_loss_on_the_answers_only(tiny_model_dir):
    """The teacher's answers are SFT rows: the prompt is context, as in `objective: sft`."""
    from transformers import AutoTokenizer

    from tunesmith.train.sft import training_rows

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    records = [{"messages": demo_rows()[0]["messages"]}]
    (row,) = training_rows("distill", records, tokenizer)
    assert row["assistant_masks"].count(1) < len(row["input_ids"])  # not the whole conversation
    assert row == training_rows("sft", records, tokenizer)[0]


@pytest.mark.slow
def test_the_bundled_model_distils_on_policy_and_off_policy_from_its_fine_tune(tmp_path):
    from tunesmith.pipeline import write_demo_project
    from tunesmith.train.run import train as train_version

    path = write_demo_project(tmp_path)
    settings = ["data.sample=48", "train.max_steps=2", "train.save_strategy=no"]
    settings += ["train.forgetting.probe=false"]
    teacher = train_version(load_config(path, settings)).version
    student = [
        "train.objective=distill",
        f"train.distill.teacher.model={teacher.name}",
        "train.distill.max_completion_length=16",
        "train.distill.teacher.max_tokens=16",
    ]
    for mode in ("on_policy", "off_policy"):
        config = load_config(path, [*settings, *student, f"train.distill.mode={mode}"])
        version = train_version(config).version
        assert version.lineage["distill"]["teacher"]["id"] == teacher.id
        assert version.metrics["distill_on_policy"] == float(mode == "on_policy")
    workspace = open_workspace(load_config(path, settings))
    assert list((workspace.root / "distill" / "cache").iterdir())  # the teacher's answers, kept


def test_off_policy_rows_with_tool_calls_are_left_out_with_their_reason_not_asked_as_plain_text():
    """Asked as plain text, a teacher would answer a tool's result as if the user had written it."""
    from tunesmith.train.distill import TOOL_ROWS_LEFT_OUT, teacher_prompts

    call = {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
    plain = {"messages": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}]}
    called = {
        "messages": [
            {"role": "user", "content": "Weather in Oslo?"},
            {"role": "assistant", "content": "", "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "c1", "content": '{"temp_c": 4}'},
            {"role": "assistant", "content": "It is 4 degrees."},
        ]
    }
    offered = {**plain, "tools": [{"type": "function", "function": {"name": "get_weather"}}]}
    asked, rejected = teacher_prompts([plain, called, offered])
    assert asked == [plain]
    assert [r["reason"] for r in rejected] == [TOOL_ROWS_LEFT_OUT] * 2
    assert "offers tools or holds tool calls (train tool calls with sft or dpo)" in TOOL_ROWS_LEFT_OUT
