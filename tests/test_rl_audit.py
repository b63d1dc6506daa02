"""GRPO's loss variants reach TRL validated, and the RL audit's verdicts (the run itself: test_preference)."""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest

from tunesmith.config import ConfigError, load_config
from tunesmith.pipeline import write_demo_project
from tunesmith.train.rl import rl_config
from tunesmith.train.rl_audit import RewardAudit, Sample, audit_checker, run_audit


def history(rewards: list[float], **series: list[float]) -> list[dict]:
    return [
        {"step": i + 1, "reward": r, **{k.replace("__", "/"): v[i] for k, v in series.items()}}
        for i, r in enumerate(rewards)
    ]


def samples(n: int, right: float, top_wrong: bool) -> list[Sample]:
    """n answers to "#### 7"; a share `right` is right; with `top_wrong` the wrong ones score highest."""
    rng = random.Random(0)
    out = []
    for i in range(n):
        good = rng.random() < right
        total = (0.2 if good else 0.9) if top_wrong else (0.9 if good else 0.2)
        answer = "so it is 7" if good else "a long confident answer of 8"
        out.append(Sample(i, "how many?", answer, "#### 7", {"reward": total}, total))
    return out


def test_the_verdict_names_the_rule_that_gave_it():
    rising = [0.1 + 0.02 * i + random.Random(i).uniform(-0.01, 0.01) for i in range(40)]
    learning = run_audit(history(rising), samples(200, 0.5, top_wrong=False), "numeric_match")
    assert learning["verdict"] == "learning" and "rose by +0.599" in learning["rule"]
    assert learning["reward"]["first"] < learning["reward"]["last"]

    hacking = run_audit(history(rising), samples(200, 0.3, top_wrong=True), "numeric_match")
    assert hacking["verdict"] == "hacking", hacking["rule"]
    assert "100% of the top-rewarded answers are wrong (numeric_match)" in hacking["rule"]
    example = hacking["hacking_examples"][0]
    assert example["answer"] == "a long confident answer of 8" and example["reference"] == "#### 7"

    falling = [2.0 - 0.05 * i for i in range(40)]
    collapsed = run_audit(history(rising, entropy=falling), [], None)
    assert collapsed["verdict"] == "collapsed" and "entropy fell from" in collapsed["rule"]
    shrinking = [60.0 - 1.45 * i for i in range(40)]
    short = run_audit(history(rising, completions__mean_length=shrinking), [], None)
    assert short["verdict"] == "collapsed" and "answers shrank" in short["rule"]

    flat = run_audit(history([0.5 + (0.01 if i % 2 else -0.01) for i in range(40)]), [], None)
    assert flat["verdict"] == "flat" and flat["top_rewarded_wrong_share"] is None


def test_the_audit_keeps_each_scored_answer_with_its_weighted_reward_and_step():
    def right(prompts, completions, reference, **_):
        return [float("7" in c) for c in completions]

    def short(prompts, completions, **_):
        return [1.0 / len(c) for c in completions]

    audit = RewardAudit(["right", "short"], [1.0, 0.5])
    wrapped = audit.wrap([right, short])
    state = SimpleNamespace(global_step=3)
    prompts = [[{"role": "user", "content": "3 + 4?"}]] * 2
    for fn in wrapped:
        fn(prompts=prompts, completions=["7", "eight"], reference=["#### 7"] * 2, trainer_state=state)
    assert [(s.step, s.prompt, s.completion, s.total) for s in audit.samples] == [
        (3, "3 + 4?", "7", 1.5),
        (3, "3 + 4?", "eight", 0.1),
    ]
    assert [fn.__name__ for fn in wrapped] == ["right", "short"]
    assert audit_checker("auto", ["answer_format", "numeric_match"]) == "numeric_match"
    assert audit_checker("auto", [None, "answer_format"]) is None
    assert audit_checker("off", ["contains"]) is None


def test_grpo_variants_are_validated_and_reach_trl(tmp_path):
    path = write_demo_project(tmp_path)
    base = ["train.objective=rl", 'train.rl.rewards=[{"checker": "contains"}]', "train.batch_size=4"]
    gspo = load_config(path, [*base, "train.rl.importance_sampling=sequence", "train.rl.loss_type=dr_grpo"])
    assert (gspo.train.rl.epsilon, gspo.train.rl.epsilon_high) == (3e-4, 4e-4)  # GSPO's clip
    args = rl_config(gspo.train, tmp_path / "out", False, [1.0])
    assert (args.importance_sampling_level, args.loss_type, args.epsilon, args.epsilon_high) == (
        "sequence",
        "dr_grpo",
        3e-4,
        4e-4,
    )
    dapo = load_config(path, [*base, "train.rl.epsilon_high=0.28", "train.rl.scale_rewards=none"])
    args = rl_config(dapo.train, tmp_path / "out", False, [1.0])
    assert (args.loss_type, args.epsilon, args.epsilon_high, args.scale_rewards) == (
        "dapo",
        0.2,
        0.28,
        "none",
    )
    for bad, message in [
        (["train.rl.epsilon_high=0.1"], "epsilon_high 0.1 is below epsilon 0.2"),
        (["train.rl.algorithm=rloo", "train.rl.loss_type=grpo"], "loss_type: GRPO settings"),
        (["train.rl.loss_type=ppo"], "train.rl.loss_type"),
    ]:
        with pytest.raises(ConfigError, match=message):
            load_config(path, [*base, *bad])
