"""`classify` and `tag` objectives on the tiny random Llama: heads, labels from the data, test reports,
eval against the majority class, LoRA adapters that reload, and refusal of mismatched settings."""

import json
import random
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import write_jsonl
from tunesmith.cli import app
from tunesmith.config import ConfigError, load_config
from tunesmith.evaluate.runner import run_eval
from tunesmith.registry.loading import load_version
from tunesmith.train.run import train

runner = CliRunner()

# Words the tiny tokenizer knows (it was trained on the demo text); each class has its own.
HARDWARE = ["battery", "waterproof", "sensor", "garden", "charger", "solar"]
MONEY = ["price", "refund", "invoice", "discount", "shipping", "warranty"]
FILLER = ["the", "is", "my", "for", "a", "what", "how", "does"]


def write_project(tmp_path: Path, model_dir: Path, rows: list[dict], *train_lines: str) -> Path:
    data = tmp_path / "rows.jsonl"
    write_jsonl(data, rows)
    config = tmp_path / "tunesmith.yaml"
    config.write_text(
        f"project: topics\nmodel:\n  id: {model_dir}\ndata:\n  path: {data}\n"
        "  clean:\n    near_dedup: false\n"
        "train:\n  method: full\n  lr: 1e-2\n  epochs: 4\n  batch_size: 8\n  save_strategy: 'no'\n"
        + "".join(f"  {line}\n" for line in train_lines),
        encoding="utf-8",
    )
    return config


def topic_rows(n: int = 160) -> list[dict]:
    rng = random.Random(0)
    rows = []
    for i in range(n):
        label, words = ("hardware", HARDWARE) if i % 3 else ("billing", MONEY)
        text = [*rng.sample(FILLER, 3), *rng.sample(words, 2)]
        rng.shuffle(text)
        rows.append({"text": " ".join(text) + f" {i}", "label": label})
    return rows


def tag_rows(n: int = 120) -> list[dict]:
    rng = random.Random(1)
    rows = []
    for _ in range(n):
        tokens = [rng.choice(FILLER + HARDWARE) for _ in range(6)]
        tags = ["B-PART" if t in HARDWARE else "O" for t in tokens]
        rows.append({"tokens": tokens, "tags": tags})
    return rows


def test_classify_trains_a_head_reports_the_test_split_and_beats_the_majority(tmp_path, tiny_model_dir):
    config_path = write_project(tmp_path, tiny_model_dir, topic_rows(), "objective: classify")
    result = runner.invoke(app, ["train", str(config_path)])
    assert result.exit_code == 0, result.output
    assert "Training classify (full, 2 labels)" in result.output
    assert "majority class 'hardware'" in result.output
    assert "majority class vs this version" in result.output
    config = load_config(config_path)
    outcome_dir = next((tmp_path / ".tunesmith" / "runs").iterdir())
    report = json.loads((outcome_dir / "test_report.json").read_text())
    assert report["majority_class"] == "hardware"
    assert report["confusion_matrix"]["labels"] == ["billing", "hardware"]
    assert sum(map(sum, report["confusion_matrix"]["matrix"])) == report["rows"]
    assert report["scores"]["accuracy"] > report["majority_scores"]["accuracy"] + 0.2
    labels = json.loads((outcome_dir / "model" / "labels.json").read_text())
    assert labels == {"objective": "classify", "labels": ["billing", "hardware"]}

    # The registered version reloads with its head, and eval compares it with the majority class.
    results = run_eval(config, "topics-v1").systems
    assert [r.label for r in results] == ["majority", "topics-v1"]
    assert set(results[0].outputs) == {"hardware"}
    assert results[1].scores["accuracy"].value == pytest.approx(report["scores"]["accuracy"])
    assert set(results[1].outputs) <= {"billing", "hardware"}
    shown = runner.invoke(app, ["eval", "topics-v1", "--config", str(config_path)])
    assert shown.exit_code == 0 and "macro_f1" in shown.output
    # with few-shot on, the base LM is also asked by prompting, zero-shot and with 3 train examples,
    # each label scored as the answer, and the version is tested against them
    prompted = run_eval(config, "topics-v1", few_shot=3)
    systems = prompted.systems
    assert [r.label for r in systems] == ["majority", "base 0-shot", "base 3-shot", "topics-v1"]
    assert all(set(r.outputs) <= {"billing", "hardware"} for r in systems)
    assert systems[-1].scores["accuracy"].value == pytest.approx(report["scores"]["accuracy"])
    assert any("base 3-shot" in line for line in prompted.report["verdicts"])


def test_classify_with_lora_saves_the_head_in_the_adapter(tmp_path, tiny_model_dir):
    config_path = write_project(
        tmp_path, tiny_model_dir, topic_rows(), "objective: classify", "method: lora", "lr: 5e-3"
    )
    outcome = train(load_config(config_path))
    assert outcome.version.metrics["trainable_parameters"] < outcome.version.metrics["total_parameters"] / 2
    adapter = json.loads((outcome.run_dir / "adapter" / "adapter_config.json").read_text())
    assert adapter["task_type"] == "SEQ_CLS"
    workspace_version, model, _ = load_version(outcome_workspace(config_path), outcome.version.name)
    assert workspace_version.method == "lora"
    assert model.config.id2label == {0: "billing", 1: "hardware"}
    # the reloaded adapter predicts what the trained one did
    results = run_eval(load_config(config_path), outcome.version.name, outcome_workspace(config_path)).systems
    assert results[1].scores["accuracy"].value == pytest.approx(outcome.version.metrics["test_accuracy"])


def test_a_new_head_starts_from_the_same_weights_for_the_same_seed(tmp_path, tiny_model_dir):
    """The head is initialised when the model loads, before the trainer seeds: the run's seed covers it."""
    import torch

    from tunesmith.data import prepare_data
    from tunesmith.train.run import load_base

    config_path = write_project(tmp_path, tiny_model_dir, topic_rows(), "objective: classify")
    config = load_config(config_path)
    dataset = prepare_data(config)

    def head(seed: int, left_at: int) -> torch.Tensor:
        seeded = config.model_copy(update={"train": config.train.model_copy(update={"seed": seed})})
        torch.manual_seed(left_at)  # wherever earlier work left the global generator
        return load_base(seeded, dataset).model.score.weight.detach().clone()

    assert torch.equal(head(0, left_at=1), head(0, left_at=2))
    assert not torch.equal(head(0, left_at=1), head(1, left_at=1))


def outcome_workspace(config_path: Path):
    from tunesmith.workspace import open_workspace

    return open_workspace(load_config(config_path))


def test_classify_labels_follow_data_labels_and_head_method_trains_only_the_scorer(tmp_path, tiny_model_dir):
    config_path = write_project(
        tmp_path, tiny_model_dir, topic_rows(), "objective: classify", "method: head", "lr: 5e-2"
    )
    config = load_config(config_path, ["data.labels=[hardware, billing, other]"])
    outcome = train(config)
    assert outcome.version.metrics["labels"] == 3  # the configured list, in its order, with a label unseen
    assert outcome.model.config.id2label == {0: "hardware", 1: "billing", 2: "other"}
    trainable = {n.split(".")[0] for n, p in outcome.model.named_parameters() if p.requires_grad}
    assert trainable == {"score"}


@pytest.mark.parametrize(("objective", "rows"), [("classify", topic_rows), ("tag", tag_rows)])
def test_a_classifier_or_tagger_trains_without_a_validation_split(tmp_path, tiny_model_dir, objective, rows):
    config_path = write_project(tmp_path, tiny_model_dir, rows(60), f"objective: {objective}", "max_steps: 2")
    outcome = train(load_config(config_path, ["data.split.val=0"]))
    assert outcome.version.metrics["test_accuracy"] >= 0 and "eval_loss" not in outcome.version.metrics


def test_tag_scores_entities_with_seqeval(tmp_path, tiny_model_dir):
    config_path = write_project(tmp_path, tiny_model_dir, tag_rows(), "objective: tag")
    outcome = train(load_config(config_path))
    assert outcome.model.config.id2label == {0: "O", 1: "B-PART"}
    metrics = outcome.version.metrics
    assert {"test_f1", "test_precision", "test_recall", "test_accuracy", "eval_f1"} <= set(metrics)
    assert metrics["test_f1"] > 0.5  # the word decides the tag; even a tiny model learns it
    report = json.loads((outcome.run_dir / "test_report.json").read_text())
    assert "PART" in report["per_class"]
    result = run_eval(load_config(config_path), outcome.version.name)
    results = result.systems
    assert results[0].label == "all O" and results[0].scores["entity_f1"].value == 0.0
    assert results[1].scores["entity_f1"].value == pytest.approx(metrics["test_f1"])
    assert "PART" in result.report["tagging"][outcome.version.name]


def test_objective_and_data_kind_must_match_and_guards_do_not_apply(tmp_path, tiny_model_dir):
    config_path = write_project(tmp_path, tiny_model_dir, topic_rows(), "objective: tag")
    refused = runner.invoke(app, ["train", str(config_path)])
    assert refused.exit_code == 1
    assert "train.objective=tag needs tagging rows" in refused.output
    assert "set train.objective: classify" in refused.output
    with pytest.raises(ConfigError, match=r"forgetting\.method replay guards generation"):
        load_config(config_path, ["train.objective=classify", "train.forgetting.method=replay"])


def test_dry_run_of_a_classifier_calibrates_on_its_own_trainer(tmp_path, tiny_model_dir):
    config_path = write_project(tmp_path, tiny_model_dir, topic_rows(), "objective: classify")
    result = runner.invoke(app, ["train", str(config_path), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "It fits" in result.output and "min per epoch" in result.output
    assert "Dry run: full classify" in result.output
    assert not (tmp_path / ".tunesmith" / "runs").exists()


@pytest.mark.parametrize("objective", ["classify", "sft"])
def test_a_run_that_raises_is_recorded_as_failed_with_its_error(tmp_path, tiny_model_dir, objective):
    from tunesmith.store import Run, session
    from tunesmith.train.sft import TrainConfigError
    from tunesmith.workspace import open_workspace

    if objective == "classify":
        config_path = write_project(tmp_path, tiny_model_dir, topic_rows(), "objective: classify")
    else:
        from tunesmith.pipeline import write_demo_project

        config_path = write_demo_project(tmp_path)
    config = load_config(config_path, [f"model.id={tiny_model_dir}", "train.args={not_a_field: 1}"])
    with pytest.raises(TrainConfigError, match="not_a_field"):
        train(config)
    with session(open_workspace(config).engine) as s:
        (run,) = s.query(Run).all()
        assert run.status == "failed" and "not_a_field" in run.error and run.finished_at is not None


def test_classifier_eval_slices_gates_and_cross_validation(tmp_path, tiny_model_dir):
    from tunesmith.evaluate.cv import cross_validate

    rows = topic_rows(400)  # 40 test rows: enough discordant items for a significant paired test
    for i, row in enumerate(rows):
        row["channel"] = "email" if i % 4 else "chat"
    config_path = write_project(tmp_path, tiny_model_dir, rows, "objective: classify")
    config = load_config(
        config_path,
        [
            "eval.slices=[channel, label]",
            "eval.bootstrap_resamples=200",
            "eval.gates=[{metric: accuracy, min: 0.6}, {metric: macro_f1, min_improvement: 0.1, over: base}]",
        ],
    )
    outcome = train(config)
    result = run_eval(config, outcome.version.name)
    report = result.report
    assert [s["label"] for s in report["systems"]] == ["majority", outcome.version.name]
    assert report["gate_passed"] is True, report["gates"]
    assert {s["column"] for s in report["slices"]} == {"channel", "label"}
    by_label = next(s for s in report["slices"] if s["column"] == "label")
    assert set(by_label["slices"]) == {"billing", "hardware"}
    confusion = report["classification"]["systems"][outcome.version.name]["confusion_matrix"]
    assert sum(map(sum, confusion)) == report["items"]
    assert "Confusion matrices" in (result.directory / "report.html").read_text()

    cv = cross_validate(load_config(config_path, ["train.epochs=2", "eval.bootstrap_resamples=200"]), 2)
    assert len(cv["per_fold"]) == 2 and set(cv["summary"]) == {
        "accuracy",
        "macro_f1",
        "micro_f1",
        "macro_precision",
        "macro_recall",
    }
    assert all(0 <= v <= 1 for v in cv["summary"]["accuracy"]["values"])


def test_a_lora_classifier_over_a_bfloat16_body_trains_its_head_in_float32_and_reloads_alike(
    tmp_path, tiny_model_dir
):
    import torch

    config_path = write_project(
        tmp_path, tiny_model_dir, topic_rows(), "objective: classify", "method: lora", "lr: 5e-3"
    )
    config = load_config(config_path, ["model.dtype=bfloat16"])
    outcome = train(config)
    trained = dict(outcome.model.named_parameters())
    head = {n: p for n, p in trained.items() if p.requires_grad and ".score." in n}
    assert head and all(p.dtype == torch.float32 for p in head.values())  # exact optimizer updates
    assert any(p.dtype == torch.bfloat16 for n, p in trained.items() if "layers.0.mlp" in n)
    # the test split was scored outside autocast: the body's bfloat16 output reached the float32 head
    assert "test_accuracy" in outcome.version.metrics

    _, model, _ = load_version(outcome_workspace(config_path), outcome.version.name)
    reloaded = {n: p for n, p in model.named_parameters() if ".score." in n and "modules_to_save" in n}
    assert reloaded and all(p.dtype == torch.float32 for p in reloaded.values())
    results = run_eval(config, outcome.version.name, outcome_workspace(config_path)).systems
    assert results[1].scores["accuracy"].value == pytest.approx(outcome.version.metrics["test_accuracy"])


def test_auto_dtype_puts_a_lora_classifier_body_in_bfloat16_where_it_is_native_and_reward_in_float32(
    tmp_path, tiny_model_dir, monkeypatch
):
    import tunesmith.config

    config_path = write_project(tmp_path, tiny_model_dir, topic_rows(), "objective: classify", "method: lora")
    for native, objective, method, dtype in [
        (True, "classify", "lora", "bfloat16"),
        (True, "tag", "lora", "bfloat16"),
        (True, "classify", "full", "float32"),
        (True, "reward", "lora", "float32"),  # TRL's reward trainer would train its new head in bfloat16
        (False, "classify", "lora", "float32"),
    ]:
        monkeypatch.setattr(tunesmith.config, "native_bf16", lambda native=native: native)
        config = load_config(config_path, [f"train.objective={objective}", f"train.method={method}"])
        assert config.weights_dtype == dtype, (native, objective, method)


def test_auto_attention_is_eager_for_a_classifier_with_short_rows_on_a_cpu_and_the_run_uses_it(
    tmp_path, tiny_model_dir, monkeypatch
):
    import torch

    from tunesmith.models import load_configured
    from tunesmith.train.run import EAGER_ATTENTION_MAX_TOKENS, decide_attention

    config_path = write_project(tmp_path, tiny_model_dir, topic_rows(), "objective: classify", "method: lora")
    config = load_config(config_path)
    assert config.model.attn_implementation == "auto"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    chosen, reason = decide_attention(config, 40)
    assert chosen == "eager" and "rows of at most 40 tokens" in reason
    assert decide_attention(config, EAGER_ATTENTION_MAX_TOKENS + 1) == (None, None)  # sdpa beats it there
    assert decide_attention(load_config(config_path, ["model.attn_implementation=sdpa"]), 40) == (None, None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert decide_attention(config, 40) == (None, None)
    monkeypatch.undo()

    result = runner.invoke(app, ["train", str(config_path)])
    assert result.exit_code == 0, result.output
    assert "attention: eager" in " ".join(result.output.split())
    # a name the user sets is used by every load (training, eval, serving)
    named = load_config(config_path, ["model.attn_implementation=sdpa"])
    assert load_configured(named.model, "float32").model.config._attn_implementation == "sdpa"
