"""Benchmark: preference learning and RL on real public data, on this machine's CPU.

Three runs through `tunesmith.train.run.train` and `tunesmith.evaluate.runner.run_eval`, on
../shared/datasets:

- `reward`: a LoRA reward model on SmolLM2-135M-Instruct from hh_rlhf_harmless_base pairs; its
  pairwise accuracy on the held-out test pairs, with a 95% Wilson interval;
- `dpo`: DPO (LoRA, sigmoid loss) of SmolLM2 on the same dataset version's train pairs, then the
  eval stage on the test prompts that neither run saw: the reward model's win rate of the DPO
  version over the base model with its bootstrap interval, the reward means, and the forgetting
  probe;
- `rl`: GRPO of SmolLM2 on gsm8k questions with checker rewards (numeric answer match, and a
  final `#### N` answer line); the mean reward over the first and the last quarter of the steps.

    .venv/bin/python bench/preference_results.py [--only reward,dpo,rl] [--scale 1.0]

`--scale` multiplies the step counts and subset sizes (0.25 for a quick look). `dpo` needs the
reward model of `reward` from the same invocation. Prints a table; writes `results.json` and the
eval report in the workspace folder it names.
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
from rich.table import Table

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"
HH = SHARED / "hh_rlhf_harmless_base" / "test.jsonl.gz"
GSM8K = SHARED / "gsm8k" / "train.jsonl"
GSM8K_SYSTEM = (
    "Solve the math problem in at most three short sentences. Then write the final answer on its own "
    "line as '#### <number>'."
)
console = Console(width=150)


def config(workspace: Path, *settings: str) -> Any:
    from tunesmith.config import load_config

    return load_config(None, ["project=prefs", f"workspace={workspace}", *settings])


HH_DATA = [f"data.path={HH}", "data.split.val=0.05", "data.split.test=0.08", "data.split.seed=0"]


def run_reward(workspace: Path, scale: float) -> dict[str, Any]:
    from tunesmith.train.run import train

    cfg = config(
        workspace,
        *HH_DATA,
        "train.objective=reward",
        "train.epochs=1",
        f"train.max_steps={max(10, int(80 * scale))}",
        "train.batch_size=8",
        "train.lr=2e-4",
        "train.max_length=256",
        "train.save_strategy=no",
    )
    started = time.perf_counter()
    outcome = train(cfg)
    m = outcome.version.metrics
    low, high = m["test_pairwise_accuracy_ci"]
    return {
        "run": "reward model (LoRA, SmolLM2-135M) on hh_rlhf_harmless_base",
        "version": outcome.version.name,
        "train_pairs_seen": m["global_step"] * 8,
        "result": f"held-out pairwise accuracy {100 * m['test_pairwise_accuracy']:.1f}% "
        f"(95% CI {100 * low:.1f}-{100 * high:.1f}%) on {m['test_pairs']} pairs",
        "minutes": (time.perf_counter() - started) / 60,
        "metrics": {k: v for k, v in m.items() if k.startswith("test_") or k.startswith("eval_")},
    }


def run_dpo(workspace: Path, scale: float, reward_version: str) -> dict[str, Any]:
    from tunesmith.evaluate.runner import run_eval
    from tunesmith.train.run import train

    cfg = config(
        workspace,
        *HH_DATA,
        "train.objective=dpo",
        "train.preference.loss_type=sigmoid",
        "train.preference.beta=0.1",
        "train.epochs=1",
        f"train.max_steps={max(10, int(60 * scale))}",
        "train.batch_size=4",
        "train.lr=2e-4",
        "train.max_length=256",
        "train.save_strategy=no",
        "eval.max_new_tokens=64",
        "eval.metrics=[rouge_l, perplexity]",
    )
    started = time.perf_counter()
    outcome = train(cfg)
    report = run_eval(cfg, outcome.version.name, compare=["base"], probe=True, reward_model=reward_version)
    (pair,) = report.report["reward_model"]["pairwise"]
    rate = pair["win_rate"]
    systems = {s["label"]: s["scores"] for s in report.report["systems"]}
    base_reward = systems["base"]["reward"]["value"]
    tuned_reward = systems[outcome.version.name]["reward"]["value"]
    return {
        "run": "DPO (LoRA, sigmoid, beta 0.1) of SmolLM2-135M on hh_rlhf_harmless_base",
        "version": outcome.version.name,
        "result": f"reward-model win rate over base {rate['value']:.3f} "
        f"(95% CI {rate['low']:.3f}-{rate['high']:.3f}) on {report.report['items']} held-out prompts; "
        f"{pair['win']} wins / {pair['tie']} ties / {pair['loss']} losses; "
        f"mean reward {base_reward:.3f} → {tuned_reward:.3f}",
        "minutes": (time.perf_counter() - started) / 60,
        "report": str(report.directory / "report.html"),
        "probe": report.report.get("probe", {}).get("change") if report.report.get("probe") else None,
    }


def run_rl(workspace: Path, scale: float) -> dict[str, Any]:
    from tunesmith.train.run import train

    steps = max(6, int(40 * scale))
    cfg = config(
        workspace,
        f"data.path={GSM8K}",
        "data.columns={prompt: question, completion: answer}",
        f"data.system_prompt={GSM8K_SYSTEM}",
        f"data.sample={max(40, int(400 * scale))}",
        "data.split.val=0",
        "data.split.test=0",
        "train.objective=rl",
        'train.rl.rewards=[{"checker": "numeric_match"}, {"checker": "answer_format", "weight": 0.5}]',
        "train.rl.num_generations=8",
        "train.rl.max_completion_length=128",
        "train.rl.temperature=0.7",
        "train.rl.beta=0.02",
        "train.batch_size=8",
        f"train.max_steps={steps}",
        "train.lr=5e-4",
        "train.save_strategy=no",
        "train.forgetting.probe=false",
    )
    started = time.perf_counter()
    outcome = train(cfg)
    m = outcome.version.metrics
    audit = json.loads((outcome.run_dir / "rl_audit.json").read_text())  # what every RL run ends with
    parts = {key: audit[key] for key in ("reward/numeric_match", "reward/answer_format") if key in audit}
    return {
        "run": f"GRPO (LoRA) of SmolLM2-135M on gsm8k, {steps} steps x 1 prompt x 8 answers",
        "version": outcome.version.name,
        "result": f"mean reward {m['reward_first_quarter']:.3f} (first quarter) → "
        f"{m['reward_last_quarter']:.3f} (last quarter); "
        + "; ".join(f"{k.split('/')[1]} {v['first']:.3f} → {v['last']:.3f}" for k, v in parts.items())
        + f"; KL {m.get('kl_last', float('nan')):.4f}, clip {m.get('clip_fraction_last', float('nan')):.3f}"
        + f"; audit: {audit['verdict']} ({audit['rule']})",
        "minutes": (time.perf_counter() - started) / 60,
        "plot": str(outcome.run_dir / "rewards.png"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="reward,dpo,rl")
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--workspace", type=Path, default=None)
    parser.add_argument("--reward-model", default=None, help="for dpo alone: a reward version in --workspace")
    args = parser.parse_args()
    wanted = args.only.split(",")
    needed = ([HH] if {"reward", "dpo"} & set(wanted) else []) + ([GSM8K] if "rl" in wanted else [])
    missing = [str(p) for p in needed if not p.exists()]
    if missing:
        sys.exit(f"needs {', '.join(missing)} (../shared/datasets)")
    if "dpo" in wanted and "reward" not in wanted and args.reward_model is None:
        sys.exit("dpo is judged by a reward model: run `reward` with it, or name one with --reward-model")
    workspace = args.workspace or Path(tempfile.mkdtemp(prefix="tunesmith-prefs-")) / "ws"
    out = workspace.parent / "results.json"
    results: list[dict[str, Any]] = []
    reward_version = args.reward_model
    for part in ("rl", "reward", "dpo"):  # the quickest first
        if part not in wanted:
            continue
        if part == "rl":
            results.append(run_rl(workspace, args.scale))
        elif part == "reward":
            results.append(run_reward(workspace, args.scale))
            reward_version = results[-1]["version"]
        else:
            assert reward_version is not None
            results.append(run_dpo(workspace, args.scale, reward_version))
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2, default=str), encoding="utf-8")
        console.print(f"{results[-1]['run']}: {results[-1]['result']}", highlight=False)
    table = Table(title=f"Preference learning and RL on real data (CPU, scale {args.scale})")
    table.add_column("run")
    table.add_column("result")
    table.add_column("minutes", justify="right")
    for row in results:
        table.add_row(row["run"], row["result"], f"{row['minutes']:.1f}")
    console.print(table)
    console.print(f"results: {out}")


if __name__ == "__main__":
    main()
