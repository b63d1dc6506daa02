"""Benchmark: the data stage on 200k rows against a plain pandas `drop_duplicates`.

The rows are real (bitext customer support, alpaca-libre, banking77 from ../shared/datasets),
repeated with perturbations (case, spacing, an extra word, a changed number) until there are
`--rows` of them, written as one JSONL file. Each stage runs in a fresh process so its peak memory
is its own. Prints a table; compare the ratios, not the absolute numbers.

    .venv/bin/python bench/data_prep.py [--rows 200000] [--shared ../shared]
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import subprocess
import sys
import tempfile
from pathlib import Path

from rich.console import Console
from tables import results_table

STAGES = {
    "pandas read_json + drop_duplicates": """
import pandas as pd
df = pd.read_json(PATH, lines=True)
out = df.drop_duplicates(subset=["prompt", "completion"])
ROWS = len(out)
""",
    "tunesmith read+validate+clean+exact dedup": """
from tunesmith.config import DataConfig
from tunesmith.data import check_rows
prepared = check_rows(DataConfig.model_validate({"clean": {"near_dedup": False}}), PATH)
ROWS = len(prepared.items)
""",
    "tunesmith ... + near dedup (MinHash LSH)": """
from tunesmith.config import DataConfig
from tunesmith.data import check_rows
prepared = check_rows(DataConfig.model_validate({}), PATH)
ROWS = len(prepared.items)
""",
    "tunesmith whole stage (+ split, leakage)": """
from tunesmith.config import DataConfig
from tunesmith.data import check_rows, split_rows
config = DataConfig.model_validate({})
prepared = split_rows(check_rows(config, PATH), config)
ROWS = len(prepared.items)
""",
}

RUNNER = """
import json, resource, sys, time
PATH = sys.argv[1]
t0 = time.perf_counter()
{code}
seconds = time.perf_counter() - t0
print(json.dumps({{"seconds": seconds, "rows_out": ROWS,
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""


def real_pairs(shared: Path) -> list[tuple[str, str]]:
    datasets = shared / "datasets"
    pairs = []
    with (
        datasets / "bitext_customer_support" / "Bitext_Sample_Customer_Support_Training_Dataset.csv"
    ).open() as f:
        pairs += [(r["instruction"], r["response"]) for r in csv.DictReader(f)]
    with (datasets / "alpaca_libre" / "alpaca_libre_tasks_v1.jsonl").open() as f:
        for line in f:
            row = json.loads(line)
            if row.get("output"):
                pairs.append((f"{row['instruction']}\n\n{row.get('input') or ''}".strip(), row["output"]))
    with (datasets / "banking77" / "train.csv").open() as f:
        pairs += [(r["text"], r["category"].replace("_", " ")) for r in csv.DictReader(f)]
    return pairs


def perturb(text: str, rng: random.Random) -> str:
    choice = rng.randrange(5)
    if choice == 0:
        return text.upper() if rng.random() < 0.2 else text.lower()
    if choice == 1:
        return text.replace(" ", "  ", 2)
    if choice == 2:
        return f"{text} {rng.choice(['please', 'thanks', 'asap', 'now'])}"
    if choice == 3:
        return f"{text} (ref {rng.randrange(10**6)})"
    return text


def write_rows(path: Path, n: int, pairs: list[tuple[str, str]]) -> None:
    rng = random.Random(0)
    with path.open("w", encoding="utf-8") as handle:
        for i in range(n):
            prompt, completion = pairs[i % len(pairs)]
            if i >= len(pairs):
                prompt = perturb(prompt, rng)
            handle.write(json.dumps({"prompt": prompt, "completion": completion}) + "\n")


def run_stage(code: str, path: Path) -> dict:
    script = RUNNER.format(code=code.strip())
    out = subprocess.run(
        [sys.executable, "-c", script, str(path)], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[2] / "shared")
    args = parser.parse_args()
    if not (args.shared / "datasets").exists():
        sys.exit(
            f"{args.shared / 'datasets'} is absent: the benchmark builds its rows from the shared datasets"
        )
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "rows.jsonl"
        write_rows(path, args.rows, real_pairs(args.shared))
        results = {name: run_stage(code, path) for name, code in STAGES.items()}
    base = results["pandas read_json + drop_duplicates"]
    table = results_table(
        f"Data stage on {args.rows:,} rows (one JSONL file, fresh process per stage)",
        ["stage", "seconds", "rows/s", "rows kept", "peak MB", "time vs pandas"],
    )
    for name, r in results.items():
        table.add_row(
            name,
            f"{r['seconds']:.1f}",
            f"{args.rows / r['seconds']:,.0f}",
            f"{r['rows_out']:,}",
            f"{r['peak_mb']:.0f}",
            f"{r['seconds'] / base['seconds']:.1f}x",
        )
    console = Console(width=120)
    console.print(table)
    whole = results["tunesmith whole stage (+ split, leakage)"]["seconds"]
    verdict = "meets" if whole < 120 else "MISSES"
    console.print(f"Whole stage: {whole:.0f} s, {verdict} the 2-minute target for {args.rows:,} rows.")


if __name__ == "__main__":
    main()
