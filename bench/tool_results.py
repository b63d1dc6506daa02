"""Benchmark: can the bundled model learn to call tools? (the example tool-calling set)

The set is `examples/tool_calling/tool_calls.jsonl` (written for the project by its `make_set.py`):
requests that call one of two offered functions (weather, currency, timers, flights, a shopping
list), requests that need no call, and conversations that answer from a tool's result. The bundled
SmolLM2-135M-Instruct, whose chat template knows no tools, is fine-tuned with the default recipe
within a time budget; the calls are written in the Hermes format (`tunesmith.toolcalls`). Then:

- eval scores the base model and the version on the held-out test split (tool_ast over the requests
  that need a call, tool_abstain over those that need none, tool_name, tool_args and tool_json, with
  95% intervals);
- the version is served (transformers backend) and each test request is asked through the official
  `openai` client with its tools, greedily; the server's `tool_calls` are compared with the expected
  calls, as `tool_args` compares eval's answers (the two should agree: one rendering, one parser).

    .venv/bin/python bench/tool_results.py [--minutes 4] [--items N] [--ask N] [--max-new-tokens 64]
        [--json FILE]

`--items`: the test requests eval scores (all when unset); `--ask`: how many of them the server is
asked (all when unset).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console

sys.path.insert(0, str(Path(__file__).parent))
from tables import results_table

console = Console(width=150)
DATA = Path(__file__).resolve().parents[1] / "examples" / "tool_calling" / "tool_calls.jsonl"
METRICS = ("tool_ast", "tool_abstain", "tool_name", "tool_args", "tool_json")


def run(
    folder: Path,
    minutes: float | None = 4.0,
    extra: tuple[str, ...] = (),
    ask: int | None = None,
    compare: tuple[str, ...] = ("base",),
) -> dict[str, Any]:
    """Train on the tool set within `minutes` (None: as `extra` says), score the version beside
    `compare`, and ask the served version the test requests (the first `ask` of them; None: all)."""
    from tunesmith.config import load_config
    from tunesmith.data import load_split
    from tunesmith.evaluate.runner import run_eval
    from tunesmith.train.run import train

    started = time.perf_counter()
    settings = [
        "project=tools",
        f"workspace={folder / 'ws'}",
        f"data.path={DATA}",
        *([f"train.time_budget_minutes={minutes}"] if minutes is not None else []),
        "eval.max_new_tokens=64",
        "serve.auth=none",
        "serve.backend=transformers",
        *extra,
    ]
    outcome = train(load_config(None, settings))
    version = outcome.version
    trained = time.perf_counter() - started
    report = run_eval(load_config(None, settings), version.name, compare=list(compare)).report
    test = load_split(outcome.dataset, "test")[:ask]
    served = _ask_server(load_config(None, [*settings, f"serve.models=[{version.name}]"]), version.name, test)
    return {
        "version": version.name,
        "scores": {s["label"]: s["scores"] for s in report["systems"]},
        "metric_choice": report.get("metric_choice"),
        "items": report["items"],
        "steps": version.metrics.get("global_step"),
        "train_minutes": trained / 60,
        "served": served,
        "minutes": (time.perf_counter() - started) / 60,
        "budget_minutes": minutes,
    }


def _ask_server(config: Any, model: str, items: list[dict[str, Any]]) -> dict[str, Any]:
    """Each item's request through the openai client, greedy: how many came back as tool calls, and
    how many of those agree with the calls in the reference answer."""
    import openai

    from tunesmith.serve import serve_in_background
    from tunesmith.toolcalls import canonical, message_calls

    calls = right = 0
    with serve_in_background(config) as (url, _):
        api = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        for item in items:
            answer = api.chat.completions.create(
                model=model, messages=item["messages"][:-1], tools=item["tools"], max_tokens=64, temperature=0
            )
            made = answer.choices[0].message.tool_calls or []
            calls += bool(made)
            want = [(c.name, canonical(c.arguments)) for c in message_calls(item["messages"][-1])]
            got = [(c.function.name, canonical(json.loads(c.function.arguments))) for c in made]
            right += sorted(map(json.dumps, got)) == sorted(map(json.dumps, want))
    return {"asked": len(items), "answered_with_calls": calls, "as_expected": right}


def print_table(result: dict[str, Any]) -> None:
    table = results_table(
        f"Held-out tool-calling requests ({result['items']} items; {result['budget_minutes']}-min budget, "
        f"{result['steps']:.0f} steps; {result['minutes']:.1f} min in all)",
        ["system", *METRICS],
    )
    for label, scores in result["scores"].items():
        table.add_row(label, *(_cell(scores.get(metric)) for metric in METRICS))
    console.print(table)
    served = result["served"]
    console.print(
        f"served through the openai client: {served['answered_with_calls']} of {served['asked']} answers "
        f"came back as tool_calls; {served['as_expected']} of {served['asked']} match the expected calls "
        "(or rightly none)"
    )


def _cell(score: dict[str, Any] | None) -> str:
    return f"{score['value']:.3f} [{score['low']:.3f}, {score['high']:.3f}]" if score else "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=4.0, help="the training budget")
    parser.add_argument("--items", type=int, help="test requests to score (default: all)")
    parser.add_argument("--ask", type=int, help="test requests to ask the server (default: all)")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="the eval's answer length")
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args()
    extra = (f"eval.max_new_tokens={args.max_new_tokens}",)
    extra += (f"eval.max_items={args.items}",) if args.items else ()
    result = run(Path(tempfile.mkdtemp(prefix="tunesmith-tools-")), args.minutes, extra, args.ask)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2), encoding="utf-8")
    print_table(result)


if __name__ == "__main__":
    main()
