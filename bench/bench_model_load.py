"""Benchmark: loading the bundled SmolLM2, first time (GGUF → safetensors) against cached.

Each load runs in a fresh Python process against one temporary cache folder, so the first row pays
the conversion and the later rows read the cached safetensors. Prints a table; the ratio is what
to compare across machines.

    .venv/bin/python bench/bench_model_load.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

from rich.console import Console
from tables import results_table

PROBE = """
import json, time
t0 = time.perf_counter()
# The libraries every process pays for once, whatever tool loads the model: torch, transformers and
# the Llama classes it imports lazily on first use.
import torch
import transformers.core_model_loading
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast
from transformers.models.llama import configuration_llama, modeling_llama
from tunesmith.models import load_causal_lm, resolve
t1 = time.perf_counter()
origin = resolve("smollm2-135m-instruct").origin
loaded = load_causal_lm("smollm2-135m-instruct")
t2 = time.perf_counter()
print(json.dumps({"origin": origin, "import_s": t1 - t0, "load_s": t2 - t1}))
"""


def run_probe(cache: str) -> dict:
    # HF_HUB_OFFLINE: measure the bundled path even where a hub copy is reachable.
    env = {**os.environ, "TUNESMITH_CACHE_DIR": cache, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="cached loads to time")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as cache:
        cold = run_probe(cache)
        warm = [run_probe(cache) for _ in range(args.repeats)]
    best = min(w["load_s"] for w in warm)
    table = results_table(
        "Loading smollm2-135m-instruct (seconds, fresh process each)",
        ["load", "found as", "import libraries", "load model", "vs first", "process total"],
        text=("found as",),
    )
    total = cold["import_s"] + cold["load_s"]
    table.add_row(
        "first", cold["origin"], f"{cold['import_s']:.2f}", f"{cold['load_s']:.2f}", "1.00", f"{total:.2f}"
    )
    for i, w in enumerate(warm, start=1):
        table.add_row(
            f"cached #{i}",
            w["origin"],
            f"{w['import_s']:.2f}",
            f"{w['load_s']:.2f}",
            f"{w['load_s'] / cold['load_s']:.3f}",
            f"{w['import_s'] + w['load_s']:.2f}",
        )
    Console().print(table)
    target = 2.0
    verdict = "meets" if best < target else "MISSES"
    Console().print(
        f"Fastest cached load {best:.2f} s: {verdict} the {target:.0f} s target; "
        f"{cold['load_s'] / best:.0f}x faster than the first load. A new process also pays "
        f"{min(w['import_s'] for w in warm):.1f} s importing torch and transformers (any tool does)."
    )


if __name__ == "__main__":
    main()
