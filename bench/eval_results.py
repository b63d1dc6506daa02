"""Benchmark: what `tunesmith eval` says about real fine-tunes, on public data, on this machine's CPU.

Three questions, each answered through `tunesmith.evaluate.runner.run_eval` with the bootstrap
intervals and paired tests a user gets:

- `bitext`: is a LoRA fine-tune of SmolLM2-135M-Instruct on bitext_customer_support better than the
  base model, and than the base model prompted with 3 train examples? (ROUGE, BLEU, chrF,
  perplexity, with a significance verdict per metric)
- `sst2`: sentiment classification before (the majority class) and after a LoRA classify run;
- `forgetting`: the forgetting probe (mmlu_redux multiple choice when present, plus perplexity on
  general conversations) of an aggressive full fine-tune against a LoRA run on the same data.

    .venv/bin/python bench/eval_results.py [--only bitext,sst2,forgetting] [--scale 1.0]

`--scale` multiplies every subset size. Prints a table per question; writes each report's HTML.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from tables import results_table

sys.path.insert(0, str(Path(__file__).parent))
from train_results import RUNS, SHARED  # the same bitext subset and settings as the training results

BITEXT = RUNS["sft"]["data"]
MMLU = SHARED / "mmlu_redux" / "mmlu_redux_all.jsonl"
BITEXT_SETTINGS = [
    *(s for s in RUNS["sft"]["settings"] if not s.startswith("eval.metrics")),
    "train.save_strategy=no",
    "eval.metrics=[rouge_1, rouge_2, rouge_l, bleu, chrf, perplexity]",
]
console = Console(width=170)


def project(name: str, rows: int, data: str, *settings: str) -> Any:
    from tunesmith.config import load_config

    folder = Path(tempfile.mkdtemp(prefix=f"tunesmith-eval-{name}-"))
    return load_config(
        None,
        [
            f"project={name}",
            f"workspace={folder / 'ws'}",
            f"data.path={SHARED / data}",
            f"data.sample={rows}",
            *settings,
        ],
    )


def scores_table(report: dict[str, Any], title: str) -> Table:
    table = Table(title=title)
    table.add_column("metric")
    for system in report["systems"]:
        table.add_column(system["label"], justify="right")
    for metric in report["metrics"]:
        cells = []
        for system in report["systems"]:
            s = system["scores"].get(metric["name"])
            cells.append(f"{s['value']:.4g} [{s['low']:.3g}, {s['high']:.3g}]" if s else "-")
        table.add_row(metric["name"], *cells)
    return table


def bitext(scale: float) -> None:
    from tunesmith.evaluate.runner import run_eval
    from tunesmith.train.run import train

    config = project("bitext", int(320 * scale), BITEXT, *BITEXT_SETTINGS)
    started = time.perf_counter()
    outcome = train(config)
    result = run_eval(config, outcome.version.name, compare=["base"], few_shot=3)
    report = result.report
    console.print(scores_table(report, f"bitext: base, base 3-shot and LoRA on {report['items']} test rows"))
    for line in report["verdicts"]:
        console.print("  " + line, highlight=False)
    console.print(
        f"  {(time.perf_counter() - started) / 60:.1f} min; report {result.directory / 'report.html'}"
    )


def sst2(scale: float) -> None:
    from tunesmith.evaluate.runner import run_eval
    from tunesmith.train.run import train

    recipe = RUNS["sst2"]  # the training results' run, evaluated per label
    rows = int(recipe["rows"] * scale)
    config = project(
        "sst2", rows, recipe["data"], *recipe["settings"], "train.save_strategy=no", "eval.slices=[label]"
    )
    started = time.perf_counter()
    outcome = train(config)
    result = run_eval(config, outcome.version.name)
    report = result.report
    console.print(
        scores_table(report, f"sst2: majority class vs LoRA classifier on {report['items']} test rows")
    )
    for line in report["verdicts"]:
        console.print("  " + line, highlight=False)
    console.print(
        f"  {(time.perf_counter() - started) / 60:.1f} min; report {result.directory / 'report.html'}"
    )


def forgetting(scale: float) -> None:
    from tunesmith.evaluate.runner import run_eval
    from tunesmith.train.run import train

    probe = ["eval.probe.limit=" + str(int(200 * scale))]
    if MMLU.exists():
        probe.append(f"eval.probe.questions={MMLU}")
    rows = int(320 * scale)
    runs = {
        "LoRA (r 16, lr 2e-4, 1 epoch)": ["train.method=lora"],
        "full (lr 1e-4, 2 epochs)": ["train.method=full", "train.lr=1e-4", "train.epochs=2"],
    }
    probed = "mmlu_redux" if MMLU.exists() else "bundled"
    columns = ["run", "probe accuracy base → tuned", "change [95% CI]", "general perplexity base → tuned"]
    table = results_table(
        f"forgetting: {rows} bitext rows; probe {probed}", [*columns, "change [95% CI]", "minutes"]
    )
    for name, settings in runs.items():
        started = time.perf_counter()
        config = project(
            "forget", rows, BITEXT, *BITEXT_SETTINGS, *settings, *probe, "eval.metrics=[rouge_l]"
        )
        outcome = train(config)
        report = run_eval(config, outcome.version.name, compare=["base"], probe=True).report
        cells = []
        for measure in ("probe_accuracy", "general_perplexity"):
            systems = report["probe"]["systems"]
            change = report["probe"]["change"][measure]
            before, after = systems["base"][measure]["value"], systems[outcome.version.name][measure]["value"]
            cells.append(f"{before:.3f} → {after:.3f}")
            d = change["delta"]
            cells.append(f"{d['value']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}] p={change['p_value']:.3f}")
        table.add_row(name, *cells, f"{(time.perf_counter() - started) / 60:.1f}")
    console.print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="bitext,sst2,forgetting")
    parser.add_argument("--scale", type=float, default=1.0)
    args = parser.parse_args()
    if not SHARED.exists():
        sys.exit(f"{SHARED} is absent: the benchmark evaluates fine-tunes on the real datasets there")
    for name in args.only.split(","):
        {"bitext": bitext, "sst2": sst2, "forgetting": forgetting}[name](args.scale)


if __name__ == "__main__":
    main()
