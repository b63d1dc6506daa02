"""`train --dry-run`'s time estimate: it times what the run will train, and it predicts the run."""

import re
import statistics
import time

import pytest
from transformers import TrainerCallback

from conftest import write_jsonl
from tunesmith.config import load_config
from tunesmith.pipeline import write_demo_project
from tunesmith.train.callbacks import extra_callbacks
from tunesmith.train.run import dry_run, train


def write_rows(path, rows):
    write_jsonl(path, rows)
    return path


def estimated(config, steps: int = 3):
    """The dry run's timing, with every `auto` setting decided as the run decides it."""
    _, _, fit, timing = dry_run(config, steps=steps)
    assert timing is not None, fit.rows()
    return timing


def trainable_share(method: str) -> float:
    return float(re.search(r"\(([\d.]+)% of [\d,]+ parameters trainable\)", method).group(1))


@pytest.mark.parametrize(
    ("settings", "timed"),
    [
        (["train.method=freeze", "train.freeze.train_top=1", "train.forgetting.method=none"], "freeze ("),
        (["train.method=head"], "head ("),
        (["train.method=full", "train.forgetting.method=none"], "full ("),
        (["train.method=full"], "full with general-data replay ("),  # the recipe's guard
        (["train.forgetting.method=ewc", "train.forgetting.fisher_samples=4"], "lora with an EWC penalty ("),
        (["train.method=full", "train.forgetting.method=l2sp"], "full with an L2-SP penalty ("),
        (["train.forgetting.method=replay"], "lora with general-data replay ("),
    ],
)
def test_the_dry_run_times_the_method_and_guard_the_run_trains_with(
    tmp_path, tiny_model_dir, settings, timed
):
    config = load_config(write_demo_project(tmp_path), [f"model.id={tiny_model_dir}", *settings])
    estimate = estimated(config)
    assert estimate.method.startswith(timed), estimate.method
    share = trainable_share(estimate.method)  # counted on the calibration's own trainer
    if "train.method=full" in settings:
        assert share == 100.0
    else:
        assert 0 < share < 100.0
    assert estimate.seconds_per_step > 0 and estimate.tokens_per_second > 0
    assert f"Timed {timed}" in estimate.describe()


def test_the_dry_run_of_rl_times_whole_sampling_cycles(tmp_path, tiny_model_dir):
    """RL samples answers once per `num_iterations` steps, so the measured steps hold whole cycles:
    a step with generation and the steps that reuse its answers, in their share."""
    from conftest import demo_rows

    data = write_rows(tmp_path / "qa.jsonl", demo_rows()[:40])
    settings = [
        f"model.id={tiny_model_dir}",
        f"data.path={data}",
        "data.format=auto",
        "train.objective=rl",
        'train.rl.rewards=[{"checker": "contains"}]',
        "train.batch_size=4",
        "train.rl.num_generations=2",
        "train.rl.max_completion_length=8",
        "train.rl.num_iterations=3",
    ]
    config = load_config(write_demo_project(tmp_path), settings)
    estimate = estimated(config, steps=4)
    assert (estimate.calibration_steps - 1) % 3 == 0 and estimate.calibration_steps == 4
    assert estimate.method.startswith("lora GRPO (1 rewards)")
    assert estimate.rows_per_step == pytest.approx(4 / 2 / 3)  # prompts per step: 4 answers, 2 each, 3 uses
    five = estimated(config, steps=5)
    assert five.calibration_steps == 7  # a warm-up step, then two whole cycles


class StepTimes(TrainerCallback):
    """Each optimizer step's wall time, as the run takes it."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self._started = 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        self._started = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.seconds.append(time.perf_counter() - self._started)


def predicted_and_real(tmp_path, settings: list[str]) -> tuple[float, float]:
    """The dry run's seconds per step, and a real 5-step run's (its steps after the first, as the
    dry run measures them)."""
    config_path = write_demo_project(tmp_path)
    settings = [*settings, "data.split.val=0"]  # no evaluation inside the five steps
    predicted = estimated(load_config(config_path, settings), steps=4).seconds_per_step
    timer = StepTimes()
    with extra_callbacks(timer):
        train(load_config(config_path, [*settings, "train.max_steps=5", "train.save_strategy=no"]))
    assert len(timer.seconds) == 5
    print(f"dry run {predicted:.3f} s per step; real run {statistics.mean(timer.seconds[1:]):.3f}")
    return predicted, statistics.mean(timer.seconds[1:])


@pytest.mark.slow
def test_the_dry_run_predicts_a_real_lora_sft_run_on_the_bundled_model(tmp_path):
    predicted, real = predicted_and_real(tmp_path, ["train.batch_size=4", "train.forgetting.probe=false"])
    assert 1 / 1.5 <= predicted / real <= 1.5, (predicted, real)


@pytest.mark.slow
def test_the_dry_run_predicts_a_real_classifier_run(tmp_path):
    words = ["refund", "invoice", "charge", "screen", "battery", "keyboard", "price", "cable"]
    rows = [
        {"text": f"my {words[i % 8]} and the {words[(i * 3) % 8]} again, case {i}", "label": "ab"[i % 8 < 4]}
        for i in range(200)
    ]
    data = write_rows(tmp_path / "labels.jsonl", rows)
    classify = ["model.id=minilm-l6", f"data.path={data}", "data.format=auto", "train.objective=classify"]
    predicted, real = predicted_and_real(tmp_path, [*classify, "train.batch_size=16", "train.max_length=64"])
    assert 1 / 1.5 <= predicted / real <= 1.5, (predicted, real)
