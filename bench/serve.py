"""Benchmark: `tunesmith serve` under load on this machine, llama.cpp and transformers side by side.

A LoRA version of the bundled SmolLM2-135M-Instruct (a short fine-tune on the demo data) is served
with the default config under a real uvicorn on 127.0.0.1 and called through the official `openai`
client, streaming, by 1, 4 and 8 concurrent clients. Three servers take the same requests:

- `per-request`: transformers with `serve.max_batch_size=1`, i.e. one `model.generate` call per
  request, one after another: what a plain "call generate in the handler" server does;
- `batched`: transformers decoding up to 8 concurrent requests together, in batches formed per wave;
- `llamacpp` (when llama.cpp's `llama-server` is installed; `make setup` builds it): what the default
  backend (`auto`) serves this version with on a CPU: its GGUF LoRA adapter over the base GGUF on
  llama-server, whose 8 slots decode concurrent requests with continuous batching.

Decoding is greedy; answers differ slightly between engines (q8_0 weights), so the table counts tokens.

    .venv/bin/python bench/serve.py [--requests 16] [--max-tokens 64] [--clients 1,4,8]

Prints p50/p95 latency, p50/p95 time to first token, aggregate tokens/s and errors per level, and
each server's throughput over the per-request one at the same concurrency.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path
from typing import Any

from rich.console import Console
from tables import results_table

console = Console(width=150)


def make_project() -> tuple[Any, str]:
    """A workspace with one LoRA version of the bundled model in production; (config, model name)."""
    from tunesmith.config import load_config
    from tunesmith.pipeline import write_demo_project
    from tunesmith.registry.aliases import promote
    from tunesmith.train.run import train
    from tunesmith.workspace import open_workspace

    folder = Path(tempfile.mkdtemp(prefix="tunesmith-serve-bench-"))
    config_path = write_demo_project(folder)
    settings = ["train.max_steps=4", "train.save_strategy=no", "train.forgetting.probe=false"]
    config = load_config(config_path, settings)
    version = train(config).version
    promote(open_workspace(config), config.registry, version, "production", force=True, reason="benchmark")
    return config_path, f"{version.family}@production"


def prompts() -> list[list[dict[str, str]]]:
    text = resources.files("tunesmith").joinpath("demo", "fernwick.jsonl").read_text(encoding="utf-8")
    rows = [json.loads(line) for line in text.split("\n") if line.strip()]
    return [[m for m in row["messages"] if m["role"] != "assistant"][-1:] for row in rows]


def one_request(api: Any, model: str, messages: list[dict[str, str]], max_tokens: int) -> dict[str, Any]:
    started = time.perf_counter()
    first = None
    tokens = 0
    try:
        stream = api.chat.completions.create(
            model=model,
            messages=messages,
            max_tokens=max_tokens,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content and first is None:
                first = time.perf_counter()
            if chunk.usage is not None:
                tokens = chunk.usage.completion_tokens
    except Exception as exc:  # counted as an error in the table
        return {"error": str(exc)}
    end = time.perf_counter()
    return {"latency": end - started, "ttft": (first or end) - started, "tokens": tokens}


def load_level(url: str, model: str, clients: int, requests: int, max_tokens: int) -> dict[str, Any]:
    import openai

    api = openai.OpenAI(base_url=f"{url}/v1", api_key="bench", max_retries=0, timeout=600)
    questions = prompts()
    work = [questions[i % len(questions)] for i in range(requests)]
    one_request(api, model, work[0], 4)  # warm the connection and the caches
    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(lambda m: one_request(api, model, m, max_tokens), work))
    wall = time.perf_counter() - started
    ok = [r for r in results if "error" not in r]
    latencies = sorted(r["latency"] for r in ok)
    ttfts = sorted(r["ttft"] for r in ok)
    return {
        "requests": len(results),
        "errors": len(results) - len(ok),
        "p50": statistics.median(latencies),
        "p95": _p95(latencies),
        "ttft50": statistics.median(ttfts),
        "ttft95": _p95(ttfts),
        "tokens": sum(r["tokens"] for r in ok),
        "tok_s": sum(r["tokens"] for r in ok) / wall,
        "wall": wall,
    }


def _p95(values: list[float]) -> float:
    return values[min(len(values) - 1, round(0.95 * (len(values) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=16, help="requests per concurrency level")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--clients", default="1,4,8")
    args = parser.parse_args()

    from tunesmith.config import load_config
    from tunesmith.models.llamacpp import find_server
    from tunesmith.serve import serve_in_background

    levels = [int(c) for c in args.clients.split(",")]
    console.print("Training a short LoRA version of the bundled model to serve…")
    config_path, model = make_project()
    results: dict[tuple[str, int], dict[str, Any]] = {}
    modes = [
        ("per-request", ["serve.backend=transformers", "serve.max_batch_size=1"]),
        ("batched", ["serve.backend=transformers", "serve.max_batch_size=8"]),
    ]
    if find_server() is not None:  # the default backend (auto) serves this version with llama.cpp
        modes.append(("llamacpp", ["serve.backend=llamacpp", "serve.max_batch_size=8"]))
    for mode, settings in modes:
        config = load_config(config_path, [*settings, "serve.batch_wait_ms=5", "serve.auth=none"])  # loopback
        with serve_in_background(config) as (url, _):
            for clients in levels:
                console.print(f"{mode}: {clients} client(s)…")
                results[(mode, clients)] = load_level(url, model, clients, args.requests, args.max_tokens)

    latencies = ["p50 latency s", "p95 latency s", "p50 TTFT s", "p95 TTFT s"]
    table = results_table(
        f"tunesmith serve, SmolLM2-135M LoRA, {args.requests} streamed requests per level, "
        f"max_tokens {args.max_tokens}, greedy",
        ["server", "clients", "requests", "errors", *latencies, "tokens", "tokens/s", "vs per-request"],
    )
    for (mode, clients), r in results.items():
        baseline = results[("per-request", clients)]["tok_s"]
        table.add_row(
            mode,
            str(clients),
            str(r["requests"]),
            str(r["errors"]),
            f"{r['p50']:.2f}",
            f"{r['p95']:.2f}",
            f"{r['ttft50']:.2f}",
            f"{r['ttft95']:.2f}",
            str(r["tokens"]),
            f"{r['tok_s']:.1f}",
            f"{r['tok_s'] / baseline:.2f}x",
        )
    console.print(table)


if __name__ == "__main__":
    main()
