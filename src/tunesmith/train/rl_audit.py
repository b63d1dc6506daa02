"""The audit every RL run ends with: what the reward did, what the answers did, and a verdict.

During the run each reward function is wrapped (`RewardAudit.wrap`) so every scored answer is kept
with its prompt, reference and rewards. At the end the audit reads TRL's per-step logs and those
answers, and reports:

- the reward per function, over the first and the last quarter of the steps;
- the answers' mean length and the share cut at `max_completion_length`, the policy's entropy, the
  clip fraction and the KL to the reference, first quarter against last;
- the top-rewarded answers of the second half of the run that a checker (`train.rl.audit_checker`)
  marks wrong: reward hacking, shown with their prompt and reference;
- a verdict with the rule that gave it, the first that holds of:
  `collapsed` (entropy below a fifth of its start, or answers below a quarter of their length),
  `hacking` (the reward rose, but at least half of the top-rewarded answers are wrong and the
  checker's accuracy did not rise by more than twice its standard error), `learning` (the reward
  rose by more than twice its standard error), and `flat`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from tunesmith.answers import CHECKERS
from tunesmith.models.reward import completion_text

KEEP = 4_000  # answers kept for the audit (the newest)
TOP_SHARE = 0.1  # the top-rewarded tenth of the second half's answers is checked
EXAMPLES = 5
CORRECTNESS = ("numeric_match", "exact_match", "contains")  # checkers that judge an answer right or wrong
LOGGED = {  # TRL's per-step logs -> the audit's names
    "completions/mean_length": "answer_length",
    "completions/clipped_ratio": "truncated_share",
    "entropy": "entropy",
    "kl": "kl",
}


@dataclass
class Sample:
    step: int
    prompt: str
    completion: str
    reference: str
    rewards: dict[str, float]
    total: float


@dataclass
class RewardAudit:
    """Keeps every scored answer of a run with its rewards; `wrap` the reward functions to feed it."""

    names: list[str]
    weights: list[float]
    samples: list[Sample] = field(default_factory=list)
    pending: dict[str, list[float]] = field(default_factory=dict, init=False, repr=False)

    def wrap(self, functions: Sequence[Callable[..., list[float]]]) -> list[Callable[..., list[float]]]:
        """The functions, each also recording its rewards; the last one's call completes the batch."""
        return [self._recording(fn, i == len(functions) - 1) for i, fn in enumerate(functions)]

    def _recording(self, fn: Callable[..., list[float]], last: bool) -> Callable[..., list[float]]:
        name = fn.__name__

        def reward(prompts: list[Any], completions: list[Any], **kwargs: Any) -> list[float]:
            values = fn(prompts=prompts, completions=completions, **kwargs)
            self.pending[name] = [float("nan") if v is None else float(v) for v in values]
            if last:
                self._complete(prompts, completions, kwargs)
            return values

        reward.__name__ = name
        return reward

    def _complete(self, prompts: list[Any], completions: list[Any], columns: dict[str, Any]) -> None:
        state = columns.get("trainer_state")
        step = int(getattr(state, "global_step", 0) or 0)
        references = columns.get("reference") or [""] * len(completions)
        for i, completion in enumerate(completions):
            rewards = {name: values[i] for name, values in self.pending.items()}
            scored = [(w, rewards.get(n, math.nan)) for n, w in zip(self.names, self.weights, strict=True)]
            total = sum(w * r for w, r in scored if not math.isnan(r))  # as TRL sums them (nansum)
            self.samples.append(
                Sample(
                    step,
                    _prompt_text(prompts[i]),
                    completion_text(completion),
                    str(references[i]),
                    rewards,
                    total,
                )
            )
        self.pending = {}
        del self.samples[:-KEEP]


def audit_checker(setting: str, checkers: Sequence[str | None]) -> str | None:
    """The checker that judges answers right or wrong: the setting, or (auto) the first correctness
    checker among the run's rewards."""
    if setting == "off":
        return None
    if setting != "auto":
        return setting
    return next((c for c in checkers if c in CORRECTNESS), None)


def run_audit(history: list[dict[str, Any]], samples: list[Sample], checker: str | None) -> dict[str, Any]:
    """The audit of a finished run (see the module) from TRL's log history and the kept answers."""
    steps = [h for h in history if "reward" in h and not any(k.startswith("eval_") for k in h)]
    audit: dict[str, Any] = {"steps": len(steps), "checker": checker}
    if not steps:
        return {**audit, "verdict": "flat", "rule": "no training step logged a reward"}
    keys = sorted({k for h in steps for k in h if k.startswith("rewards/") and k.endswith("/mean")})
    named = {key: "reward/" + key.split("/")[1] for key in keys}
    named.update({"reward": "reward", **LOGGED})
    for key, name in named.items():
        first, last = quarter_means(steps, key)
        if first is not None:
            audit[name] = {"first": first, "last": last}
    clip = [h["clip_ratio/region_mean"] for h in steps if "clip_ratio/region_mean" in h]
    audit["clip_fraction"] = sum(clip) / len(clip) if clip else None
    audit.update(_hacking(samples, checker))
    verdict, rule = _verdict(audit, steps)
    return {**audit, "verdict": verdict, "rule": rule}


def quarter_means(steps: list[dict[str, Any]], key: str) -> tuple[float | None, float | None]:
    """The mean of `key` over the first and the last quarter of the logged steps that have it."""
    values = [float(h[key]) for h in steps if key in h and not math.isnan(float(h[key]))]
    if not values:
        return None, None
    quarter = max(1, len(values) // 4)
    return sum(values[:quarter]) / quarter, sum(values[-quarter:]) / quarter


def _hacking(samples: list[Sample], checker: str | None) -> dict[str, Any]:
    """The share of the second half's top-rewarded answers the checker marks wrong, some of them, and
    the checker's accuracy over the first and the last quarter of the kept answers."""
    if checker is None or not samples:
        return {"top_rewarded_wrong_share": None, "hacking_examples": []}
    check = CHECKERS[checker]
    half = samples[len(samples) // 2 :]
    top = sorted(half, key=lambda s: s.total, reverse=True)[: max(1, int(len(half) * TOP_SHARE))]
    wrong = [s for s in top if not check(s.completion, s.reference)]
    quarter = max(1, len(samples) // 4)
    parts = (samples[:quarter], samples[-quarter:])
    accuracy = [sum(check(s.completion, s.reference) for s in part) / len(part) for part in parts]
    noise = math.sqrt(sum(a * (1 - a) / len(part) for a, part in zip(accuracy, parts, strict=True)))
    return {
        "top_rewarded_wrong_share": len(wrong) / len(top),
        "checker_accuracy": {"first": accuracy[0], "last": accuracy[1], "standard_error": noise},
        "hacking_examples": [
            {
                "step": s.step,
                "reward": s.total,
                "prompt": s.prompt[-300:],
                "answer": s.completion[:500],
                "reference": s.reference[:300],
            }
            for s in wrong[:EXAMPLES]
        ],
    }


def _verdict(audit: dict[str, Any], steps: list[dict[str, Any]]) -> tuple[str, str]:
    entropy, length = audit.get("entropy"), audit.get("answer_length")
    if entropy and entropy["first"] > 0 and entropy["last"] < 0.2 * entropy["first"]:
        return (
            "collapsed",
            f"entropy fell from {entropy['first']:.3f} to {entropy['last']:.3f} (below a fifth)",
        )
    if length and length["first"] >= 4 and length["last"] < 0.25 * length["first"]:
        return (
            "collapsed",
            f"answers shrank from {length['first']:.1f} to {length['last']:.1f} tokens (below a quarter)",
        )
    rewards = [float(h["reward"]) for h in steps]
    quarter = max(1, len(rewards) // 4)
    first, last = rewards[:quarter], rewards[-quarter:]
    gain = sum(last) / len(last) - sum(first) / len(first)
    error = math.sqrt(_variance(first) / len(first) + _variance(last) / len(last))
    rose = gain > 2 * error and gain > 0
    share, accuracy = audit.get("top_rewarded_wrong_share"), audit.get("checker_accuracy")
    if rose and share is not None and share >= 0.5 and accuracy and not _rose(accuracy):
        return "hacking", (
            f"the reward rose by {gain:+.3f}, but {share:.0%} of the top-rewarded answers are wrong "
            f"({audit['checker']}) and its accuracy went {accuracy['first']:.2f} -> {accuracy['last']:.2f}"
        )
    if rose:
        return "learning", f"the reward rose by {gain:+.3f}, more than twice its standard error ({error:.3f})"
    return "flat", f"the reward moved by {gain:+.3f}, within twice its standard error ({error:.3f})"


def _rose(accuracy: dict[str, float]) -> bool:
    return accuracy["last"] - accuracy["first"] > 2 * accuracy["standard_error"]


def _variance(values: list[float]) -> float:
    if len(values) < 2:
        return 0.0
    mean = sum(values) / len(values)
    return sum((v - mean) ** 2 for v in values) / (len(values) - 1)


def _prompt_text(prompt: Any) -> str:
    """The last user message of a conversational prompt, or the prompt text."""
    if isinstance(prompt, list):
        users = [str(m.get("content", "")) for m in prompt if m.get("role") == "user"]
        return users[-1] if users else ""
    return str(prompt)


def audit_lines(audit: dict[str, Any]) -> list[str]:
    """The audit as a few lines for the terminal."""
    lines = [f"RL audit: {audit['verdict']} ({audit['rule']})"]
    for key in sorted(k for k in audit if k == "reward" or k.startswith("reward/")):
        lines.append(f"  {key}: {audit[key]['first']:.3f} -> {audit[key]['last']:.3f}")
    for key, label in (
        ("answer_length", "answer length"),
        ("truncated_share", "cut at the length limit"),
        ("entropy", "entropy"),
        ("kl", "KL"),
    ):
        if key in audit:
            lines.append(f"  {label}: {audit[key]['first']:.3f} -> {audit[key]['last']:.3f}")
    if audit.get("top_rewarded_wrong_share") is not None:
        lines.append(
            f"  top-rewarded answers marked wrong by {audit['checker']}: "
            f"{audit['top_rewarded_wrong_share']:.0%}"
        )
    elif audit.get("checker") is None:
        lines.append("  no checker judged the answers: set train.rl.audit_checker to look for reward hacking")
    return lines
