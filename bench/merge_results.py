"""Benchmark: does merging two LoRA versions keep what each learned? (`tunesmith registry merge`)

The quickstart's Fernwick facts are split in two by fact: version A learns the first half, version B
the second (each with the default recipe on the bundled SmolLM2-135M-Instruct). A and B are then
merged with each method, and every system answers the held-out paraphrased questions of both halves:
a merge that works answers both halves, where each parent answers only its own.

    .venv/bin/python bench/merge_results.py [--groups 20] [--json FILE]

`--groups`: facts per half (the demo has 40). Prints key-fact match per half with its interval, the
energy each merged adapter keeps, and the minutes it all took.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from importlib import resources
from pathlib import Path
from typing import Any

from rich.console import Console

sys.path.insert(0, str(Path(__file__).parent))
from tables import results_table

MERGES = [  # (method, weights, density)
    ("linear", "0.5,0.5", 0.5),
    ("linear", "1,1", 0.5),
    ("ties", "1,1", 0.5),
    ("dare_ties", "1,1", 0.5),
]
console = Console(width=150)


def write_halves(folder: Path, groups: int) -> tuple[Path, Path]:
    """The demo rows of the first `groups` facts and of the next `groups`, as two files."""
    text = resources.files("tunesmith").joinpath("demo", "fernwick.jsonl").read_text(encoding="utf-8")
    rows = [json.loads(line) for line in text.splitlines()]
    order = list(dict.fromkeys(row["group"] for row in rows))
    halves = (set(order[:groups]), set(order[groups : 2 * groups]))
    paths = []
    for name, wanted in zip("ab", halves, strict=True):
        path = folder / f"fernwick-{name}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows if r["group"] in wanted), encoding="utf-8")
        paths.append(path)
    return paths[0], paths[1]


def run(
    folder: Path,
    groups: int = 20,
    extra: tuple[str, ...] = (),
    merges: list[tuple[str, str, float]] = MERGES,
    base: bool = True,
) -> dict[str, Any]:
    """Train A and B, merge them each way, and score every system on both halves' test questions
    (the base model too, unless `base` is False)."""
    from tunesmith.config import load_config
    from tunesmith.evaluate.runner import run_eval
    from tunesmith.train.merge import MergeSpec, merge_versions, parse_weights
    from tunesmith.train.run import train
    from tunesmith.workspace import open_workspace

    started = time.perf_counter()
    half_a, half_b = write_halves(folder, groups)
    settings = [
        "project=fernwick",
        f"workspace={folder / 'ws'}",
        "data.clean.pii_keep=[help@fernwick.example, +47 555 0199]",
        "eval.split=test",
        "eval.metrics=[key_fact, rouge_l]",
        "eval.max_new_tokens=48",
        *extra,
    ]
    configs = [load_config(None, [*settings, f"data.path={path}"]) for path in (half_a, half_b)]
    parents = [train(config).version for config in configs]
    workspace = open_workspace(configs[0])
    merged = {}
    for method, weights, density in merges:
        spec = MergeSpec((parents[0].name, parents[1].name), method, parse_weights(weights), density)
        outcome = merge_versions(configs[0], workspace, spec)
        merged[f"{method} {weights}"] = (outcome.version.name, outcome.energy_kept)
    names = [p.name for p in parents] + [name for name, _ in merged.values()]
    halves = {}
    for half, parent in zip("AB", parents, strict=True):
        report = run_eval(
            configs[0], names[-1], compare=["base"] * base + names[:-1], dataset=parent.dataset_version_id
        ).report
        halves[half] = {s["label"]: s["scores"]["key_fact"] for s in report["systems"]}
    return {
        "parents": [p.name for p in parents],
        "merged": {
            label: {"version": name, "energy_kept": energy} for label, (name, energy) in merged.items()
        },
        "halves": halves,
        "items": report["items"],
        "minutes": (time.perf_counter() - started) / 60,
    }


def print_table(result: dict[str, Any]) -> None:
    a, b = result["parents"]
    table = results_table(
        f"Key-fact match on held-out questions of each half ({result['items']} each; "
        f"{result['minutes']:.1f} min in all)",
        ["system", "half A", "half B", "energy kept"],
    )
    systems = [("base", "base", None), (f"A ({a})", a, None), (f"B ({b})", b, None)]
    systems += [(f"merge {label}", m["version"], m["energy_kept"]) for label, m in result["merged"].items()]
    for label, name, energy in systems:
        cells = []
        for half in "AB":
            score = result["halves"][half].get(name)
            cells.append(f"{score['value']:.3f} [{score['low']:.3f}, {score['high']:.3f}]" if score else "-")
        table.add_row(label, *cells, "-" if energy is None else f"{energy:.1%}")
    console.print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--groups", type=int, default=20, help="facts per half")
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args()
    result = run(Path(tempfile.mkdtemp(prefix="tunesmith-merge-")), args.groups)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2), encoding="utf-8")
    print_table(result)


if __name__ == "__main__":
    main()
