"""Benchmark: does learning the reasoning trace help? (`data.reasoning: train` against `drop`)

gsm8k's worked solutions (../shared/datasets/gsm8k) become reasoning traces: each row's assistant
message carries the solution's steps as `reasoning_content` (the calculator notes `<<48/2=24>>`
removed) and "The answer is N." as its answer. The bundled SmolLM2-135M-Instruct is trained twice
with the default recipe and the same time budget: once learning the trace and the answer
(`data.reasoning: train`), once the answer alone (`drop`, the traces removed when the data is
prepared). Both versions and the base model answer the same held-out questions; the final number's
match (`numeric_match`) is scored on the answer after any trace, as eval scores a reasoning model.

    .venv/bin/python bench/reasoning_results.py [--minutes 5] [--rows 2000] [--items 100] [--json FILE]

Prints each system's numeric match with its 95% interval, the paired tests between them, the steps
each run trained, and the minutes it all took.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console

sys.path.insert(0, str(Path(__file__).parent))
from tables import results_table

console = Console(width=150)
GSM8K = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "gsm8k" / "train.jsonl"
_NOTE = re.compile(r"<<[^>]*>>")


def traced_rows(source: Path, rows: int) -> list[dict[str, Any]]:
    """gsm8k rows as chat rows whose worked solution is the reasoning trace."""
    out = []
    with source.open(encoding="utf-8") as lines:
        for line in lines:
            row = json.loads(line)
            work, _, final = row["answer"].rpartition("####")
            steps = _NOTE.sub("", work).strip()
            out.append(
                {
                    "messages": [
                        {"role": "user", "content": row["question"]},
                        {
                            "role": "assistant",
                            "reasoning_content": steps,
                            "content": f"The answer is {final.strip()}.",
                        },
                    ]
                }
            )
            if len(out) == rows:
                break
    return out


def run(folder: Path, minutes: float = 5.0, rows: int = 2000, items: int = 100) -> dict[str, Any]:
    """Train with the traces and without, and score both and the base model on the same questions."""
    from tunesmith.config import load_config
    from tunesmith.evaluate.runner import run_eval
    from tunesmith.train.run import train

    if not GSM8K.exists():
        raise SystemExit(f"{GSM8K} is absent: the benchmark reads gsm8k from ../shared/datasets")
    started = time.perf_counter()
    data = folder / "gsm8k-traces.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in traced_rows(GSM8K, rows)), encoding="utf-8")
    common = [
        "project=gsm8k-traces",
        f"workspace={folder / 'ws'}",
        f"data.path={data}",
        f"train.time_budget_minutes={minutes}",
        "eval.metrics=[numeric_match]",
        "eval.max_new_tokens=256",
        f"eval.max_items={items}",
    ]
    versions, runs = {}, {}
    for policy in ("train", "drop"):
        outcome = train(load_config(None, [*common, f"data.reasoning={policy}"]))
        versions[policy] = outcome.version
        runs[policy] = {key: outcome.version.metrics.get(key) for key in ("global_step", "train_seconds")}
    config = load_config(None, [*common, "data.reasoning=train"])
    report = run_eval(config, versions["train"].name, compare=["base", versions["drop"].name]).report
    return {
        "versions": {policy: version.name for policy, version in versions.items()},
        "scores": {s["label"]: s["scores"]["numeric_match"] for s in report["systems"]},
        "comparisons": report["comparisons"],
        "runs": runs,
        "items": report["items"],
        "budget_minutes": minutes,
        "minutes": (time.perf_counter() - started) / 60,
    }


def print_table(result: dict[str, Any]) -> None:
    table = results_table(
        f"gsm8k held-out questions ({result['items']} items; {result['budget_minutes']:g} min of training "
        f"each; {result['minutes']:.1f} min in all)",
        ["system", "numeric match", "steps"],
    )
    names = {"base": ("base (SmolLM2-135M-Instruct)", None)}
    names[result["versions"]["train"]] = ("data.reasoning: train (trace and answer)", "train")
    names[result["versions"]["drop"]] = ("data.reasoning: drop (answer only)", "drop")
    for label, (text, policy) in names.items():
        score = result["scores"].get(label)
        cell = f"{score['value']:.3f} [{score['low']:.3f}, {score['high']:.3f}]" if score else "-"
        steps = result["runs"][policy]["global_step"] if policy else None
        table.add_row(f"{text} ({label})" if policy else text, cell, f"{steps:.0f}" if steps else "-")
    console.print(table)
    for comparison in result["comparisons"]:
        delta = comparison["delta"]
        console.print(
            f"{comparison['b']} - {comparison['a']}: {delta['value']:+.3f} [{delta['low']:+.3f}, "
            f"{delta['high']:+.3f}] p={comparison['p_value']:.3f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=5.0, help="the training budget of each run")
    parser.add_argument("--rows", type=int, default=2000, help="gsm8k train rows to prepare")
    parser.add_argument("--items", type=int, default=100, help="held-out questions to score")
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args()
    result = run(Path(tempfile.mkdtemp(prefix="tunesmith-reasoning-")), args.minutes, args.rows, args.items)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2), encoding="utf-8")
    print_table(result)


if __name__ == "__main__":
    main()
