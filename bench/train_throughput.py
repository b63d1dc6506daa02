"""Benchmark: LoRA SFT throughput of tunesmith's defaults against a plain TRL + PEFT script.

Same model (the bundled SmolLM2-135M-Instruct), same rows (the first `--rows` of
bitext_customer_support from ../shared/datasets), same hyperparameters (LoRA r=16, alpha=32,
all-linear, lr 2e-4, batch 8, max length 512, one epoch). Each side runs in a fresh process, so
its peak memory is its own; both are then scored on the same held-out rows with the same answer
loss, so speed is never bought with quality. Prints a table.

    .venv/bin/python bench/train_throughput.py [--rows 256] [--shared ../shared]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from rich.console import Console
from tables import results_table

COMMON = """
import csv, json, resource, sys, time
from pathlib import Path
SHARED, ROWS, HELD_OUT = Path(sys.argv[1]), int(sys.argv[2]), 32
path = SHARED / "datasets" / "bitext_customer_support" / "Bitext_Sample_Customer_Support_Training_Dataset.csv"
with path.open(newline="") as f:
    rows = [{"messages": [{"role": "user", "content": r["instruction"]},
                          {"role": "assistant", "content": r["response"]}]} for r in csv.DictReader(f)]
train_rows, held_out = rows[:ROWS], rows[-HELD_OUT:]
"""

PLAIN = (
    COMMON
    + """
import tempfile, torch
from datasets import Dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import SFTConfig, SFTTrainer
from tunesmith.models import resolve
from tunesmith.train.forgetting import answer_loss
model_dir = str(resolve("smollm2-135m-instruct").path)
tok = AutoTokenizer.from_pretrained(model_dir)
model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
args = SFTConfig(output_dir=tempfile.mkdtemp(), num_train_epochs=1, per_device_train_batch_size=8,
                 learning_rate=2e-4, logging_steps=8, save_strategy="no", report_to=[], max_length=512,
                 use_cpu=True)
lora = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM")
trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(train_rows),
                     processing_class=tok, peft_config=lora)
tokens = sum(len(x["input_ids"]) for x in trainer.train_dataset)
t0 = time.perf_counter()
result = trainer.train()
seconds = time.perf_counter() - t0
print(json.dumps({"seconds": seconds, "tokens": tokens, "train_loss": result.training_loss,
                  "held_out_loss": answer_loss(trainer.model, tok, held_out),
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""
)

TUNESMITH = (
    COMMON
    + """
import tempfile
from tunesmith.config import load_config
from tunesmith.train.run import train
from tunesmith.train.forgetting import answer_loss
folder = Path(tempfile.mkdtemp())
(folder / "rows.jsonl").write_text("".join(json.dumps(r) + "\\n" for r in train_rows), encoding="utf-8")
config = load_config(None, [
    f"workspace={folder / 'ws'}", f"data.path={folder / 'rows.jsonl'}", "data.split.val=0",
    "data.split.test=0",
    "data.clean.dedup=false", "data.clean.near_dedup=false", "data.clean.pii=false", "train.epochs=1",
    "train.lr=2e-4", "train.batch_size=8", "train.max_length=512", "train.save_strategy=no",
    "train.forgetting.probe=false",
    *sys.argv[3:],
])
outcome = train(config)
m = outcome.version.metrics
tokens = m["tokens_per_second"] * m["train_seconds"]
print(json.dumps({"seconds": m["train_seconds"], "tokens": tokens, "train_loss": m["train_loss"],
                  "held_out_loss": answer_loss(outcome.model, outcome.tokenizer, held_out),
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""
)


def run(script: str, shared: Path, rows: int, extra: list[str] | None = None) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", script, str(shared), str(rows), *(extra or [])],
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        sys.exit(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[2] / "shared")
    parser.add_argument(
        "--also",
        action="append",
        default=[],
        metavar="SETTINGS",
        help="another tunesmith row with these comma-separated --set overrides, e.g. model.dtype=float32",
    )
    parser.add_argument("--no-plain", action="store_true", help="skip the plain TRL row (the reference)")
    args = parser.parse_args()
    if not (args.shared / "datasets" / "bitext_customer_support").exists():
        sys.exit(f"{args.shared / 'datasets'} has no bitext_customer_support: the benchmark trains on it")
    results = (
        {} if args.no_plain else {"plain TRL + PEFT (library defaults)": run(PLAIN, args.shared, args.rows)}
    )
    results["tunesmith (defaults)"] = run(TUNESMITH, args.shared, args.rows)
    for settings in args.also:
        results[f"tunesmith {settings}"] = run(TUNESMITH, args.shared, args.rows, settings.split(","))
    plain = next(iter(results.values()))
    table = results_table(
        f"LoRA SFT of SmolLM2-135M on {args.rows} bitext rows, one epoch, same hyperparameters",
        ["trainer", "seconds", "tokens/s", "speed-up", "train loss", "held-out answer loss", "peak MB"],
    )
    for name, r in results.items():
        speed = r["tokens"] / r["seconds"]
        table.add_row(
            name,
            f"{r['seconds']:.0f}",
            f"{speed:.1f}",
            f"{speed / (plain['tokens'] / plain['seconds']):.2f}x",
            f"{r['train_loss']:.3f}",
            f"{r['held_out_loss']:.3f}",
            f"{r['peak_mb']:.0f}",
        )
    Console(width=130).print(table)
    console = Console(width=130)
    console.print(
        "Train losses differ in what they cover: plain TRL on chat rows counts every token, tunesmith "
        "only the answers. The held-out answer loss is the same measure for both."
    )


if __name__ == "__main__":
    main()
