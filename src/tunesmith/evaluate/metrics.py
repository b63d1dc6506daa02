"""Task metrics: a small registry, one kind of task per metric, computed with the field's libraries.

Every metric is two functions. `stats` turns each item's answer and reference into a row of
numbers that add up across items (a score and a count; n-gram matches; true and false positives
per class; summed negative log-likelihood and token count), and `score` turns the column sums
into the metric. Adding rows up before scoring is what makes corpus metrics (BLEU, chrF, macro-F1,
entity F1, perplexity) exact, and what lets bootstrap resampling and paired tests run on a matrix
product instead of recomputing each metric a thousand times.

Point estimates come from the libraries themselves (`sacrebleu`, `rouge-score`, scikit-learn,
`seqeval`); the tests check that `score(stats.sum(0))` agrees with them.

Users add a per-item metric with `@register_metric("name")` on `fn(answer, reference, item) ->
float`, a corpus metric with `register_corpus_metric`, or from another package through the
`tunesmith.metrics` entry point group (an item function or a `Metric`).
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Literal

import numpy as np

from tunesmith import answers
from tunesmith.evaluate import tool_metrics

TaskKind = Literal["generation", "classification", "tagging", "lm"]
ItemFn = Callable[[str, str, dict[str, Any]], float]
StatsFn = Callable[[Sequence[Any], Sequence[Any], Sequence[dict[str, Any]], "Context"], np.ndarray]
ScoreFn = Callable[[np.ndarray], float]

ENTRY_POINT_GROUP = "tunesmith.metrics"

DEFAULT_METRICS: dict[str, list[str]] = {
    "generation": ["exact_match", "key_fact", "rouge_1", "rouge_2", "rouge_l", "bleu", "chrf"],
    "classification": ["accuracy", "macro_f1", "micro_f1", "macro_precision", "macro_recall"],
    "tagging": ["entity_f1", "entity_precision", "entity_recall"],
    "lm": ["perplexity"],
}


@dataclass(frozen=True)
class Context:
    """What a metric may need beyond answers and references: the label set of a classifier."""

    labels: tuple[str, ...] = ()


@dataclass(frozen=True)
class Metric:
    """A metric of one task kind: per-item statistics that add up, and a score of their sums."""

    name: str
    kind: TaskKind
    stats: StatsFn
    score: ScoreFn
    higher_is_better: bool = True
    description: str = ""
    scale: float = 1.0  # the score's full range: 1 for shares, 100 for BLEU and chrF
    signature: Callable[[], str] | None = field(default=None, compare=False)

    def compute(
        self,
        answers: Sequence[Any],
        references: Sequence[Any],
        items: Sequence[dict[str, Any]],
        context: Context | None = None,
    ) -> tuple[float, np.ndarray]:
        """(the metric over all items, the per-item statistics behind it)."""
        stats = np.asarray(self.stats(answers, references, items, context or Context()), dtype=np.float64)
        return self.score(stats.sum(axis=0)), stats


_METRICS: dict[str, Metric] = {}
_ENTRY_POINTS = {"loaded": False}


def register(metric: Metric) -> Metric:
    """Add `metric` to the registry.

    Raises:
        ValueError: when the name is taken, so a duplicate fails at import time.
    """
    if metric.name in _METRICS:
        raise ValueError(
            f"metric {metric.name!r} is already registered ({_METRICS[metric.name].description})"
        )
    _METRICS[metric.name] = metric
    return metric


def register_metric(
    name: str, *, kind: TaskKind = "generation", higher_is_better: bool = True
) -> Callable[[ItemFn], ItemFn]:
    """Register `fn(answer, reference, item) -> float` as a per-item metric; the report shows the mean."""

    def decorator(fn: ItemFn) -> ItemFn:
        register(item_metric(name, fn, kind=kind, higher_is_better=higher_is_better))
        return fn

    return decorator


def register_corpus_metric(
    name: str,
    stats: StatsFn,
    score: ScoreFn,
    *,
    kind: TaskKind = "generation",
    higher_is_better: bool = True,
    description: str = "",
) -> Metric:
    """Register a metric computed from summed per-item statistics (see the module docstring)."""
    return register(Metric(name, kind, stats, score, higher_is_better, description))


def item_metric(
    name: str, fn: ItemFn, *, kind: TaskKind = "generation", higher_is_better: bool = True
) -> Metric:
    """A Metric whose statistics are (item score, 1): its score is the mean over items."""

    def stats(answers: Sequence[Any], references: Sequence[Any], items: Sequence[dict[str, Any]], _: Context):
        return np.array(
            [[fn(a, r, i), 1.0] for a, r, i in zip(answers, references, items, strict=True)]
        ).reshape(-1, 2)

    description = (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else ""
    return Metric(name, kind, stats, _mean, higher_is_better, description)


def _mean(sums: np.ndarray) -> float:
    return float(sums[0] / sums[1]) if sums[1] else 0.0


def _mean_rows(sums: np.ndarray) -> np.ndarray:
    """`_mean` of every row of a (resamples x 2) matrix at once."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(sums[:, 1] > 0, sums[:, 0] / np.where(sums[:, 1] > 0, sums[:, 1], 1), 0.0)


ROW_SCORERS: dict[Callable[..., float], Callable[[np.ndarray], np.ndarray]] = {_mean: _mean_rows}


def get_metric(name: str) -> Metric:
    """The metric registered as `name`.

    Raises:
        KeyError: naming the metrics that exist.
    """
    _load_entry_points()
    if name not in _METRICS:
        raise KeyError(f"unknown metric {name!r}; known: {', '.join(sorted(_METRICS))}")
    return _METRICS[name]


def metric_names(kind: TaskKind | None = None) -> list[str]:
    _load_entry_points()
    return sorted(name for name, m in _METRICS.items() if kind is None or m.kind == kind)


def _load_entry_points() -> None:
    if _ENTRY_POINTS["loaded"]:
        return
    _ENTRY_POINTS["loaded"] = True
    for entry in metadata.entry_points(group=ENTRY_POINT_GROUP):
        obj = entry.load()
        if isinstance(obj, Metric):
            register(obj if obj.name == entry.name else Metric(**{**obj.__dict__, "name": entry.name}))
        elif callable(obj):
            register(item_metric(entry.name, obj))
        else:
            raise TypeError(
                f"entry point {entry.name!r} ({entry.value}) in {ENTRY_POINT_GROUP!r} must be a "
                f"Metric or a function (answer, reference, item) -> float, not {type(obj).__name__}"
            )


# -- generation ---------------------------------------------------------------------------------


def normalise(text: str) -> str:
    """Lower-case, NFKC, no punctuation at the edges of words, single spaces."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = re.sub(r"[^\w\s€$£%+@.:,/-]", " ", text)
    return " ".join(word.strip(".,:") for word in text.split())


@register_metric("exact_match")
def exact_match(answer: str, reference: str, item: dict[str, Any]) -> float:
    """1 when the normalised answer equals the normalised reference."""
    return float(normalise(answer) == normalise(reference))


@register_metric("numeric_match")
def numeric_match(answer: str, reference: str, item: dict[str, Any]) -> float:
    """1 when the answer's final number (after `####` or "the answer is", else its last number)
    equals the reference's: gsm8k-style maths, scored as the RL checker of the same name scores it."""
    return answers.numeric_match(answer, reference)


@register_metric("key_fact")
def key_fact(answer: str, reference: str, item: dict[str, Any]) -> float:
    """Share of the item's `key_facts` that the answer states (items without them: the reference)."""
    facts = item.get("key_facts") or [reference]
    said = normalise(answer)
    return sum(normalise(fact) in said for fact in facts) / len(facts)


_ROUGE: dict[str, Any] = {}


def _rouge(kind: str) -> ItemFn:
    def fn(answer: str, reference: str, item: dict[str, Any]) -> float:
        if "scorer" not in _ROUGE:
            from rouge_score import rouge_scorer

            _ROUGE["scorer"] = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
        return float(_ROUGE["scorer"].score(reference, answer)[kind].fmeasure)

    fn.__doc__ = f"{kind} F1 between answer and reference (`rouge-score`, with stemming), mean over items."
    return fn


for _name, _kind in (("rouge_1", "rouge1"), ("rouge_2", "rouge2"), ("rouge_l", "rougeL")):
    register(item_metric(_name, _rouge(_kind)))


def _sacrebleu_metric(name: str) -> Metric:
    """BLEU or chrF through sacrebleu's own sufficient statistics (as its paired tests use them)."""
    cache: dict[str, Any] = {}

    def scorer() -> Any:
        if "metric" not in cache:
            from sacrebleu.metrics import BLEU, CHRF

            cache["metric"] = BLEU() if name == "bleu" else CHRF()
        return cache["metric"]

    def stats(answers: Sequence[Any], references: Sequence[Any], items: Sequence[Any], _: Context):
        rows = scorer()._extract_corpus_statistics(list(answers), [list(references)])
        return np.asarray(rows, dtype=np.float64).reshape(len(answers), -1)

    def score(sums: np.ndarray) -> float:
        as_ints = [round(float(x)) for x in sums]
        return float(scorer()._compute_score_from_stats(as_ints).score)

    return Metric(
        name,
        "generation",
        stats,
        score,
        description=f"corpus {'BLEU' if name == 'bleu' else 'chrF'} (sacrebleu, 0-100)",
        scale=100.0,
        signature=lambda: str(scorer().get_signature()),
    )


register(_sacrebleu_metric("bleu"))
register(_sacrebleu_metric("chrf"))


# -- classification -----------------------------------------------------------------------------


def _confusion_stats(
    answers: Sequence[Any], references: Sequence[Any], _: Any, context: Context
) -> np.ndarray:
    """Per item: one-hot true positive, false positive and false negative per label, then a 1."""
    labels = list(context.labels) or sorted({*map(str, references), *map(str, answers)})
    index = {label: i for i, label in enumerate(labels)}
    width = len(labels)
    out = np.zeros((len(answers), 3 * width + 1))
    out[:, -1] = 1
    for row, (guess, truth) in enumerate(zip(answers, references, strict=True)):
        g, t = index.get(str(guess)), index.get(str(truth))
        if g == t and g is not None:
            out[row, g] = 1
            continue
        if g is not None:
            out[row, width + g] = 1
        if t is not None:
            out[row, 2 * width + t] = 1
    return out


def _per_class(sums: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    tp, fp, fn = np.split(sums[:-1], 3)
    present = (tp + fp + fn) > 0  # scikit-learn averages over labels seen in the truth or the guesses
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(tp + fp > 0, tp / (tp + fp), 0.0)
        recall = np.where(tp + fn > 0, tp / (tp + fn), 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    return precision[present], recall[present], f1[present], tp


def _accuracy(sums: np.ndarray) -> float:
    return float(np.split(sums[:-1], 3)[0].sum() / sums[-1]) if sums[-1] else 0.0


def _macro(which: int) -> ScoreFn:
    def score(sums: np.ndarray) -> float:
        values = _per_class(sums)[which]
        return float(values.mean()) if len(values) else 0.0

    return score


def _micro_f1(sums: np.ndarray) -> float:
    tp, fp, fn = (part.sum() for part in np.split(sums[:-1], 3))
    return float(2 * tp / (2 * tp + fp + fn)) if tp + fp + fn else 0.0


for _name, _score, _text in (
    ("accuracy", _accuracy, "share of items whose predicted label is right (scikit-learn accuracy_score)"),
    ("macro_precision", _macro(0), "precision per label, averaged over labels"),
    ("macro_recall", _macro(1), "recall per label, averaged over labels"),
    ("macro_f1", _macro(2), "F1 per label, averaged over labels (scikit-learn average='macro')"),
    ("micro_f1", _micro_f1, "F1 over all decisions (scikit-learn average='micro')"),
):
    register(Metric(_name, "classification", _confusion_stats, _score, description=_text))


# -- tagging ------------------------------------------------------------------------------------


def _entity_stats(answers: Sequence[Any], references: Sequence[Any], _: Any, __: Context) -> np.ndarray:
    """Per sentence: (correct entities, predicted entities, true entities), seqeval's definition."""
    from seqeval.metrics.sequence_labeling import get_entities

    out = np.zeros((len(answers), 3))
    for row, (guess, truth) in enumerate(zip(answers, references, strict=True)):
        predicted, true = set(get_entities(list(guess))), set(get_entities(list(truth)))
        out[row] = (len(predicted & true), len(predicted), len(true))
    return out


def _entity_precision(sums: np.ndarray) -> float:
    return float(sums[0] / sums[1]) if sums[1] else 0.0


def _entity_recall(sums: np.ndarray) -> float:
    return float(sums[0] / sums[2]) if sums[2] else 0.0


def _entity_f1(sums: np.ndarray) -> float:
    return float(2 * sums[0] / (sums[1] + sums[2])) if sums[1] + sums[2] else 0.0


for _name, _score in (
    ("entity_precision", _entity_precision),
    ("entity_recall", _entity_recall),
    ("entity_f1", _entity_f1),
):
    register(
        Metric(_name, "tagging", _entity_stats, _score, description=f"{_name.replace('_', ' ')} (seqeval)")
    )


# -- language modelling -------------------------------------------------------------------------


def _nll_stats(answers: Sequence[Any], references: Sequence[Any], _: Any, __: Context) -> np.ndarray:
    """Each 'answer' is (summed negative log-likelihood, token count) of the reference text."""
    return np.asarray([[float(nll), float(count)] for nll, count in answers]).reshape(-1, 2)


def _perplexity(sums: np.ndarray) -> float:
    return float(math.exp(sums[0] / sums[1])) if sums[1] else float("nan")


register(
    Metric(
        "perplexity",
        "lm",
        _nll_stats,
        _perplexity,
        higher_is_better=False,
        description="exp of the mean negative log-likelihood per token of the held-out text",
    )
)


# -- tool calls (`tunesmith.evaluate.tool_metrics`) -----------------------------------------------

register(item_metric("tool_name", tool_metrics.tool_name))
register(item_metric("tool_args", tool_metrics.tool_args))
for _name, _stats, _text in (
    (
        "tool_ast",
        tool_metrics.tool_ast_stats,
        "share of the items expecting a call whose calls would run (BFCL-style AST check)",
    ),
    ("tool_abstain", tool_metrics.tool_abstain_stats, "share of the items expecting no call that make none"),
    (
        "tool_json",
        tool_metrics.tool_json_stats,
        "share of attempted tool calls written as valid JSON with a name and arguments",
    ),
):
    register(Metric(_name, "generation", _stats, tool_metrics.share, description=_text))

# -- judged ------------------------------------------------------------------------------------


def _scored_elsewhere(name: str, where: str) -> Callable[..., np.ndarray]:
    """The per-item function of a metric whose scores another scorer supplies (`where` says which)."""

    def refuse(*_: Any) -> np.ndarray:
        raise ValueError(f"{name} comes from {where}")

    return refuse


register(
    Metric(
        "judge_score",
        "generation",
        _scored_elsewhere("judge_score", "the LLM judge: enable eval.judge (or pass --judge)"),
        _mean,
        description="LLM judge G-Eval score 1-5 (probability-weighted), mean over items",
        scale=5.0,
    )
)
register(
    Metric(
        "reward",
        "generation",
        _scored_elsewhere("reward", "a reward model: set eval.reward_model (or pass --reward-model)"),
        _mean,
        description="score of a trained reward model (eval.reward_model), mean over items",
    )
)
