"""The task suite: the default recipe on real tasks, against prompting the base model.

For every task it finds in ../shared/datasets (sst2, banking77, conll2003, dialogsum,
bitext_customer_support, gsm8k), a project sets nothing but `data.path` (the task's train file, read
as it is: the columns, the format, the objective and the recipe are the tool's choices) and a time
budget (`train.time_budget_minutes`: the run times a few steps and trains what fits). Then `eval`
scores the version's test split (a seeded sample of `--items`) with the measures the tool picks,
beside the base model zero-shot and the base model prompted with 3 train examples (for a
classifier: each label scored as the answer), and prints per task: each system's lead metric with
its 95% bootstrap interval, the paired test of the tuned version against 3-shot, the forgetting
probe's change (general answer loss; a new head leaves the language model as it was), and the wall
time.

    .venv/bin/python bench/suite.py [--only sst2,gsm8k] [--budget 20] [--items 200] [--json FILE]
    .venv/bin/python bench/suite.py --markdown FILE   # a --json file's rows as a Markdown table

Under a budget too tight for the bundled decoder to see a classifier's rows once, the recipe trains
the bundled MiniLM encoder instead (`train.encoder: auto`); its prompting baselines still ask the
decoder. A tagger has no prompting baseline: its base row is "all O" (what a new head guesses). The eval's
generation length per task (`eval.max_new_tokens`) is a measurement setting, sized to the task's
answers, not a training one.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from tables import results_table

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"
console = Console(width=190)


@dataclass(frozen=True)
class Task:
    path: str  # under ../shared/datasets
    what: str
    max_new_tokens: int = 64  # eval generation length: the task's answers, not a training setting


TASKS: dict[str, Task] = {
    "sst2": Task("sst2/train.tsv", "sentiment, 2 labels"),
    "banking77": Task("banking77/train.csv", "77 banking intents"),
    "conll2003": Task("conll2003/train.txt", "named entities (BIO tags)"),
    "dialogsum": Task("dialogsum/dialogsum.dev.jsonl", "dialogue summaries", max_new_tokens=96),
    "bitext_customer_support": Task(
        "bitext_customer_support/Bitext_Sample_Customer_Support_Training_Dataset.csv",
        "customer support answers",
        max_new_tokens=160,
    ),
    "gsm8k": Task("gsm8k/train.jsonl", "grade-school maths, exact final answer", max_new_tokens=256),
}
SHOTS = 3


def run_task(
    name: str, task: Task, budget: float, items: int, folder: Path, extra: Sequence[str] = ()
) -> dict[str, Any]:
    """Train with the default recipe in `budget` minutes, then score base 0-shot, 3-shot and tuned
    (`extra`: more settings, e.g. `data.sample=3000` for a quick run at reduced size)."""
    from tunesmith.config import load_config
    from tunesmith.evaluate.runner import run_eval
    from tunesmith.train.forgetting import forgetting_rise
    from tunesmith.train.run import train

    config = load_config(
        None,
        [
            f"project={name.replace('_', '-')}",
            f"workspace={folder / name}",
            f"data.path={SHARED / task.path}",
            f"train.time_budget_minutes={budget}",
            f"eval.max_items={items}",
            f"eval.few_shot={SHOTS}",
            f"eval.max_new_tokens={task.max_new_tokens}",
            "eval.compare=[base]",
            *extra,
        ],
    )
    started = time.perf_counter()
    outcome = train(config)
    trained = time.perf_counter() - started
    report = run_eval(config, outcome.version.name).report
    metric = report["metrics"][0]["name"]
    tuned = report["systems"][-1]["label"]
    scores = {s["label"]: s["scores"].get(metric) for s in report["systems"]}
    versus = next(
        (
            c
            for c in report["comparisons"]
            if c["metric"] == metric and {c["a"], c["b"]} == {tuned, f"base {SHOTS}-shot"}
        ),
        None,
    )
    train_config = outcome.version.config["train"]
    rise = forgetting_rise(outcome.version.metrics)
    return {
        "task": name,
        "what": task.what,
        "objective": f"{train_config['objective']} ({outcome.version.base_model}, {train_config['method']})",
        "rows": dict(outcome.dataset.counts),
        "steps": outcome.version.metrics.get("global_step") or train_config.get("max_steps"),
        "budget_choice": train_config["chosen_by_recipe"].get("max_steps"),
        "metric": metric,
        "items": report["items"],
        "scores": scores,
        "tuned": tuned,
        "versus_3shot": versus,
        "forgetting": rise,
        "train_minutes": trained / 60,
        "minutes": (time.perf_counter() - started) / 60,
        "notes": report.get("notes", []),
    }


def _cell(score: dict[str, Any] | None) -> str:
    if not score:
        return "-"
    return f"{score['value']:.3f} [{score['low']:.3f}, {score['high']:.3f}]"


def _versus(row: dict[str, Any]) -> str:
    test = row["versus_3shot"]
    if test is None:
        return "- (no prompting baseline)"
    sign = 1 if test["b"] == row["tuned"] else -1  # the delta is b - a
    delta = test["delta"]
    low, high = sorted((sign * delta["low"], sign * delta["high"]))
    return f"{sign * delta['value']:+.3f} [{low:+.3f}, {high:+.3f}] p={test['p_value']:.3f}"


def print_table(rows: list[dict[str, Any]], budget: float) -> None:
    table = results_table(
        f"The default recipe against prompting: {budget:g} training minutes a task, the bundled models",
        [
            "task",
            "objective",
            "train / test rows",
            "metric",
            "base 0-shot",
            f"base {SHOTS}-shot",
            "tuned",
            f"tuned − {SHOTS}-shot",
            "forgetting",
            "minutes",
        ],
    )
    for row in rows:
        zero = row["scores"].get("base 0-shot") or row["scores"].get("base")
        baseline = (
            "majority" if "majority" in row["scores"] else ("all O" if "all O" in row["scores"] else None)
        )
        table.add_row(
            row["task"],
            row["objective"],
            f"{row['rows'].get('train', 0):,} / {row['items']}",
            row["metric"],
            _cell(zero) + (f"\n{baseline} {_cell(row['scores'][baseline])}" if baseline else ""),
            _cell(row["scores"].get(f"base {SHOTS}-shot")),
            _cell(row["scores"][row["tuned"]]),
            _versus(row),
            "new head" if row["forgetting"] is None else f"{row['forgetting']:+.1%}",
            f"{row['train_minutes']:.1f} / {row['minutes']:.1f}",
        )
    console.print(table)
    for row in rows:
        if row["budget_choice"]:
            console.print(
                f"  {row['task']}: max_steps {row['steps']}: {row['budget_choice']}", highlight=False
            )


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The table as Markdown, for the README (`--markdown`, or from a `--json` file)."""
    lines = [
        f"| task | objective | train rows / test items | metric | base 0-shot | base {SHOTS}-shot | tuned "
        f"| tuned − {SHOTS}-shot | forgetting | minutes (train / all) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        zero = row["scores"].get("base 0-shot") or row["scores"].get("base")
        floor = next((name for name in ("majority", "all O") if name in row["scores"]), None)
        zero_cell = _cell(zero) if zero else ""
        if floor:
            zero_cell = f"{zero_cell}; {floor} {_cell(row['scores'][floor])}".lstrip("; ")
        cells = [
            row["task"],
            row["objective"],
            f"{row['rows'].get('train', 0):,} / {row['items']}",
            row["metric"],
            zero_cell,
            _cell(row["scores"].get(f"base {SHOTS}-shot")),
            _cell(row["scores"][row["tuned"]]),
            _versus(row),
            "new head" if row["forgetting"] is None else f"{row['forgetting']:+.1%}",
            f"{row['train_minutes']:.1f} / {row['minutes']:.1f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(TASKS), help="tasks, comma-separated")
    parser.add_argument("--budget", type=float, default=20.0, help="training minutes per task")
    parser.add_argument("--items", type=int, default=200, help="test items scored per task")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--markdown", type=Path, help="print the rows of this --json file as Markdown")
    args = parser.parse_args()
    if args.markdown:
        print(markdown_table(json.loads(args.markdown.read_text(encoding="utf-8"))))
        return
    if not SHARED.exists():
        sys.exit(f"{SHARED} is absent: the suite runs on the real datasets there")
    names = [n for n in args.only.split(",") if n]
    unknown = [n for n in names if n not in TASKS]
    if unknown:
        sys.exit(f"unknown task(s) {', '.join(unknown)}; known: {', '.join(TASKS)}")
    folder = Path(tempfile.mkdtemp(prefix="tunesmith-suite-"))
    rows = []
    for name in names:
        task = TASKS[name]
        if not (SHARED / task.path).exists():
            console.print(f"{name}: {SHARED / task.path} is absent, skipped")
            continue
        rows.append(run_task(name, task, args.budget, args.items, folder))
        if args.json:
            args.json.write_text(json.dumps(rows, indent=2, default=str), encoding="utf-8")
    print_table(rows, args.budget)


if __name__ == "__main__":
    main()
