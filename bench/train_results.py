"""Benchmark: what each training objective reaches on real public data, on this machine's CPU.

Four runs through `tunesmith.train.run.train`, each on a subset of a dataset in ../shared/datasets:

- LoRA SFT of SmolLM2-135M-Instruct on bitext_customer_support: held-out answer loss and ROUGE-L
  of the base model and of the tuned version, on the same test rows;
- `classify` with LoRA on SmolLM2 on sst2: test accuracy and macro-F1 against the majority class;
- `classify` with full fine-tuning of MiniLM-L6 on banking77 (77 intents): test macro-F1;
- `tag` with full fine-tuning of MiniLM-L6 on conll2003: entity-level seqeval F1.

    .venv/bin/python bench/train_results.py [--only sft,sst2,banking77,conll] [--scale 1.0]

`--scale` multiplies every subset size (0.25 for a quick look). Prints a table.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from tables import results_table

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"

RUNS: dict[str, dict[str, Any]] = {
    "sft": {
        "data": "bitext_customer_support/Bitext_Sample_Customer_Support_Training_Dataset.csv",
        "rows": 320,
        "settings": [
            "data.columns={prompt: instruction, completion: response}",
            "data.split.val=0.05",
            "data.split.test=0.1",
            "train.epochs=1",
            "train.max_length=384",
            "train.forgetting.probe=false",
            "eval.metrics=[rouge_l]",
            "eval.max_new_tokens=160",
        ],
    },
    "sst2": {
        "data": "sst2/train.tsv",
        "rows": 1200,
        "settings": [
            "data.columns={text: sentence}",
            "train.objective=classify",
            "train.epochs=2",
            "train.lr=5e-4",
            "train.batch_size=16",
            "train.max_length=64",
        ],
    },
    "banking77": {
        "data": "banking77/train.csv",
        "rows": 4000,
        "settings": [
            "model.id=minilm-l6",
            "data.columns={label: category}",
            "data.split.strategy=stratified",
            "train.objective=classify",
            "train.method=full",
            "train.epochs=6",
            "train.lr=3e-4",
            "train.batch_size=32",
            "train.max_length=64",
        ],
    },
    "conll": {
        "data": "conll2003/train.txt",
        "rows": 3000,
        "settings": [
            "model.id=minilm-l6",
            "train.objective=tag",
            "train.method=full",
            "train.epochs=3",
            "train.lr=3e-4",
            "train.batch_size=16",
            "train.max_length=128",
        ],
    },
}


def run(name: str, scale: float) -> dict[str, Any]:
    from tunesmith.config import load_config
    from tunesmith.data import load_split
    from tunesmith.evaluate.runner import run_eval
    from tunesmith.store import DatasetVersion, session
    from tunesmith.train.run import train

    spec = RUNS[name]
    folder = Path(tempfile.mkdtemp(prefix=f"tunesmith-bench-{name}-"))
    rows = max(64, int(spec["rows"] * scale))
    config = load_config(
        None,
        [
            f"project={name}",
            f"workspace={folder / 'ws'}",
            f"data.path={SHARED / spec['data']}",
            f"data.sample={rows}",
            "train.save_strategy=no",
            *spec["settings"],
        ],
    )
    started = time.perf_counter()
    outcome = train(config)
    metrics = outcome.version.metrics
    result: dict[str, Any] = {"rows": rows, "seconds": time.perf_counter() - started, "metrics": metrics}
    if name == "sft":
        from tunesmith.models import load_causal_lm
        from tunesmith.train.forgetting import answer_loss

        with session(outcome_engine(config)) as s:
            dataset = s.get(DatasetVersion, outcome.version.dataset_version_id)
        test = load_split(dataset, "test")
        base = load_causal_lm("smollm2-135m-instruct")
        result["loss"] = (
            answer_loss(base.model, base.tokenizer, test),
            answer_loss(outcome.model, outcome.tokenizer, test),
        )
        del base
        evaluated = run_eval(config, outcome.version.name, compare=["base"]).systems
        result["rouge_l"] = (evaluated[0].scores["rouge_l"].value, evaluated[1].scores["rouge_l"].value)
        result["test_rows"] = len(test)
    result["seconds"] = time.perf_counter() - started
    return result


def outcome_engine(config: Any) -> Any:
    from tunesmith.workspace import open_workspace

    return open_workspace(config).engine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(RUNS))
    parser.add_argument("--scale", type=float, default=1.0)
    args = parser.parse_args()
    if not SHARED.exists():
        sys.exit(f"{SHARED} is absent: the benchmark trains on the real datasets there")
    names = [n for n in args.only.split(",") if n]
    results = {name: run(name, args.scale) for name in names}
    table = results_table(
        "Training objectives on real data (CPU)",
        ["task", "model / method", "rows", "result", "baseline", "minutes"],
        text=("model / method", "result", "baseline"),
    )
    for name, r in results.items():
        m = r["metrics"]
        if name == "sft":
            row = (
                "bitext SFT",
                "SmolLM2-135M / lora",
                f"held-out answer loss {r['loss'][1]:.3f}, ROUGE-L {r['rouge_l'][1]:.3f} "
                f"({r['test_rows']} test rows)",
                f"base: loss {r['loss'][0]:.3f}, ROUGE-L {r['rouge_l'][0]:.3f}",
            )
        elif name == "conll":
            row = (
                "conll2003 tag",
                "MiniLM-L6 / full",
                f"entity F1 {m['test_f1']:.3f} (P {m['test_precision']:.3f}, R {m['test_recall']:.3f})",
                f"all 'O': tag accuracy {m['majority_accuracy']:.3f} (ours {m['test_accuracy']:.3f})",
            )
        else:
            row = (
                f"{name} classify",
                "SmolLM2-135M / lora" if name == "sst2" else "MiniLM-L6 / full",
                f"accuracy {m['test_accuracy']:.3f}, macro-F1 {m['test_macro_f1']:.3f}",
                f"majority: accuracy {m['majority_accuracy']:.3f}, macro-F1 {m['majority_macro_f1']:.3f}",
            )
        table.add_row(*row[:2], str(r["rows"]), *row[2:], f"{r['seconds'] / 60:.1f}")
    Console(width=160).print(table)


if __name__ == "__main__":
    main()
