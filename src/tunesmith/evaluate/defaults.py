"""The metrics an eval reports when `eval.metrics` is unset: chosen from what the task's items are.

A classifier, a tagger and a language model each have one standard set (`DEFAULT_METRICS`). For
generation the set follows the references:

- tool use (the items offer tools, `tunesmith.toolcalls`): the calls' AST check first, then the
  function names, exact arguments and valid JSON;
- translation (the answers are in another language than the prompts, by `py3langid`): chrF and
  BLEU first; exact match and key facts say nothing about a translation;
- items that list `key_facts`: the key-fact score first;
- answers that end in a final answer (`#### 42`, "The answer is 42": worked maths such as gsm8k):
  the final number's match first;
- short answers (a median of at most `SHORT_ANSWER_WORDS` words): exact match first;
- summaries (answers that condense long prompts): ROUGE first;
- other open answers: ROUGE-L first.

The first metric is the one a comparison leads with. The choice and its reason are printed beside
the eval, and `eval.metrics` overrides it.
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tunesmith.answers import has_final_answer
from tunesmith.evaluate.metrics import DEFAULT_METRICS, TaskKind

SAMPLE = 200  # items looked at
SHORT_ANSWER_WORDS = 5
# summaries: prompts of at least this many words (median), answers at most this share of them
SUMMARY_PROMPT_WORDS = 80
SUMMARY_RATIO = 0.4
# translation: a text needs this many words and this probability for its language to count, and
# this share of the items whose languages both count must differ
LANGUAGE_MIN_WORDS = 3
LANGUAGE_MIN_PROBABILITY = 0.9
TRANSLATION_SHARE = 0.6
MIN_IDENTIFIED = 5

GENERATION_SETS: dict[str, list[str]] = {
    "tool calls": ["tool_ast", "tool_name", "tool_args", "tool_abstain", "tool_json", "rouge_l"],
    "translation": ["chrf", "bleu", "rouge_l", "exact_match"],
    "key facts": ["key_fact", "exact_match", "rouge_l", "rouge_1", "rouge_2", "bleu", "chrf"],
    "final answers": ["numeric_match", "exact_match", "rouge_l", "chrf"],
    "short answers": ["exact_match", "key_fact", "chrf", "rouge_l"],
    "summaries": ["rouge_1", "rouge_2", "rouge_l", "bleu", "chrf"],
    "open answers": ["rouge_l", "rouge_1", "rouge_2", "chrf", "bleu", "exact_match", "key_fact"],
}


@dataclass(frozen=True)
class MetricChoice:
    """The metrics for an eval's items, and why (None: the task's one standard set)."""

    metrics: list[str]
    reason: str | None = None

    def describe(self) -> str:
        return f"metrics {', '.join(self.metrics)}: {self.reason} (eval.metrics overrides)"


def default_metrics(kind: TaskKind | str, items: list[dict[str, Any]]) -> MetricChoice:
    """The metrics to report for `items` of task `kind` when `eval.metrics` names none."""
    if kind != "generation" or not items:
        return MetricChoice(list(DEFAULT_METRICS.get(kind, [])))
    sample = items[:: max(1, len(items) // SAMPLE)][:SAMPLE]
    pairs = [(_prompt(item), _reference(item)) for item in sample]
    for name, rule in RULES:
        reason = rule(sample, pairs)
        if reason is not None:
            return MetricChoice(GENERATION_SETS[name], reason)
    answer_words = statistics.median(len(reference.split()) for _, reference in pairs)
    return MetricChoice(GENERATION_SETS["open answers"], f"open answers (a median of {answer_words:g} words)")


Pairs = list[tuple[str, str]]  # (prompt, reference) per sampled item


def _tool_calls(sample: list[dict[str, Any]], pairs: Pairs) -> str | None:
    offered = sum(bool(item.get("tools")) for item in sample)
    if offered * 2 < len(sample):
        return None
    calling = sum(bool(item["messages"][-1].get("tool_calls")) for item in sample)
    return f"tool use: {offered} of {len(sample)} items offer tools, {calling} expect a call"


def _key_facts(sample: list[dict[str, Any]], pairs: Pairs) -> str | None:
    with_facts = sum(bool(item.get("key_facts")) for item in sample)
    return f"{with_facts} of {len(sample)} items list key facts" if with_facts * 2 >= len(sample) else None


def _final_answers(sample: list[dict[str, Any]], pairs: Pairs) -> str | None:
    finals = sum(has_final_answer(reference) for _, reference in pairs)
    if finals * 2 < len(pairs):
        return None
    return f"{finals} of {len(pairs)} answers end in a final answer (#### or 'the answer is')"


def _short_answers(sample: list[dict[str, Any]], pairs: Pairs) -> str | None:
    answer_words = statistics.median(len(reference.split()) for _, reference in pairs)
    if answer_words > SHORT_ANSWER_WORDS:
        return None
    return f"short answers (a median of {answer_words:g} words)"


def _summaries(sample: list[dict[str, Any]], pairs: Pairs) -> str | None:
    answer_words = statistics.median(len(reference.split()) for _, reference in pairs)
    prompt_words = statistics.median(len(prompt.split()) for prompt, _ in pairs)
    if prompt_words < SUMMARY_PROMPT_WORDS or answer_words > SUMMARY_RATIO * prompt_words:
        return None
    return f"summaries (answers of {answer_words:g} words from prompts of {prompt_words:g}, medians)"


def _translation(sample: list[dict[str, Any]], pairs: Pairs) -> str | None:
    """Why the items look like translation (their answers in another language), or None."""
    identified = []
    for prompt, reference in pairs:
        source, target = _language(prompt), _language(reference)
        if source is not None and target is not None:
            identified.append((source, target))
    if len(identified) < MIN_IDENTIFIED:
        return None
    differ = [(s, t) for s, t in identified if s != t]
    if len(differ) < TRANSLATION_SHARE * len(identified):
        return None
    (source, target), _ = Counter(differ).most_common(1)[0]
    return (
        f"translation: the answers are in another language than the prompts in {len(differ)} of "
        f"{len(identified)} items (mostly {source} -> {target})"
    )


_IDENTIFIER: dict[str, Any] = {}


def _language(text: str) -> str | None:
    """The text's language (ISO 639-1), when it is long enough and the identifier is sure."""
    if len(text.split()) < LANGUAGE_MIN_WORDS:
        return None
    if "model" not in _IDENTIFIER:
        from py3langid.langid import MODEL_FILE, LanguageIdentifier

        _IDENTIFIER["model"] = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
    language, probability = _IDENTIFIER["model"].classify(text)
    return str(language) if probability >= LANGUAGE_MIN_PROBABILITY else None


def _prompt(item: dict[str, Any]) -> str:
    users = [m["content"] for m in item.get("messages", []) if m.get("role") == "user"]
    return str(users[-1]) if users else ""


def _reference(item: dict[str, Any]) -> str:
    messages = item.get("messages") or [{"content": ""}]
    return str(messages[-1].get("content") or "")


# tried in this order; the first that holds picks the set (else: open answers)
RULES: list[tuple[str, Callable[[list[dict[str, Any]], Pairs], str | None]]] = [
    ("tool calls", _tool_calls),
    ("translation", _translation),
    ("key facts", _key_facts),
    ("final answers", _final_answers),
    ("short answers", _short_answers),
    ("summaries", _summaries),
]
