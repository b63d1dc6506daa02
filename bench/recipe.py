"""Benchmark: the default recipe against the plain defaults and a hand-tuned recipe, on the bundled model.

The quickstart's task (teach SmolLM2-135M-Instruct the facts of a fictional company; the test split
holds paraphrased questions training never saw), trained four ways, each in a fresh process:

- `recipe`: nothing set under `train:` (train.recipe auto sizes every setting to the data);
- `recipe at lr 2e-4` and `at lr 5e-4`: the same at the usual LoRA rate and between;
- `recipe with replay`: the same with replay of general data (`train.forgetting.method: replay`);
- `defaults`: `train.recipe: off` (max_length 512, batch 8, 3 epochs, LoRA r 16, lr 2e-4);
- `hand-tuned`: the quickstart's own train section, chosen by hand on this task.

Each row: key-fact score and ROUGE-L on the test split (base model first), the forgetting probe's
change in general answer loss, epochs actually trained (early stopping), and wall time.

    .venv/bin/python bench/recipe.py [--only recipe,defaults]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.table import Table

VARIANTS: dict[str, dict[str, Any] | None] = {
    "recipe": {"seed": 0},
    "recipe at lr 2e-4": {"seed": 0, "learning_rate": 2.0e-4},
    "recipe at lr 5e-4": {"seed": 0, "learning_rate": 5.0e-4},
    "recipe with replay": {"seed": 0, "forgetting": {"method": "replay"}},
    "defaults": {"seed": 0, "recipe": "off"},
    "hand-tuned": None,  # the quickstart's train section as shipped
}


def run_variant(name: str, folder: Path) -> dict[str, Any]:
    """One variant's quickstart, in this process; its figures as a dict."""
    from tunesmith.pipeline import quickstart, write_demo_project
    from tunesmith.train.forgetting import forgetting_rise

    config_path = write_demo_project(folder)
    config = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    train = VARIANTS[name]
    if train is not None:
        config["train"] = train
    config_path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    started = time.perf_counter()
    result = quickstart(folder)
    recorded = result.outcome.version.config["train"]
    metrics = result.outcome.version.metrics
    return {
        "variant": name,
        "base_key_fact": result.before.means["key_fact"],
        "key_fact": result.after.means["key_fact"],
        "rouge_l": result.after.means["rouge_l"],
        "forgetting": forgetting_rise(metrics),
        "epochs": metrics.get("epochs"),
        "planned_epochs": recorded["num_train_epochs"],
        "settings": {k: recorded[k] for k in ("max_length", "per_device_train_batch_size", "learning_rate")}
        | {"lora_r": recorded["lora"]["r"]},
        "seconds": time.perf_counter() - started,
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", default=",".join(VARIANTS), help="Variants to run, comma-separated.")
    parser.add_argument("--variant", help=argparse.SUPPRESS)  # one variant, in a child process
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        print("RESULT " + json.dumps(run_variant(args.variant, args.folder)))
        return 0
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.only.split(","):
            child = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--variant",
                    name,
                    "--folder",
                    str(Path(tmp) / name.replace(" ", "_")),
                ],
                capture_output=True,
                text=True,
                check=False,
            )
            lines = [line for line in child.stdout.splitlines() if line.startswith("RESULT ")]
            if child.returncode or not lines:
                print(child.stderr[-3000:], file=sys.stderr)
                return 1
            rows.append(json.loads(lines[-1].removeprefix("RESULT ")))
    table = Table(title="Quickstart task, SmolLM2-135M-Instruct LoRA, this machine's CPU")
    for column in ("variant", "key_fact", "ROUGE-L", "general loss", "epochs", "settings", "time"):
        table.add_column(column)
    for row in rows:
        settings = row["settings"]
        table.add_row(
            row["variant"],
            f"{row['base_key_fact']:.2f} -> {row['key_fact']:.2f}",
            f"{row['rouge_l']:.3f}",
            "-" if row["forgetting"] is None else f"{row['forgetting']:+.1%}",
            f"{row['epochs']:.1f} of {row['planned_epochs']:g}",
            f"len {settings['max_length']}, batch {settings['per_device_train_batch_size']}, "
            f"lr {settings['learning_rate']:g}, r {settings['lora_r']}",
            f"{row['seconds'] / 60:.1f} min",
        )
    Console(width=140).print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
