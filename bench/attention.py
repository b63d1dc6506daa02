"""Benchmark: eager attention against SDPA for a LoRA training step on this machine, by row length.

`model.attn_implementation: auto` trains with eager attention on a CPU when no row is longer than
`EAGER_ATTENTION_MAX_TOKENS` (tunesmith.train.run) and with SDPA otherwise; this bench is where that
threshold comes from. It times the forward and backward pass of the bundled SmolLM2-135M body with
LoRA adapters (r=16, every linear layer) under bfloat16 autocast where the CPU has it, as tunesmith
trains, for a batch of 8 rows of each length, with each implementation, side by side in one process.

`--train` times whole training runs instead: `tunesmith train` of the demo project (LoRA SFT of the
bundled model on the Fernwick rows, up to 96 tokens) with `model.attn_implementation: sdpa` and with
`auto` (eager while it trains, here), taking turns in fresh processes, and reports the training
loss of each, so that speed is not bought with a different model.

    .venv/bin/python bench/attention.py [--lengths 16,64,128,256,384,512] [--seconds 6]
    .venv/bin/python bench/attention.py --train [--steps 24] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from tables import results_table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", default="16,64,128,256,384,512", help="comma-separated row lengths")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=6.0, help="timing per length and implementation")
    parser.add_argument("--train", action="store_true", help="time whole `tunesmith train` runs instead")
    parser.add_argument("--steps", type=int, default=24, help="--train: optimizer steps of each run")
    parser.add_argument("--repeats", type=int, default=2, help="--train: runs of each implementation")
    args = parser.parse_args()
    if args.train:
        return train_runs(args.steps, args.repeats)

    from tunesmith.train.openmp import prepare_training_process

    prepare_training_process()  # as `tunesmith train` starts
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from tunesmith.config import native_bf16
    from tunesmith.models import resolve
    from tunesmith.train.methods import share_lora_inputs_under_autocast
    from tunesmith.train.run import EAGER_ATTENTION_MAX_TOKENS

    path = str(resolve("smollm2-135m-instruct").path)
    mixed = native_bf16()
    dtype = torch.bfloat16 if mixed else torch.float32
    models = {}
    for name in ("eager", "sdpa"):
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation=name)
        model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", r=16, target_modules="all-linear"))
        share_lora_inputs_under_autocast(model)
        models[name] = model.base_model.model.model  # the body: the LM head is the same either way

    def seconds_per_step(body: torch.nn.Module, ids: torch.Tensor) -> float:
        def step() -> None:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=mixed):
                hidden = body(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state
            hidden.float().mean().backward()

        step()  # warm-up
        started, steps = time.perf_counter(), 0
        while time.perf_counter() - started < args.seconds or steps < 2:
            step()
            steps += 1
        return (time.perf_counter() - started) / steps

    table = results_table(
        f"LoRA step, batch {args.batch}, "
        + ("bf16 autocast" if mixed else "float32")
        + f" (auto: eager up to {EAGER_ATTENTION_MAX_TOKENS} tokens)",
        ["row tokens", "eager ms", "sdpa ms", "eager / sdpa", "faster"],
    )
    for length in (int(n) for n in args.lengths.split(",")):
        ids = torch.randint(0, 40_000, (args.batch, length))
        eager, sdpa = (seconds_per_step(models[name], ids) for name in ("eager", "sdpa"))
        table.add_row(
            str(length),
            f"{eager * 1e3:.0f}",
            f"{sdpa * 1e3:.0f}",
            f"{eager / sdpa:.2f}",
            "eager" if eager < sdpa else "sdpa",
        )
    Console(width=120).print(table)


RUN = """
import json, sys
from tunesmith.config import load_config
from tunesmith.train.run import train

settings = [f"model.attn_implementation={sys.argv[2]}", f"train.max_steps={sys.argv[3]}",
            "train.save_strategy=no", "train.forgetting.probe=false", f"project=attention-{sys.argv[2]}"]
metrics = train(load_config(sys.argv[1], settings)).version.metrics
print(json.dumps({"seconds": metrics["train_seconds"], "loss": metrics["train_loss"]}))
"""


def train_runs(steps: int, repeats: int) -> None:
    from tunesmith.pipeline import write_demo_project

    seconds: dict[str, list[float]] = {"sdpa": [], "auto": []}
    losses: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        config = write_demo_project(Path(tmp))
        for _ in range(repeats):
            for attention, times in seconds.items():  # taking turns: a slower spell of the machine hits both
                done = subprocess.run(
                    [sys.executable, "-c", RUN, str(config), attention, str(steps)],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                result = json.loads(done.stdout.strip().splitlines()[-1])
                times.append(result["seconds"])
                losses[attention] = result["loss"]
    table = results_table(
        f"tunesmith train, demo project: LoRA SFT of the bundled model, {steps} steps, best of {repeats}",
        ["model.attn_implementation", "training seconds", "train loss", "time / sdpa"],
    )
    for attention, times in seconds.items():
        table.add_row(
            attention,
            f"{min(times):.1f}",
            f"{losses[attention]:.4f}",
            f"{min(times) / min(seconds['sdpa']):.2f}",
        )
    Console(width=120).print(table)


if __name__ == "__main__":
    main()
