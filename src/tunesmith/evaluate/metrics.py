"""Task metrics: a small registry so users can add their own.

A metric takes the answer, the reference answer and the item's record, and returns a score in
[0, 1] for that item; a report is the mean over items.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from typing import Any

MetricFn = Callable[[str, str, dict[str, Any]], float]

_METRICS: dict[str, MetricFn] = {}


def register_metric(name: str) -> Callable[[MetricFn], MetricFn]:
    """Register `fn` as metric `name`.

    Raises:
        ValueError: when the name is taken, so a duplicate fails at import time.
    """

    def decorator(fn: MetricFn) -> MetricFn:
        if name in _METRICS:
            raise ValueError(f"metric {name!r} is already registered (by {_METRICS[name].__module__})")
        _METRICS[name] = fn
        return fn

    return decorator


def get_metric(name: str) -> MetricFn:
    """The metric registered as `name`.

    Raises:
        KeyError: naming the metrics that exist.
    """
    if name not in _METRICS:
        raise KeyError(f"unknown metric {name!r}; known: {', '.join(sorted(_METRICS))}")
    return _METRICS[name]


def metric_names() -> list[str]:
    return sorted(_METRICS)


def normalise(text: str) -> str:
    """Lower-case, NFKC, no punctuation at the edges of words, single spaces."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = re.sub(r"[^\w\s€$£%+@.:,/-]", " ", text)
    return " ".join(word.strip(".,:") for word in text.split())


@register_metric("exact_match")
def exact_match(answer: str, reference: str, item: dict[str, Any]) -> float:
    """1 when the normalised answer equals the normalised reference."""
    return float(normalise(answer) == normalise(reference))


@register_metric("key_fact")
def key_fact(answer: str, reference: str, item: dict[str, Any]) -> float:
    """Share of the item's `key_facts` that the answer states (all of them: 1.0).

    Items without `key_facts` fall back to the reference: 1 when it appears in the answer.
    """
    facts = item.get("key_facts") or [reference]
    said = normalise(answer)
    return sum(normalise(fact) in said for fact in facts) / len(facts)


@register_metric("rouge_l")
def rouge_l(answer: str, reference: str, item: dict[str, Any]) -> float:
    """ROUGE-L F1 between answer and reference (`rouge-score`, with stemming)."""
    return float(_rouge_scorer().score(reference, answer)["rougeL"].fmeasure)


_SCORERS: dict[str, Any] = {}


def _rouge_scorer() -> Any:
    if "rougeL" not in _SCORERS:
        from rouge_score import rouge_scorer

        _SCORERS["rougeL"] = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return _SCORERS["rougeL"]


def score_items(
    answers: list[str], items: list[dict[str, Any]], metrics: list[str]
) -> list[dict[str, float]]:
    """Score each answer against its item's reference (the last assistant message)."""
    fns = {name: get_metric(name) for name in metrics}
    scores = []
    for answer, item in zip(answers, items, strict=True):
        reference = item["messages"][-1]["content"]
        scores.append({name: fn(answer, reference, item) for name, fn in fns.items()})
    return scores


def mean_scores(scores: list[dict[str, float]]) -> dict[str, float]:
    """The mean of each metric over items."""
    if not scores:
        return {}
    return {name: sum(s[name] for s in scores) / len(scores) for name in scores[0]}
