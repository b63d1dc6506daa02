"""Benchmark: training throughput of tunesmith's defaults against the scripts a user would otherwise write.

LoRA SFT: the bundled SmolLM2-135M-Instruct on the first `--rows` of bitext_customer_support (from
../shared/datasets), LoRA r=16, alpha=32, all-linear, lr 2e-4, batch 8, max length 512, one epoch,
against a plain TRL `SFTTrainer` + PEFT script (library defaults) and, with `--soup PATH`, Soup
(`soup-cli`, installed in its own virtual environment). Full fine-tuning: the same against plain
TRL without PEFT, on `--full-rows`. Classification: LoRA `classify` on the first `--cls-rows` of
SST-2 (lr 1e-3, two epochs: enough to learn the task) against a plain transformers `Trainer` +
PEFT `AutoModelForSequenceClassification` script, scored on SST-2's dev set. Each side runs in a
fresh process, so its peak memory (read when training ends, before scoring) is its own; every side
is scored on the same held-out rows with the same measure (answer loss, accuracy), so speed is
never bought with quality.

MFU (model FLOPs utilisation) is the achieved rate of the model's matrix products over the
machine's peak, which a short GEMM probe measures first (bfloat16 and float32; the faster one is
the peak). FLOPs per trained token are 2N forward and 2N backward to the activations for LoRA (the
standard approximation: the adapters' own products are under 4% of N here and not counted), and
6N for full fine-tuning, where N is the weights of every matrix product a token passes through
(every linear layer and the LM head). Attention scores and recomputation are not counted, so MFU
understates the work done and is comparable across trainers. Prints tables and the library versions.

    .venv/bin/python bench/train_throughput.py [--rows 256] [--soup PATH] [--only sft,full,classify]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from importlib.metadata import version
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
method = sys.argv[3]
model_dir = str(resolve("smollm2-135m-instruct").path)
tok = AutoTokenizer.from_pretrained(model_dir)
model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
args = SFTConfig(output_dir=tempfile.mkdtemp(), num_train_epochs=1, per_device_train_batch_size=8,
                 learning_rate=2e-4 if method == "lora" else 2e-5, logging_steps=8, save_strategy="no",
                 report_to=[], max_length=512, use_cpu=True)
lora = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM")
trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(train_rows),
                     processing_class=tok, peft_config=lora if method == "lora" else None)
tokens = sum(len(x["input_ids"]) for x in trainer.train_dataset)
t0 = time.perf_counter()
result = trainer.train()
seconds = time.perf_counter() - t0
peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # training's peak, before scoring
print(json.dumps({"seconds": seconds, "tokens": tokens, "train_loss": result.training_loss,
                  "held_out_loss": answer_loss(trainer.model, tok, held_out), "peak_mb": peak_mb}))
"""
)

# The tunesmith sides start as `tunesmith train` does: its training process settings first, before
# torch loads.
PRELUDE = """
from tunesmith.train.openmp import prepare_training_process
prepare_training_process()
"""

# tunesmith trains `train_rows` with these settings (SETTINGS, then the side's own from argv) as a
# user would: its own data preparation (cleaning off, so every side sees the same rows) and run.
TUNESMITH_RUN = """
import tempfile
from tunesmith.config import load_config
from tunesmith.train.run import train
folder = Path(tempfile.mkdtemp())
(folder / "rows.jsonl").write_text("".join(json.dumps(r) + "\\n" for r in train_rows), encoding="utf-8")
config = load_config(None, [
    f"workspace={folder / 'ws'}", f"data.path={folder / 'rows.jsonl'}", "data.split.val=0",
    "data.split.test=0", "data.clean.dedup=false", "data.clean.near_dedup=false", "data.clean.pii=false",
    "train.batch_size=8", "train.save_strategy=no", *SETTINGS, *sys.argv[3:],
])
"""

TUNESMITH = (
    PRELUDE
    + COMMON
    + """
from tunesmith.train.forgetting import answer_loss
SETTINGS = ["train.epochs=1", "train.lr=2e-4", "train.max_length=512", "train.forgetting.probe=false"]
"""
    + TUNESMITH_RUN
    + """
if config.train.method == "full":
    config.train.learning_rate = 2e-5
outcome = train(config)
peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # training's peak, before scoring
m = outcome.version.metrics
tokens = m["tokens_per_second"] * m["train_seconds"]
print(json.dumps({"seconds": m["train_seconds"], "tokens": tokens, "train_loss": m["train_loss"],
                  "held_out_loss": answer_loss(outcome.model, outcome.tokenizer, held_out),
                  "peak_mb": peak_mb}))
"""
)

# Soup writes its adapter; it is scored here with the same answer loss, on the same held-out rows.
SOUP = (
    COMMON
    + """
import os, re, subprocess, tempfile, torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer
from tunesmith.models import resolve
from tunesmith.train.forgetting import answer_loss
soup = sys.argv[3]
model_dir = str(resolve("smollm2-135m-instruct").path)
work = Path(tempfile.mkdtemp())
(work / "train.jsonl").write_text("".join(json.dumps(r) + "\\n" for r in train_rows), encoding="utf-8")
(work / "soup.yaml").write_text(f\"\"\"base: {model_dir}
task: sft
data: {{train: ./train.jsonl, format: chatml, val_split: 0.0, max_length: 512}}
training: {{epochs: 1, lr: 2e-4, batch_size: 8, quantization: none,
           lora: {{r: 16, alpha: 32, target_modules: all-linear}}}}
output: ./output
\"\"\", encoding="utf-8")
out = subprocess.run([soup, "train", "--config", "soup.yaml", "-y"], cwd=work, capture_output=True, text=True)
log = out.stdout + out.stderr
if out.returncode != 0:
    sys.exit(log[-3000:])
peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
seconds = float(re.findall(r"'train_runtime': '?([0-9.]+)", log)[-1])
tokens = float(re.findall(r"'num_tokens': '?([0-9.e+]+)", log)[-1])
loss = float(re.findall(r"'train_loss': '?([0-9.]+)", log)[-1])
adapter = next(p.parent for p in sorted((work / "output").rglob("adapter_config.json")))
tok = AutoTokenizer.from_pretrained(model_dir)
base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
model = PeftModel.from_pretrained(base, adapter)
print(json.dumps({"seconds": seconds, "tokens": tokens, "train_loss": loss,
                  "held_out_loss": answer_loss(model, tok, held_out), "peak_mb": peak_mb}))
"""
)

CLS_COMMON = """
import csv, json, resource, sys, time
from pathlib import Path
import torch
SHARED, ROWS = Path(sys.argv[1]), int(sys.argv[2])
def read(name):
    with (SHARED / "datasets" / "sst2" / name).open(newline="") as f:
        return [{"text": r.get("sentence") or r.get("content"), "label": int(r["label"])}
                for r in csv.DictReader(f, delimiter="\\t")]
train_rows, test_rows = read("train.tsv")[:ROWS], read("dev.tsv")

def accuracy(model, tok, rows, label_of):
    model.eval()
    right = 0
    with torch.inference_mode():
        for start in range(0, len(rows), 32):
            batch = rows[start:start + 32]
            enc = tok([r["text"] for r in batch], padding=True, truncation=True, max_length=128,
                      return_tensors="pt")
            predicted = model(**enc).logits.argmax(-1).tolist()
            right += sum(label_of(p) == r["label"] for p, r in zip(predicted, batch))
    return right / len(rows)
"""

PLAIN_CLS = (
    CLS_COMMON
    + """
import tempfile
from datasets import Dataset
from peft import LoraConfig, TaskType, get_peft_model
from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding,
                          Trainer, TrainingArguments)
from tunesmith.models import resolve
model_dir = str(resolve("smollm2-135m-instruct").path)
tok = AutoTokenizer.from_pretrained(model_dir)
tok.pad_token = tok.pad_token or tok.eos_token
model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=2, dtype=torch.float32)
model.config.pad_token_id = tok.pad_token_id
model = get_peft_model(model, LoraConfig(task_type=TaskType.SEQ_CLS, r=16, lora_alpha=32,
                                         target_modules="all-linear"))
data = Dataset.from_list(train_rows).map(lambda b: tok(b["text"], truncation=True, max_length=128),
                                         batched=True, remove_columns=["text"])
args = TrainingArguments(output_dir=tempfile.mkdtemp(), num_train_epochs=2, per_device_train_batch_size=8,
                         learning_rate=1e-3, logging_steps=8, save_strategy="no", report_to=[], use_cpu=True)
trainer = Trainer(model=model, args=args, train_dataset=data, data_collator=DataCollatorWithPadding(tok))
tokens = args.num_train_epochs * sum(len(x["input_ids"]) for x in data)  # every epoch's
t0 = time.perf_counter()
result = trainer.train()
seconds = time.perf_counter() - t0
peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"seconds": seconds, "tokens": tokens, "train_loss": result.training_loss,
                  "accuracy": accuracy(trainer.model, tok, test_rows, int), "peak_mb": peak_mb}))
"""
)

TUNESMITH_CLS = (
    PRELUDE
    + CLS_COMMON
    + """
SETTINGS = ["train.objective=classify", "train.epochs=2", "train.lr=1e-3", "train.max_length=128"]
"""
    + TUNESMITH_RUN
    + """
outcome = train(config)
peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
m = outcome.version.metrics
names = outcome.model.config.id2label
score = accuracy(outcome.model, outcome.tokenizer, test_rows, lambda p: int(names[p]))
print(json.dumps({"seconds": m["train_seconds"], "tokens": m["tokens_per_second"] * m["train_seconds"],
                  "train_loss": m["train_loss"], "peak_mb": peak_mb, "accuracy": score}))
"""
)

PROBE = """
import json, time, torch
peaks = {}
for name, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
    a, b = torch.randn(2048, 2048, dtype=dtype), torch.randn(2048, 2048, dtype=dtype)
    for _ in range(3):
        a @ b
    best = 0.0
    for _ in range(5):
        t0, n = time.perf_counter(), 0
        while time.perf_counter() - t0 < 0.4:
            a @ b
            n += 1
        best = max(best, 2 * 2048**3 * n / (time.perf_counter() - t0))
    peaks[name] = best
print(json.dumps(peaks))
"""

MATMUL_WEIGHTS = """
import json, torch
from transformers import AutoConfig, AutoModelForCausalLM
from tunesmith.models import resolve
config = AutoConfig.from_pretrained(str(resolve("smollm2-135m-instruct").path))
with torch.device("meta"):
    model = AutoModelForCausalLM.from_config(config)
print(json.dumps(sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))))
"""

LIBRARIES = ("torch", "transformers", "trl", "peft", "accelerate", "datasets")


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


def helper(script: str) -> object:
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def cpu_name() -> str:
    """The CPU's name, its cores and its bfloat16 instructions (which decide the fast matmul path)."""
    info = Path("/proc/cpuinfo")
    lines = info.read_text(encoding="utf-8", errors="replace").splitlines() if info.exists() else []
    name = next((line.split(":", 1)[1].strip() for line in lines if "model name" in line), "")
    flags = next((line.split(":", 1)[1].split() for line in lines if line.startswith("flags")), [])
    native = ", ".join(f for f in ("avx512_bf16", "amx_bf16") if f in flags) or "none"
    return f"{name or platform.processor()}, {os.cpu_count()} cores, bf16 instructions: {native}"


def measure(args: argparse.Namespace, parts: set[str]) -> dict[str, dict[str, dict]]:
    """Run each side of each part in its own process; results by part, then by trainer."""
    results: dict[str, dict[str, dict]] = {}
    if "sft" in parts:
        sft = results.setdefault("sft", {})
        if not args.no_plain:
            sft["plain TRL + PEFT (library defaults)"] = run(PLAIN, args.shared, args.rows, ["lora"])
        if args.soup is not None:
            sft["Soup (soup-cli)"] = run(SOUP, args.shared, args.rows, [str(args.soup)])
        sft["tunesmith (defaults)"] = run(TUNESMITH, args.shared, args.rows)
        for settings in args.also:
            sft[f"tunesmith {settings}"] = run(TUNESMITH, args.shared, args.rows, settings.split(","))
    if "full" in parts:
        full = results.setdefault("full", {})
        if not args.no_plain:
            full["plain TRL (library defaults)"] = run(PLAIN, args.shared, args.full_rows, ["full"])
        full["tunesmith train.method=full"] = run(
            TUNESMITH, args.shared, args.full_rows, ["train.method=full"]
        )
    if "classify" in parts:
        cls = results.setdefault("classify", {})
        if not args.no_plain:
            cls["plain Trainer + PEFT (library defaults)"] = run(PLAIN_CLS, args.shared, args.cls_rows)
        cls["tunesmith classify (defaults)"] = run(TUNESMITH_CLS, args.shared, args.cls_rows)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=256, help="bitext rows for LoRA SFT")
    parser.add_argument("--full-rows", type=int, default=64, help="bitext rows for full fine-tuning")
    parser.add_argument("--cls-rows", type=int, default=400, help="SST-2 rows for classification")
    parser.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[2] / "shared")
    parser.add_argument("--soup", type=Path, help="a `soup` executable (soup-cli in its own environment)")
    parser.add_argument("--only", default="sft,full,classify", help="comma-separated: sft, full, classify")
    parser.add_argument(
        "--also",
        action="append",
        default=[],
        metavar="SETTINGS",
        help="another tunesmith LoRA SFT row with these comma-separated --set overrides",
    )
    parser.add_argument("--no-plain", action="store_true", help="skip the plain rows (the references)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    parts = set(args.only.split(","))
    for name, needed in (
        ("bitext_customer_support", parts & {"sft", "full"}),
        ("sst2", parts & {"classify"}),
    ):
        if needed and not (args.shared / "datasets" / name).exists():
            sys.exit(f"{args.shared / 'datasets'} has no {name}: the benchmark trains on it")
    peaks = helper(PROBE)
    assert isinstance(peaks, dict)
    peak = max(peaks.values())
    weights = helper(MATMUL_WEIGHTS)
    assert isinstance(weights, int)
    console = Console(width=150)
    console.print(f"Machine: {cpu_name()}; python {platform.python_version()}")
    console.print("Libraries: " + ", ".join(f"{name} {version(name)}" for name in LIBRARIES))
    console.print(
        f"Matmul peak (2048^3 GEMM): float32 {peaks['float32'] / 1e9:.0f} GFLOP/s, "
        f"bfloat16 {peaks['bfloat16'] / 1e9:.0f} GFLOP/s; N = {weights / 1e6:.1f}M matmul weights"
    )
    results = measure(args, set(args.only.split(",")))
    titles = {
        "sft": f"LoRA SFT of SmolLM2-135M on {args.rows} bitext rows, one epoch, same hyperparameters",
        "full": f"Full fine-tuning of SmolLM2-135M on {args.full_rows} bitext rows, lr 2e-5, one epoch",
        "classify": f"LoRA classification (SmolLM2-135M) on {args.cls_rows} SST-2 rows, lr 1e-3, two epochs",
    }
    for part, rows in results.items():
        quality = "dev accuracy" if part == "classify" else "held-out answer loss"
        table = results_table(
            titles[part],
            ["trainer", "seconds", "tokens/s", "speed-up", "MFU", "train loss", quality, "peak MB"],
        )
        reference = next(iter(rows.values()))
        flops_per_token = (6 if part == "full" else 4) * weights
        for name, r in rows.items():
            speed = r["tokens"] / r["seconds"]
            table.add_row(
                name,
                f"{r['seconds']:.0f}",
                f"{speed:.1f}",
                f"{speed / (reference['tokens'] / reference['seconds']):.2f}x",
                f"{speed * flops_per_token / peak:.1%}",
                f"{r['train_loss']:.3f}",
                f"{r['accuracy']:.3f}" if part == "classify" else f"{r['held_out_loss']:.3f}",
                f"{r['peak_mb']:.0f}",
            )
        console.print(table)
    console.print(
        "Train losses differ in what they cover: plain TRL on chat rows counts every token, tunesmith "
        "only the answers. The held-out answer loss is the same measure for every row. MFU is against "
        f"the bfloat16 peak above ({peak / 1e9:.0f} GFLOP/s)."
    )
    if args.json is not None:
        args.json.write_text(json.dumps({"peaks": peaks, "results": results, "at": time.time()}, indent=2))


if __name__ == "__main__":
    main()
