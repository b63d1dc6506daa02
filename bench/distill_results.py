"""Benchmark: what does a student learn from a teacher? (`train.objective: distill`)

The teacher is the quickstart's fine-tune: the bundled SmolLM2-135M-Instruct taught the Fernwick
support facts with the default recipe. Two students start again from the bare base model and learn
from that teacher alone, never from the data's own answers, for the same budget each:

- on-policy: each student answer is pulled towards the teacher's token distributions over it
  (TRL's DistillationTrainer, generalised JSD, `beta` 0.5);
- off-policy: the teacher writes an answer to each train prompt, and the student learns those by SFT.

Every system answers the held-out paraphrased questions; key-fact match says how much of the
teacher's knowledge reached the student.

    .venv/bin/python bench/distill_results.py [--minutes 5] [--modes on_policy,off_policy] [--json FILE]

`--minutes`: the training budget of each student; `--modes`: which students to train (one alone,
for a longer run of it). Prints key-fact match and ROUGE-L with their
intervals, the change of each run's loss on general answers (the forgetting probe; negative is
better), each run's steps, and the minutes it all took.
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

console = Console(width=150)


MODES = ("on_policy", "off_policy")


def run(
    folder: Path, minutes: float = 5.0, extra: tuple[str, ...] = (), modes: tuple[str, ...] = MODES
) -> dict[str, Any]:
    """Train the teacher, distil a student from it in each of `modes`, and score every system on the
    test split."""
    from tunesmith.config import load_config
    from tunesmith.evaluate.runner import run_eval
    from tunesmith.train.run import train

    started = time.perf_counter()
    data = folder / "fernwick.jsonl"
    data.write_text(
        resources.files("tunesmith").joinpath("demo", "fernwick.jsonl").read_text(encoding="utf-8"),
        encoding="utf-8",
    )
    settings = [
        "project=fernwick",
        f"workspace={folder / 'ws'}",
        f"data.path={data}",
        "data.clean.pii_keep=[help@fernwick.example, +47 555 0199]",
        "eval.split=test",
        "eval.metrics=[key_fact, rouge_l]",
        "eval.max_new_tokens=48",
        *extra,
    ]
    teacher = train(load_config(None, settings)).version
    students, runs = {}, {"teacher": _run_of(teacher)}
    for mode in modes:
        distill = [
            "train.objective=distill",
            f"train.distill.teacher.model={teacher.name}",
            f"train.distill.mode={mode}",
            "train.distill.max_completion_length=48",
            "train.distill.teacher.max_tokens=48",
            "train.distill.teacher.temperature=0",
            f"train.time_budget_minutes={minutes}",
        ]
        students[mode] = train(load_config(None, [*settings, *distill])).version
        runs[mode] = _run_of(students[mode])
    config = load_config(None, settings)
    *earlier, last = [teacher.name, *(students[mode].name for mode in modes)]
    report = run_eval(config, last, compare=["base", *earlier]).report
    return {
        "teacher": teacher.name,
        "students": {mode: version.name for mode, version in students.items()},
        "scores": {s["label"]: s["scores"] for s in report["systems"]},
        "runs": runs,
        "items": report["items"],
        "minutes": (time.perf_counter() - started) / 60,
        "budget_minutes": minutes,
    }


def _run_of(version: Any) -> dict[str, Any]:
    metrics = version.metrics
    keys = ("global_step", "train_seconds", "forgetting", "divergence_first_quarter")
    keys += ("divergence_last_quarter",)
    return {key: metrics[key] for key in keys if key in metrics}


def print_table(result: dict[str, Any]) -> None:
    table = results_table(
        f"Held-out Fernwick questions ({result['items']} items; students {result['budget_minutes']:g} min "
        f"each; {result['minutes']:.1f} min in all)",
        ["system", "key-fact match", "ROUGE-L", "general answer loss", "steps", "train minutes"],
    )
    rows = [("base (SmolLM2-135M-Instruct)", "base", None)]
    rows.append((f"teacher: SFT ({result['teacher']})", result["teacher"], "teacher"))
    for mode, name in result["students"].items():
        rows.append((f"student: {mode.replace('_', '-')} ({name})", name, mode))
    for label, name, run in rows:
        scores = result["scores"].get(name, {})
        cells = [_cell(scores.get(metric)) for metric in ("key_fact", "rouge_l")]
        info = result["runs"].get(run, {}) if run else {}
        steps = f"{info['global_step']:.0f}" if "global_step" in info else "-"
        spent = f"{info['train_seconds'] / 60:.1f}" if "train_seconds" in info else "-"
        forgot = f"{info['forgetting']:+.3f}" if "forgetting" in info else "-"
        table.add_row(label, *cells, forgot, steps, spent)
    console.print(table)


def _cell(score: dict[str, Any] | None) -> str:
    return f"{score['value']:.3f} [{score['low']:.3f}, {score['high']:.3f}]" if score else "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=5.0, help="training budget of each student")
    parser.add_argument(
        "--modes", default=",".join(MODES), help="the students to train, comma-separated (default: both)"
    )
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args()
    modes = tuple(m.strip() for m in args.modes.split(",") if m.strip())
    unknown = [m for m in modes if m not in MODES]
    if unknown or not modes:
        parser.error(f"--modes: choose from {', '.join(MODES)}")
    result = run(Path(tempfile.mkdtemp(prefix="tunesmith-distill-")), args.minutes, modes=modes)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2), encoding="utf-8")
    print_table(result)


if __name__ == "__main__":
    main()
