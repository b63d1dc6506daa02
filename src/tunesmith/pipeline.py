"""`quickstart`: the stages composed end to end on the demo project (data, before, fine-tune, after).

The stage services themselves live in their stages (`data.prepare_data`, `train.run.train`,
`evaluate.run_eval`, ...); this module only composes them.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from tunesmith.chat import asked
from tunesmith.config import CONFIG_FILENAME, load_config
from tunesmith.data import load_split, prepare_data
from tunesmith.evaluate import EvalResult, comparison_table, evaluate_model, plot_comparison, write_answers
from tunesmith.progress import console
from tunesmith.registry.versions import add_metrics
from tunesmith.store import ModelVersion
from tunesmith.train.run import TrainOutcome, train
from tunesmith.workspace import Workspace, open_workspace

DEMO_DATA = "fernwick.jsonl"


@dataclass
class QuickstartResult:
    """Everything quickstart made, for printing and for tests."""

    directory: Path
    config_path: Path
    items: list[dict[str, Any]]
    before: EvalResult
    after: EvalResult
    outcome: TrainOutcome
    report_dir: Path
    seconds: float


def write_demo_project(directory: Path) -> Path:
    """Copy the demo config and data into `directory` (kept if already there); return the config path."""
    directory.mkdir(parents=True, exist_ok=True)
    demo = resources.files("tunesmith").joinpath("demo")
    config_path = directory / CONFIG_FILENAME
    if not config_path.exists():
        config_path.write_text(demo.joinpath("quickstart.yaml").read_text(encoding="utf-8"), encoding="utf-8")
    data_path = directory / "data" / DEMO_DATA
    if not data_path.exists():
        data_path.parent.mkdir(exist_ok=True)
        with demo.joinpath(DEMO_DATA).open("rb") as src, data_path.open("wb") as dst:
            shutil.copyfileobj(src, dst)
    return config_path


def quickstart(directory: Path, overrides: list[str] | None = None) -> QuickstartResult:
    """The main job: demo data → before → LoRA fine-tune → after → compare → register.

    The demo facts are about a fictional company, so the base model cannot know them; the test
    split holds paraphrased questions that training never saw.
    """
    from tunesmith.models import load_configured

    started = time.perf_counter()
    config_path = write_demo_project(directory)
    config = load_config(config_path, overrides)
    workspace = open_workspace(config)

    console.rule("[bold]1/5 Data")
    dataset = prepare_data(config, workspace)
    console.print(
        f"Dataset version [bold]{dataset.id}[/bold]: {dataset.counts['train']} train, "
        f"{dataset.counts['val']} validation, {dataset.counts['test']} test rows "
        f"({dataset.counts['rejected']} rejected)"
    )
    items = load_split(dataset, config.eval.split)

    console.rule("[bold]2/5 Base model")
    base = load_configured(config.model, config.weights_dtype)
    console.print(f"{config.model.id}: {base.resolved.describe()}")
    before = evaluate_model(base.model, base.tokenizer, items, config.eval, label="before")

    console.rule("[bold]3/5 Fine-tune")
    outcome = train(config, workspace, kind="quickstart", base=base)

    console.rule("[bold]4/5 After")
    after = evaluate_model(outcome.model, outcome.tokenizer, items, config.eval, label="after")

    console.rule("[bold]5/5 Compare and register")
    report_dir = outcome.run_dir / "eval"
    report_dir.mkdir()
    write_answers(report_dir / "answers.jsonl", items, [before, after])
    plot_comparison(
        [before, after],
        report_dir / "before_after.png",
        f"{len(items)} held-out questions ({config.eval.split} split)",
    )
    summary = {"split": config.eval.split, "items": len(items), "before": before.means, "after": after.means}
    (report_dir / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    record_eval_metrics(workspace, outcome.version, before.means, after.means)
    return QuickstartResult(
        directory=directory,
        config_path=config_path,
        items=items,
        before=before,
        after=after,
        outcome=outcome,
        report_dir=report_dir,
        seconds=time.perf_counter() - started,
    )


def record_eval_metrics(
    workspace: Workspace, version: ModelVersion, before: dict[str, float], after: dict[str, float]
) -> None:
    """Append the held-out scores to the version's metrics (`registry.all_metrics` reads them)."""
    scores = {f"test_{k}": v for k, v in after.items()}
    scores.update({f"base_test_{k}": v for k, v in before.items()})
    add_metrics(workspace, version, scores, source="quickstart")


def print_quickstart(result: QuickstartResult) -> None:
    """The closing screen: the before/after table, where everything is, what to run next."""
    console.print(
        comparison_table(
            [result.before, result.after],
            f"Held-out paraphrased questions ({len(result.before.answers)} items)",
        )
    )
    shown = 0
    for i, (b, a) in enumerate(zip(result.before.answers, result.after.answers, strict=True)):
        if shown == 3:
            break
        if result.after.scores[i].get("key_fact", 0) > result.before.scores[i].get("key_fact", 0):
            question = asked(result.items[i]["messages"])
            console.print(f"[bold]Q:[/bold] {question}")
            console.print(f"  [red]before:[/red] {b[:120]}\n  [green]after:[/green] {a[:120]}")
            shown += 1
    version = result.outcome.version
    console.print(
        f"\nRegistered [bold]{version.name}[/bold] ({version.id}) from run {result.outcome.run_id}, "
        f"dataset {result.outcome.dataset.id}, in {result.seconds / 60:.1f} min."
    )
    console.print(f"  config     {result.config_path}")
    console.print(f"  run        {result.outcome.run_dir}  (adapter, config.yaml, metrics.json, loss.png)")
    console.print(f"  eval       {result.report_dir}  (answers.jsonl, before_after.png, summary.json)")
    console.print("\nNext:")
    console.print(f"  cd {result.directory}")
    console.print(f"  tunesmith registry show {version.name}")
    console.print(f"  tunesmith eval {version.name}")
    console.print("  tunesmith train --set train.lr=5e-4   # train again with other settings")
    console.print(
        f"  tunesmith serve --model {version.family}@candidate   # an OpenAI-compatible API on :8000"
    )
