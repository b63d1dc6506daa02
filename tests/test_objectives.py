"""Every training objective walks the whole lifecycle through the CLI on the tiny model: train,
train --dry-run, data estimate, registry reproduce, eval --cv. A new objective cannot skip a step."""

from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import demo_rows, write_jsonl
from test_preference import preference_data
from test_train_classify import tag_rows, topic_rows
from test_train_multitask import write_project as write_multitask_project
from tunesmith.cli import app
from tunesmith.config import load_config
from tunesmith.registry.loading import load_version
from tunesmith.train.objectives import OBJECTIVES
from tunesmith.workspace import open_workspace

runner = CliRunner()
HEAD_CLASSES = {
    "causal-lm": "ForCausalLM",
    "sequence-classification": "ForSequenceClassification",
    "token-classification": "ForTokenClassification",
}

COMMON = ["train.max_steps=3", "train.batch_size=4", "train.save_strategy=no", "eval.bootstrap_resamples=100"]


def write_rows(path: Path, rows: list[dict]) -> Path:
    write_jsonl(path, rows)
    return path


def objective_project(tmp_path: Path, model_dir: Path, objective: str) -> tuple[Path, list[str]]:
    """A config file and the overrides that train `objective` on data of its own row kind."""
    if objective == "multitask":
        return write_multitask_project(tmp_path, model_dir), ["train.schedule=constant", *COMMON]
    settings = [f"train.objective={objective}", "data.format=auto", *COMMON]
    if objective in ("sft", "rl", "distill"):
        data = write_rows(tmp_path / "qa.jsonl", demo_rows()[:60])
    elif objective == "pretrain":
        data = write_rows(
            tmp_path / "text.jsonl", [{"text": r["messages"][-1]["content"]} for r in demo_rows()]
        )
    elif objective == "classify":
        data = write_rows(tmp_path / "topics.jsonl", topic_rows(80))
    elif objective == "tag":
        data = write_rows(tmp_path / "tags.jsonl", tag_rows(60))
    else:  # reward, dpo
        data = preference_data(tmp_path, "pairs")
    if objective == "rl":
        settings += [
            'train.rl.rewards=[{"checker": "contains"}]',
            "train.rl.num_generations=2",
            "train.rl.max_completion_length=6",
        ]
    if objective == "distill":  # the model as its own teacher: the same vocabulary, so on-policy
        settings += [f"train.distill.teacher.model={model_dir}", "train.distill.max_completion_length=6"]
    if objective in ("dpo", "rl", "distill"):
        settings += ["eval.max_new_tokens=4"]
    config = tmp_path / "tunesmith.yaml"
    config.write_text(
        f"project: walk\nmodel:\n  id: {model_dir}\ndata:\n  path: {data}\n  clean:\n    near_dedup: false\n"
        "train:\n  method: lora\n  lr: 1e-3\n  forgetting: {probe: false}\n",
        encoding="utf-8",
    )
    return config, settings


def invoke(*args: str):
    result = runner.invoke(app, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result


@pytest.mark.parametrize("objective", sorted(OBJECTIVES))
def test_every_objective_trains_dry_runs_reproduces_and_cross_validates(tmp_path, tiny_model_dir, objective):
    config, settings = objective_project(tmp_path, tiny_model_dir, objective)
    sets = [arg for s in settings for arg in ("--set", s)]

    trained = invoke("train", str(config), *sets)
    assert trained.exit_code == 0, trained.output
    assert "Registered walk-v1" in trained.output or "Registered mixed-v1" in trained.output
    version = "mixed-v1" if objective == "multitask" else "walk-v1"
    # the registered version loads back with the head its objective trains (as eval and serving load it)
    _, model, _ = load_version(open_workspace(load_config(config)), version)
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    assert type(inner).__name__.endswith(HEAD_CLASSES[OBJECTIVES[objective].head]), type(inner)

    dry = invoke("train", str(config), *sets, "--dry-run")
    assert dry.exit_code == 0, dry.output
    said = " ".join(dry.output.split())  # the terminal wraps long lines
    assert f"Dry run: lora {objective}" in said and "min per epoch" in said and "It fits" in said, said

    estimate = invoke("data", "estimate", str(config), *sets, "--steps", "3")
    assert estimate.exit_code == 0, estimate.output
    assert "min per epoch" in estimate.output and f"lora {objective}" in " ".join(estimate.output.split())

    again = invoke("registry", "reproduce", version, "--config", str(config))
    assert again.exit_code == 0, again.output
    assert f"matches {version} within 2%" in again.output and "train_loss" in again.output

    cv = invoke("eval", "--cv", "2", "--config", str(config), *sets)
    if not OBJECTIVES[objective].cross_validates:
        assert cv.exit_code == 2 and "--cv works on one dataset" in cv.output, cv.output
        return
    assert cv.exit_code == 0, cv.output
    assert "2-fold cross-validation" in cv.output and "mean ± std" in cv.output


def test_the_table_refuses_duplicate_unknown_and_incomplete_entries():
    from dataclasses import replace

    from tunesmith.config import GENERATIVE_OBJECTIVES
    from tunesmith.train.objectives import register_objective

    sft = OBJECTIVES["sft"]
    with pytest.raises(ValueError, match="'sft' is registered twice"):
        register_objective(sft)
    with pytest.raises(ValueError, match=r"'orpo' is not one train\.objective accepts"):
        register_objective(replace(sft, name="orpo"))
    del OBJECTIVES["sft"]
    try:
        with pytest.raises(ValueError, match="'sft' has no trainer"):
            register_objective(replace(sft, trainer=None))
    finally:
        OBJECTIVES["sft"] = sft
    # the config's list of causal-LM objectives is checked against the table's heads
    assert {n for n, o in OBJECTIVES.items() if o.generative} == set(GENERATIVE_OBJECTIVES)


AUTO_DATA = {  # objective train.objective auto must pick -> the shape of rows the test writes
    "sft": "sft",
    "pretrain": "pretrain",
    "classify": "classify",
    "tag": "tag",
    "dpo": "pairs",
    "reward": "ranking",
    "dpo with KTO": "thumbs",
}


@pytest.mark.parametrize("expected", sorted(AUTO_DATA))
def test_auto_picks_the_objective_from_the_rows_and_says_why(tmp_path, tiny_model_dir, expected):
    shape = AUTO_DATA[expected]
    config, settings = objective_project(tmp_path, tiny_model_dir, shape if shape in OBJECTIVES else "dpo")
    if shape in ("ranking", "thumbs"):
        settings.append(f"data.path={preference_data(tmp_path, shape)}")
    settings = [s for s in settings if not s.startswith("train.objective=")]  # the default: auto
    sets = [arg for s in settings for arg in ("--set", s)]
    picked = expected.split()[0]

    checked = invoke("validate", str(config), *sets)
    said = " ".join(checked.output.split())
    assert checked.exit_code == 0, said
    assert f"train.objective auto chose {picked}" in said and "the rows are" in said, said
    assert f"lora {picked}" in said
    if expected == "dpo with KTO":
        assert "train.preference.loss_type: kto" in said and "learned by KTO" in said

    dry = invoke("train", str(config), *sets, "--dry-run")
    said = " ".join(dry.output.split())
    assert dry.exit_code == 0 and f"Dry run: lora {picked}" in said, said
    assert f"train.objective auto chose {picked}" in said


def test_every_row_format_has_one_objective_that_auto_picks():
    from tunesmith.data.formats import FORMATS
    from tunesmith.train.objectives import choose_objective

    for name, spec in FORMATS.items():
        choice = choose_objective(name, spec.kind)
        assert OBJECTIVES[choice.objective].rows == spec.kind or spec.kind == "unpaired", name
        assert spec.description in choice.reason
    # a dataset version another stage made (a format no row detection names) goes by its kind
    assert choose_objective("improve", "sft").objective == "sft"
    assert choose_objective("mixture", "classification").objective == "classify"


def test_an_auto_run_records_the_objective_it_trained_and_refuses_settings_that_do_not_fit(
    tmp_path, tiny_model_dir
):
    config, settings = objective_project(tmp_path, tiny_model_dir, "classify")
    settings = [s for s in settings if not s.startswith("train.objective=")]
    sets = [arg for s in settings for arg in ("--set", s)]
    trained = invoke("train", str(config), *sets)
    assert trained.exit_code == 0, trained.output
    assert "majority class vs this version" in " ".join(trained.output.split())
    workspace = open_workspace(load_config(config))
    from tunesmith.registry import get_version

    recorded = get_version(workspace, "walk-v1").config["train"]["objective"]
    assert recorded == "classify"  # so eval, serving and `registry reproduce` load it as a classifier

    packed = invoke("train", str(config), *sets, "--set", "train.packing=true")
    said = " ".join(packed.output.split())
    assert packed.exit_code == 1, said  # as `train` refuses any setting that does not fit
    assert "train.objective auto chose classify" in said and "packing joins rows of text" in said


def test_auto_with_tasks_is_multitask_and_an_explicit_objective_wins(tmp_path, tiny_model_dir):
    config = write_multitask_project(tmp_path, tiny_model_dir)
    assert load_config(config, ["train.objective=auto"]).train.objective == "multitask"
    data = write_rows(tmp_path / "topics.jsonl", topic_rows(40))
    mismatch = invoke(
        "validate",
        str(config),
        "--set",
        f"data.path={data}",
        "--set",
        "train.tasks=[]",
        "--set",
        "train.objective=sft",
    )
    said = " ".join(mismatch.output.split())
    assert mismatch.exit_code == 2 and "needs sft rows" in said and "set train.objective: classify" in said
