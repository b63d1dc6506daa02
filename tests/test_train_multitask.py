"""`multitask`: several instruction datasets mixed by weight, with templates and a progressive schedule."""

import json
from importlib import resources
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tunesmith.cli import app
from tunesmith.config import ConfigError, TaskConfig, load_config
from tunesmith.data import load_split
from tunesmith.data.mixture import _apportion, mixture_stream, task_weights
from tunesmith.train.run import train

runner = CliRunner()


def write_project(tmp_path: Path, model_dir: Path, train_extra: str = "") -> Path:
    demo = resources.files("tunesmith").joinpath("demo")
    support, general = tmp_path / "support.jsonl", tmp_path / "general.jsonl"
    support.write_text(demo.joinpath("fernwick.jsonl").read_text(encoding="utf-8"), encoding="utf-8")
    general.write_text(demo.joinpath("general.jsonl").read_text(encoding="utf-8"), encoding="utf-8")
    config = tmp_path / "tunesmith.yaml"
    config.write_text(
        f"""project: mixed
model:
  id: {model_dir}
train:
  objective: multitask
  epochs: 2
  batch_size: 8
  save_strategy: 'no'
  forgetting: {{probe: false}}
  schedule: linear
  tasks:
    - name: support
      data: {{path: support.jsonl}}
      weight: 0.8
      start_weight: 0.1
      template: "Fernwick customer question: {{prompt}}"
    - name: general
      data: {{path: general.jsonl, split: {{val: 0, test: 0}}}}
      weight: 0.2
      start_weight: 0.9
      system_prompt: You are a helpful assistant.
{train_extra}""",
        encoding="utf-8",
    )
    return config


def test_shares_follow_the_schedule_and_counts_add_up():
    tasks = [
        TaskConfig(name="new", dataset="ds-a", weight=3, start_weight=0),
        TaskConfig(name="old", dataset="ds-b", weight=1, start_weight=1),
    ]
    assert task_weights(tasks, "linear", 0.0) == [0.0, 1.0]
    assert task_weights(tasks, "linear", 1.0) == [0.75, 0.25]
    assert task_weights(tasks, "constant", 0.0) == [0.75, 0.25]
    assert _apportion(10, [1 / 3, 1 / 3, 1 / 3]) == [4, 3, 3]
    rows = {
        "new": [{"i": i, "task": "new"} for i in range(5)],
        "old": [{"i": i, "task": "old"} for i in range(50)],
    }
    stream = mixture_stream(rows, tasks, "linear", 200, seed=0)
    assert len(stream) == 200
    first, last = stream[:20], stream[-20:]
    assert all(r["task"] == "old" for r in first)  # the run starts on the old task alone
    assert sum(r["task"] == "new" for r in last) == 15  # and ends at the final 3:1 shares
    # the small task is repeated, each of its rows as often as the others (to within one pass)
    seen = [sum(1 for r in stream if r["task"] == "new" and r["i"] == i) for i in range(5)]
    assert max(seen) - min(seen) <= 1


def test_multitask_run_mixes_tasks_in_schedule_order_with_their_templates(tmp_path, tiny_model_dir):
    config_path = write_project(tmp_path, tiny_model_dir)
    result = runner.invoke(app, ["train", str(config_path)])
    assert result.exit_code == 0, result.output
    config = load_config(config_path)
    from tunesmith.registry import get_version
    from tunesmith.store import DatasetVersion, session
    from tunesmith.workspace import open_workspace

    workspace = open_workspace(config)
    version = get_version(workspace, "mixed-v1")
    with session(workspace.engine) as s:
        mixture = s.get(DatasetVersion, version.dataset_version_id)
    assert mixture is not None and mixture.meta["mixture"]["schedule"] == "linear"
    recipe = mixture.meta["mixture"]
    assert [t["name"] for t in recipe["tasks"]] == ["support", "general"]
    assert all(t["dataset"].startswith("ds-") for t in recipe["tasks"])
    # two epochs of (160 support + 48 general train rows), as one ordered stream
    assert recipe["rows"] == 2 * (160 + 48) == mixture.counts["train"]
    stream = load_split(mixture, "train")
    head, tail = stream[: len(stream) // 10], stream[-len(stream) // 10 :]
    assert sum(r["task"] == "general" for r in head) > 0.8 * len(head)
    assert sum(r["task"] == "support" for r in tail) > 0.7 * len(tail)
    support = next(r for r in stream if r["task"] == "support")
    general = next(r for r in stream if r["task"] == "general")
    user = next(m for m in support["messages"] if m["role"] == "user")
    assert user["content"].startswith("Fernwick customer question: ")
    assert general["messages"][0] == {"role": "system", "content": "You are a helpful assistant."}
    # the trainer takes the stream once, in order: 416 rows / batch 8 = 52 steps
    assert version.metrics["global_step"] == 52
    assert {r["task"] for r in load_split(mixture, "test")} == {"support"}

    # the same recipe gives the same mixture; another schedule another one
    again = train(config).dataset
    assert again.id == mixture.id
    constant = train(load_config(config_path, ["train.schedule=constant", "train.max_steps=2"])).dataset
    assert constant.id != mixture.id


def test_multitask_refusals(tmp_path, tiny_model_dir):
    config_path = write_project(tmp_path, tiny_model_dir)
    with pytest.raises(ConfigError, match="set exactly one of data"):
        load_config(config_path, ["train.tasks=[{name: a, weight: 1}]"])
    with pytest.raises(ConfigError, match=r"template must contain \{prompt\}"):
        load_config(config_path, ["train.tasks=[{name: a, dataset: ds-x, template: 'no slot'}]"])
    with pytest.raises(ConfigError, match="schedule linear needs a start_weight"):
        load_config(config_path, ["train.tasks=[{name: a, dataset: ds-x}]"])
    with pytest.raises(ConfigError, match=r"train\.tasks is for objective multitask"):
        load_config(config_path, ["train.objective=sft"])
    labels = tmp_path / "labels.jsonl"
    labels.write_text("".join(json.dumps({"text": f"row {i}", "label": "a"}) + "\n" for i in range(20)))
    refused = runner.invoke(
        app,
        ["train", str(config_path), "--set", "train.tasks[1].data.path=labels.jsonl"],
    )
    assert refused.exit_code == 2
    assert "train.tasks, task 'general': dataset ds-" in refused.output
    assert "holds classification rows" in refused.output
