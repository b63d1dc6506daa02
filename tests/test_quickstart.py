"""End to end: quickstart on a tiny random model (fast), and on the real bundled model (slow)."""

import json

import pytest
import yaml
from safetensors.torch import load_file
from sqlalchemy import select
from typer.testing import CliRunner

from tunesmith.cli import app
from tunesmith.config import load_config
from tunesmith.pipeline import quickstart
from tunesmith.registry.versions import all_metrics
from tunesmith.store import ModelVersion, Run, session
from tunesmith.workspace import open_workspace

runner = CliRunner()


def test_tiny_quickstart_end_to_end(tmp_path, tiny_model_dir):
    result = quickstart(
        tmp_path / "qs", [f"model.id={tiny_model_dir}", "train.epochs=1", "eval.max_new_tokens=6"]
    )

    # The project it wrote is a real one: config and data next to each other, the config valid.
    config = load_config(result.config_path)
    assert config.resolve_path(config.data.path).exists()
    assert result.outcome.dataset.counts == {"train": 160, "val": 40, "test": 40, "rejected": 0}

    # Before and after are scored on the same held-out items.
    assert len(result.before.answers) == len(result.after.answers) == 40
    assert set(result.after.means) == {"key_fact", "rouge_l", "exact_match"}

    # The run's artifacts exist, and training changed the adapter weights (LoRA B starts at zero).
    run_dir = result.outcome.run_dir
    for name in (
        "config.yaml",
        "metrics.json",
        "log_history.json",
        "loss.png",
        "adapter/adapter_config.json",
        "eval/answers.jsonl",
        "eval/before_after.png",
        "eval/summary.json",
    ):
        assert (run_dir / name).exists(), name
    weights = load_file(run_dir / "adapter" / "adapter_model.safetensors")
    lora_b = [t for name, t in weights.items() if "lora_B" in name]
    assert lora_b and any(t.abs().sum() > 0 for t in lora_b)
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["train"]["num_train_epochs"] == 1 and saved["model"]["id"] == str(tiny_model_dir)
    answers = [json.loads(line) for line in (run_dir / "eval" / "answers.jsonl").read_text().splitlines()]
    assert set(answers[0]) == {"question", "reference", "before", "after"}

    # The store holds a finished run and an immutable version with its lineage.
    workspace = open_workspace(config)
    with session(workspace.engine) as s:
        run = s.get(Run, result.outcome.run_id)
        versions = list(s.scalars(select(ModelVersion)))
    assert run.status == "finished" and run.kind == "quickstart" and run.finished_at is not None
    assert [v.name for v in versions] == ["fernwick-support-v1"]
    version = versions[0]
    assert version.dataset_version_id == result.outcome.dataset.id
    assert version.base_revision.startswith("sha256:")
    assert len(version.weights_sha256) == 64
    assert version.lineage["libraries"]["trl"]
    assert len(version.lineage["chat_template_sha256"]) == 64
    assert "test_key_fact" not in version.metrics  # registered metrics are never rewritten...
    metrics = all_metrics(workspace, version)  # ...held-out scores found later are appended
    assert metrics["test_key_fact"] == pytest.approx(result.after.means["key_fact"])
    assert metrics["train_loss"] > 0

    # The CLI reads the same store.
    shown = runner.invoke(
        app, ["registry", "show", "fernwick-support-v1", "--config", str(result.config_path)]
    )
    assert shown.exit_code == 0 and result.outcome.dataset.id in shown.output
    listed = runner.invoke(app, ["data", "list", str(result.config_path)])
    assert result.outcome.dataset.id in listed.output

    # A second run on the same data reuses the dataset version and registers v2.
    again = quickstart(
        tmp_path / "qs", [f"model.id={tiny_model_dir}", "train.epochs=1", "eval.max_new_tokens=4"]
    )
    assert again.outcome.dataset.id == result.outcome.dataset.id
    assert again.outcome.version.name == "fernwick-support-v2"


def test_eval_command_compares_base_and_version(tmp_path, tiny_model_dir):
    result = quickstart(
        tmp_path / "qs", [f"model.id={tiny_model_dir}", "train.epochs=1", "eval.max_new_tokens=4"]
    )
    out = runner.invoke(
        app,
        [
            "eval",
            "fernwick-support-v1",
            "--config",
            str(result.config_path),
            "--set",
            "eval.max_new_tokens=4",
        ],
    )
    assert out.exit_code == 0, out.output
    assert "base" in out.output and "fernwick-support-v1" in out.output and "key_fact" in out.output
    missing = runner.invoke(app, ["eval", "nope-v9", "--config", str(result.config_path)])
    assert missing.exit_code == 1 and "no model version" in missing.output


@pytest.mark.slow
def test_real_quickstart_learns_the_facts(tmp_path):
    """The main job on the bundled SmolLM2: the held-out paraphrases must be answered far better."""
    result = quickstart(tmp_path / "qs")
    before, after = result.before.means, result.after.means
    assert before["key_fact"] < 0.15
    assert after["key_fact"] >= before["key_fact"] + 0.4
    assert after["rouge_l"] >= before["rouge_l"] + 0.3
    assert result.outcome.version.metrics["eval_loss"] < result.outcome.version.metrics["first_logged_loss"]


def test_epoch_time_estimate_is_measured(tmp_path, tiny_model_dir):
    from tunesmith.data import prepare_data
    from tunesmith.models import load_causal_lm
    from tunesmith.pipeline import write_demo_project
    from tunesmith.train.estimate import estimate_epoch_time
    from tunesmith.train.recipe import plan_run
    from tunesmith.workspace import open_workspace

    config = load_config(write_demo_project(tmp_path / "qs"), [f"model.id={tiny_model_dir}"])
    dataset = prepare_data(config)
    config = plan_run(config, dataset)  # as a run (and `train --dry-run`) plans it
    base = load_causal_lm(str(tiny_model_dir))
    estimate = estimate_epoch_time(config, dataset, base, open_workspace(config), steps=3)
    assert estimate.tokens_per_second > 0 and estimate.seconds_per_step > 0
    assert estimate.rows == dataset.counts["train"]
    assert (
        estimate.rows_per_step == config.train.per_device_train_batch_size * config.train.accumulation_steps
    )
    steps_per_epoch = estimate.rows / estimate.rows_per_step
    assert estimate.seconds_per_epoch == pytest.approx(steps_per_epoch * estimate.seconds_per_step)
    assert estimate.total_seconds == pytest.approx(estimate.seconds_per_epoch * config.train.num_train_epochs)
