"""Preference learning on a tiny random Llama: reward models, DPO and its relatives, online RL."""

import json
import random
from pathlib import Path

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from conftest import demo_rows, logged_metrics, write_jsonl
from tunesmith.answers import final_number, numeric_match
from tunesmith.cli import app
from tunesmith.config import ConfigError, load_config
from tunesmith.data import load_split
from tunesmith.data.formats import transcript_messages
from tunesmith.pipeline import write_demo_project
from tunesmith.registry.reward import RewardModel
from tunesmith.store import DatasetVersion, RunMetric, session
from tunesmith.train.preference import preference_rows, unpaired_rows
from tunesmith.train.run import train
from tunesmith.workspace import open_workspace

UNHELPFUL = ["I do not know.", "Please ask someone else.", "That is not something I can help with."]


def write_rows(path: Path, rows: list[dict]) -> Path:
    write_jsonl(path, rows)
    return path


def preference_data(tmp_path: Path, shape: str) -> Path:
    """The demo questions with their right answer preferred to an unhelpful one, in one of three shapes."""
    rng = random.Random(0)
    rows = []
    for i, row in enumerate(demo_rows()):
        question, good = row["messages"][1]["content"], row["messages"][-1]["content"]
        bad = rng.choice(UNHELPFUL)
        if shape == "pairs":
            rows.append({"prompt": question, "chosen": good, "rejected": bad, "group": row["group"]})
        elif shape == "ranking":
            rows.append(
                {"prompt": question, "responses": [good, f"Perhaps. {good}", bad], "group": row["group"]}
            )
        else:  # thumbs up/down, one answer per row
            rows.append(
                {"prompt": question, "completion": good if i % 2 else bad, "label": "up" if i % 2 else "down"}
            )
    return write_rows(tmp_path / f"{shape}.jsonl", rows)


def project(tmp_path: Path, model_dir: Path, data: Path, *overrides: str):
    config_path = write_demo_project(tmp_path)
    return load_config(
        config_path,
        [
            f"model.id={model_dir}",
            f"data.path={data}",
            "data.format=auto",
            "train.epochs=1",
            "train.save_strategy=no",
            *overrides,
        ],
    )


def test_hh_transcripts_become_turns_and_pairs_become_conversations(tiny_byte_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_byte_model_dir)
    prompt = "\n\nHuman: Hi there\n\nAssistant: Hello! How can I help?\n\nHuman: Tell me a joke\n\nAssistant:"
    assert transcript_messages(prompt) == [
        {"role": "user", "content": "Hi there"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "Tell me a joke"},
    ]
    assert transcript_messages("Just a question") == [{"role": "user", "content": "Just a question"}]
    (row,) = preference_rows(
        [{"prompt": prompt, "chosen": " A pun.", "rejected": " No.", "margin": 2.0}], tokenizer, margin=True
    )
    assert row["chosen"] == [{"role": "assistant", "content": "A pun."}] and row["margin"] == 2.0
    # Whole conversations with no separate prompt: the shared turns become the prompt.
    shared = [{"role": "user", "content": "Q"}]
    (row,) = preference_rows(
        [
            {
                "prompt": "",
                "chosen": [*shared, {"role": "assistant", "content": "good"}],
                "rejected": [*shared, {"role": "assistant", "content": "bad"}],
            }
        ],
        tokenizer,
    )
    assert row["prompt"] == shared and row["rejected"] == [{"role": "assistant", "content": "bad"}]
    # KTO takes a pair as one thumbs-up and one thumbs-down answer.
    assert [
        r["label"] for r in unpaired_rows([{"prompt": "Q", "chosen": "a", "rejected": "b"}], tokenizer)
    ] == [
        True,
        False,
    ]


@pytest.mark.parametrize("shape", ["pairs", "ranking"])
def test_a_reward_model_trains_on_pairs_or_rankings_reports_held_out_accuracy_and_scores(
    tmp_path, tiny_model_dir, shape
):
    config = project(
        tmp_path,
        tiny_model_dir,
        preference_data(tmp_path, shape),
        "train.objective=reward",
        "train.lr=5e-3",
        "train.max_steps=20",
    )
    outcome = train(config)
    metrics = outcome.version.metrics
    report = json.loads((outcome.run_dir / "reward_report.json").read_text())
    assert report["test_pairs"] == metrics["test_pairs"] > 0
    low, high = metrics["test_pairwise_accuracy_ci"]
    assert low <= metrics["test_pairwise_accuracy"] <= high
    assert metrics["test_pairwise_accuracy"] > 0.8  # right answers against canned refusals: easy to learn
    workspace = open_workspace(config)
    with session(workspace.engine) as s:
        dataset = s.get(DatasetVersion, outcome.dataset.id)
        assert dataset.meta["kind"] == "preference"
        if shape == "ranking":  # three answers give three pairs, with the score gap as margin, one split each
            assert {r["margin"] for r in load_split(dataset, "train")} == {1.0, 2.0}
    scorer = RewardModel(workspace, outcome.version.name)
    good, bad = scorer.score(
        ["When was Fernwick Labs founded?"] * 2, ["Fernwick Labs was founded in 2017.", "I do not know."]
    )
    assert good > bad


@pytest.mark.parametrize(
    ("loss", "shape"),
    [("sigmoid", "pairs"), ("ipo", "pairs"), ("kto", "thumbs"), ("orpo", "pairs"), ("simpo", "pairs")],
)
def test_preference_optimisation_trains_an_lm_with_each_trainer(tmp_path, tiny_model_dir, loss, shape):
    config = project(
        tmp_path,
        tiny_model_dir,
        preference_data(tmp_path, shape),
        "train.objective=dpo",
        f"train.preference.loss_type={loss}",
        "train.max_steps=4",
        "train.logging_steps=1",
    )
    outcome = train(config)
    assert (outcome.run_dir / "adapter" / "adapter_model.safetensors").exists()
    metrics = outcome.version.metrics
    assert metrics["global_step"] == 4 and metrics["train_loss"] > 0
    assert "forgetting" in metrics  # the general-data probe runs on preference runs too
    with session(open_workspace(config).engine) as s:
        logged = s.scalars(select(RunMetric.name).where(RunMetric.run_id == outcome.run_id)).all()
    assert any(name.startswith("rewards/") or name == "kl" for name in logged), logged


def test_thumbs_rows_need_kto_and_bad_losses_are_named(tmp_path, tiny_model_dir):
    config = project(tmp_path, tiny_model_dir, preference_data(tmp_path, "thumbs"), "train.objective=dpo")
    with pytest.raises(ValueError, match=r"only KTO learns from; set train\.preference\.loss_type: kto"):
        train(config)
    with pytest.raises(ConfigError, match=r"train\.preference\.loss_type.*'dop' is unknown"):
        project(tmp_path, tiny_model_dir, Path("x"), "train.preference.loss_type=dop")
    with pytest.raises(ConfigError, match=r"objective rl needs train\.rl\.rewards"):
        project(tmp_path, tiny_model_dir, Path("x"), "train.objective=rl")


def test_numeric_checker_reads_gsm8k_answers():
    assert final_number("She sold 48 + 24 = 72 clips.\n#### 72") == 72.0
    assert final_number("The answer is $1,250.") == 1250.0
    assert numeric_match("So 3 + 4 = 7 apples", "#### 7") == 1.0
    assert numeric_match("I think 8", "#### 7") == 0.0 and numeric_match("no idea", "#### 7") == 0.0


def rl_project(tmp_path, model_dir, data, rewards: str, *settings: str):
    """An RL project on `data` scored by `rewards` (JSON): groups of two, four rows a step, no val split."""
    rl = ["train.objective=rl", f"train.rl.rewards={rewards}", "train.rl.num_generations=2"]
    return project(tmp_path, model_dir, data, *rl, "train.batch_size=4", "data.split.val=0", *settings)


def test_rl_samples_scores_and_logs_reward_kl_and_clip_per_step(tmp_path, tiny_model_dir):
    """GRPO with a checker and a user's function file, on the demo's chat rows (answers are references)."""
    (tmp_path / "brevity.py").write_text(
        "def brevity(prompts, completions, reference, **kw):\n"
        "    return [1.0 / (1 + len(str(c))) for c in completions]\n"
    )
    rewards = '[{"checker": "contains"}, {"function": "brevity.py:brevity", "weight": 0.5}]'
    data = write_rows(tmp_path / "qa.jsonl", demo_rows()[:40])
    config = rl_project(
        tmp_path,
        tiny_model_dir,
        data,
        rewards,
        "train.max_steps=3",
        "train.rl.max_completion_length=8",
        "train.rl.num_iterations=2",
        "train.rl.loss_type=dr_grpo",
        "train.rl.importance_sampling=sequence",  # GSPO
        "train.rl.mask_truncated_completions=true",
    )
    outcome = train(config)
    logged = logged_metrics(outcome.run_dir)
    steps = [r for r in logged if "kl" in r]
    assert len(steps) == 3  # one point per step; with two passes per sample batch, rewards every other step
    assert [r["step"] for r in steps if "reward" in r] == [1, 3]
    keys = set().union(*steps)
    assert {"reward", "kl", "rewards/contains/mean", "rewards/brevity/mean", "clip_ratio/region_mean"} <= keys
    assert {"reward_gain", "kl_last", "clip_fraction_last"} <= set(outcome.version.metrics)
    assert (outcome.run_dir / "rewards.png").stat().st_size > 0

    # Every RL run ends with an audit (train/rl_audit.py); promote shows its verdict.
    audit = json.loads((outcome.run_dir / "rl_audit.json").read_text())
    assert audit["checker"] == "contains" and audit["steps"] == 2  # the steps that sampled and scored
    assert audit["verdict"] in ("learning", "flat", "collapsed", "hacking") and audit["rule"]
    assert {"reward", "reward/contains", "reward/brevity"} <= set(audit)
    assert outcome.version.metrics["rl_verdict"] == audit["verdict"]
    promoted = CliRunner().invoke(
        app,
        [
            "registry",
            "promote",
            outcome.version.name,
            "--to",
            "staging",
            "--config",
            str(tmp_path / "tunesmith.yaml"),
        ],
    )
    assert promoted.exit_code == 0, promoted.output
    assert f"RL audit: {audit['verdict']} ({audit['rule']})" in " ".join(promoted.output.split())
    card = CliRunner().invoke(
        app, ["registry", "card", outcome.version.name, "--config", str(tmp_path / "tunesmith.yaml")]
    )
    assert f"- RL audit: {audit['verdict']} ({audit['rule']})" in " ".join(card.output.split())


def test_rl_refuses_groups_that_do_not_fit_the_batch(tmp_path, tiny_model_dir):
    from tunesmith.train.sft import TrainConfigError

    data = write_rows(tmp_path / "qa.jsonl", demo_rows()[:20])
    config = rl_project(tmp_path, tiny_model_dir, data, '[{"checker": "contains"}]', "train.batch_size=3")
    with pytest.raises(TrainConfigError, match="num_generations=2 must divide"):
        train(config)


def test_eval_scores_a_dpo_version_against_its_start_by_reward_model_task_metrics_and_probe(
    tmp_path, tiny_model_dir
):
    """Win rate by the reward model, the task metrics on the preferred answers, the forgetting probe."""
    from tunesmith.evaluate.runner import run_eval

    pairs = preference_data(tmp_path, "pairs")
    reward = train(project(tmp_path, tiny_model_dir, pairs, "train.objective=reward", "train.max_steps=10"))
    config = project(
        tmp_path, tiny_model_dir, pairs, "train.objective=dpo", "train.max_steps=4", "eval.max_new_tokens=6"
    )
    aligned = train(config).version
    outcome = run_eval(config, aligned.name, compare=["base"], probe=True, reward_model=reward.version.name)
    report = outcome.report
    assert [s["label"] for s in report["systems"]] == ["base", aligned.name]
    assert "reward" in report["systems"][-1]["scores"] and "key_fact" in report["systems"][-1]["scores"]
    (pair,) = report["reward_model"]["pairwise"]
    assert pair["other"] == "base" and pair["win"] + pair["tie"] + pair["loss"] == report["items"]
    assert pair["win_rate"]["low"] <= pair["win_rate"]["value"] <= pair["win_rate"]["high"]
    assert report["probe"] is not None
    assert "Reward model" in (outcome.directory / "report.html").read_text()
    with pytest.raises(Exception, match="is a reward model"):
        run_eval(config, reward.version.name)

    # The same reward model scores served answers online (monitor.reward_model).
    from tunesmith.monitor.scorers import ScoringContext, score_row

    ctx = ScoringContext(frozenset(), reward_model=RewardModel(open_workspace(config), reward.version.name))
    row = {
        "id": "req-1",
        "version_id": aligned.id,
        "prompt": [{"role": "user", "content": "When was Fernwick Labs founded?"}],
        "output": ["Fernwick Labs was founded in 2017."],
    }
    (score,) = score_row(row, ["reward"], ctx)
    assert score.name == "reward" and isinstance(score.value, float)


@pytest.mark.parametrize(("method", "separate_reference"), [("lora", False), ("full", True)])
def test_lora_dpo_uses_the_adapterless_network_as_reference_and_full_keeps_a_copy(
    tmp_path, tiny_model_dir, method, separate_reference
):
    from tunesmith.models import load_causal_lm
    from tunesmith.train.preference import dpo_trainer

    config = project(tmp_path, tiny_model_dir, preference_data(tmp_path, "pairs"), f"train.method={method}")
    base = load_causal_lm(str(tiny_model_dir))
    rows = preference_rows([{"prompt": "Q?", "chosen": "good", "rejected": "bad"}] * 4, base.tokenizer)
    trainer = dpo_trainer(config.train, base, rows, [], tmp_path, [])
    assert (trainer.ref_model is not None) is separate_reference


def test_rloo_runs_with_a_reward_model_as_its_reward(tmp_path, tiny_model_dir):
    pairs = preference_data(tmp_path, "pairs")
    reward = train(project(tmp_path, tiny_model_dir, pairs, "train.objective=reward", "train.max_steps=2"))
    data = write_rows(tmp_path / "qa.jsonl", demo_rows()[:24])
    config = rl_project(
        tmp_path,
        tiny_model_dir,
        data,
        f'[{{"model": "{reward.version.name}"}}]',
        "train.rl.algorithm=rloo",
        "train.max_steps=2",
        "train.rl.max_completion_length=6",
    )
    outcome = train(config)
    assert outcome.version.config["train"]["rl"]["algorithm"] == "rloo"
    logged = logged_metrics(outcome.run_dir)
    assert any(f"rewards/{reward.version.name}/mean" in r for r in logged)


def test_a_preferred_answer_that_calls_a_tool_is_evaluated_with_the_tools_result_in_its_prompt():
    """The reference of a DPO test pair is the chosen answer's last message; the turns before it (a
    call and the tool's result) are context the model is given, as for a chat row, never dropped."""
    from tunesmith.evaluate.runner import eval_items

    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
    }
    chosen = [
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temp_c": 4}'},
        {"role": "assistant", "content": "It is 4 degrees in Oslo."},
    ]
    record = {"prompt": "Weather in Oslo?", "chosen": chosen, "rejected": "It is sunny.", "tools": ["..."]}
    (item,) = eval_items([record], "preference")
    assert item["messages"][0] == {"role": "user", "content": "Weather in Oslo?"}
    assert item["messages"][1:] == chosen  # the model answers after the tool's result
    assert item["tools"] == ["..."]
