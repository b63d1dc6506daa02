"""The GPU paths, run end to end on a CUDA machine; prints one table (markdown) of what ran.

    scripts/gpu_check.sh            # or: python scripts/gpu_check.py [--steps 30]

Each check runs tunesmith as a user does (its CLI, in a project of its own under a temporary
folder) on the bundled SmolLM2-135M:

- QLoRA (4-bit) SFT on one GPU: tokens/s and peak GPU memory;
- DDP, DeepSpeed ZeRO-3 and FSDP2 on every GPU, when there are two or more;
- the vLLM backend: two versions served, both answering through the OpenAI client.

A check whose package is missing (bitsandbytes, deepspeed, vllm) is listed as skipped, with the
reason. Without CUDA it says so and exits 0: CI and laptops have no GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from importlib.util import find_spec
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples" / "accelerate"
MODEL = "smollm2-135m-instruct"


def tunesmith(project: Path, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tunesmith.cli", *args],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def new_project(parent: Path, name: str) -> Path:
    from tunesmith.pipeline import write_demo_project

    return write_demo_project(parent / name).parent


def last_version(project: Path) -> dict:
    """The newest registered version's metrics, and peak memory from its run's log."""
    from tunesmith.config import load_config
    from tunesmith.registry.versions import list_versions
    from tunesmith.store import Run, session
    from tunesmith.workspace import open_workspace

    config = load_config(project / "tunesmith.yaml")
    workspace = open_workspace(config)
    version = list_versions(workspace)[0]  # newest first
    with session(workspace.engine) as s:
        run = s.get(Run, version.run_id)
    assert run is not None
    logged = [json.loads(line) for line in (Path(run.path) / "metrics.jsonl").read_text().splitlines()]
    peak = max((r.get("memory_mb", 0.0) for r in logged), default=0.0)
    return {**version.metrics, "peak_mb": peak, "name": version.name}


def train_check(parent: Path, name: str, steps: int, settings: list[str], launch: list[str]) -> dict:
    project = new_project(parent, name)
    args = ["train", *launch]
    for setting in [f"model.id={MODEL}", f"train.max_steps={steps}", "train.save_strategy=no", *settings]:
        args += ["--set", setting]
    started = time.perf_counter()
    done = tunesmith(project, *args)
    if done.returncode != 0:
        return {"check": name, "result": "FAILED", "detail": (done.stdout + done.stderr)[-600:]}
    metrics = last_version(project)
    return {
        "check": name,
        "result": "ok",
        "tokens/s": metrics.get("tokens_per_second"),
        "peak MB": round(metrics["peak_mb"]),
        "detail": f"{metrics.get('distributed')} x{metrics.get('world_size')}, "
        f"loss {metrics['train_loss']:.3f}, {time.perf_counter() - started:.0f} s",
    }


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def vllm_check(parent: Path) -> dict:
    """Two LoRA versions trained, served by vLLM, each answering through the OpenAI client."""
    import openai

    project = new_project(parent, "vllm")
    for seed in (0, 1):
        done = tunesmith(
            project,
            "train",
            "--set",
            f"model.id={MODEL}",
            "--set",
            "train.max_steps=10",
            "--set",
            f"train.seed={seed}",
            "--set",
            "train.save_strategy=no",
        )
        if done.returncode != 0:
            return {"check": "vllm", "result": "FAILED", "detail": (done.stdout + done.stderr)[-600:]}
    family = "fernwick-support"
    promoted = tunesmith(
        project, "registry", "promote", f"{family}-v1", "production", "--force", "--reason", "check"
    )
    if promoted.returncode != 0:
        return {"check": "vllm", "result": "FAILED", "detail": promoted.stdout[-600:]}
    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tunesmith.cli",
            "serve",
            "--port",
            str(port),
            "--set",
            "serve.backend=vllm",
            "--set",
            "serve.auth=none",
        ],
        cwd=project,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", timeout=60)
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            try:
                client.models.list()
                break
            except openai.APIConnectionError:
                if server.poll() is not None:
                    return {"check": "vllm", "result": "FAILED", "detail": server.stdout.read()[-600:]}
                time.sleep(1)
        started, answers = time.perf_counter(), []
        for model in (family, f"{family}-v2"):
            reply = client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": "When do you open?"}], max_tokens=32
            )
            answers.append(reply.choices[0].message.content or "")
        seconds = time.perf_counter() - started
    finally:
        server.terminate()
        server.wait(timeout=120)
    ok = all(answers)
    return {
        "check": "vllm",
        "result": "ok" if ok else "FAILED",
        "detail": f"two versions answered in {seconds:.1f} s" if ok else f"empty answers: {answers}",
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps per training check")
    args = parser.parse_args()
    import torch

    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device on this machine; the GPU paths are skipped (exit 0).")
        return 0
    gpus = torch.cuda.device_count()
    print(f"gpu_check: {gpus} x {torch.cuda.get_device_name(0)}, torch {torch.__version__}", flush=True)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        parent = Path(tmp)
        if find_spec("bitsandbytes"):
            rows.append(train_check(parent, "qlora 4-bit", args.steps, ["train.method=qlora"], []))
        else:
            rows.append({"check": "qlora 4-bit", "result": "skipped", "detail": "pip install bitsandbytes"})
        rows.append(train_check(parent, "lora", args.steps, [], []))
        if gpus >= 2:
            many = ["--num-processes", str(gpus)]
            rows.append(train_check(parent, f"ddp x{gpus}", args.steps, [], many))
            rows.append(
                train_check(
                    parent,
                    f"fsdp2 x{gpus}",
                    args.steps,
                    ["train.method=full"],
                    [*many, "--accelerate-config", str(EXAMPLES / "fsdp.yaml")],
                )
            )
            if find_spec("deepspeed"):
                rows.append(
                    train_check(
                        parent,
                        f"zero3 x{gpus}",
                        args.steps,
                        ["train.method=full"],
                        [*many, "--accelerate-config", str(EXAMPLES / "zero3.yaml")],
                    )
                )
            else:
                rows.append({"check": "zero3", "result": "skipped", "detail": "pip install deepspeed"})
        else:
            rows.append({"check": "multi-GPU", "result": "skipped", "detail": "one GPU on this machine"})
        if find_spec("vllm"):
            rows.append(vllm_check(parent))
        else:
            rows.append({"check": "vllm", "result": "skipped", "detail": "pip install vllm"})
    columns = ["check", "result", "tokens/s", "peak MB", "detail"]
    print("\n| " + " | ".join(columns) + " |\n|" + "---|" * len(columns))
    for row in rows:
        print("| " + " | ".join(str(row.get(c, "")).replace("\n", " ") for c in columns) + " |")
    return 1 if any(r["result"] == "FAILED" for r in rows) else 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
