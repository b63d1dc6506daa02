"""Answer checkers: pure text comparisons of an answer with its reference.

RL rewards (`train.rewards`), eval metrics (`evaluate.metrics`) and the eval's default metric
choice use the same rules, so a `numeric_match` reward and a `numeric_match` score agree.
"""

from __future__ import annotations

import re
from collections.abc import Callable

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
_FINAL = re.compile(r"(?:####|answer is|answer:|answer =)\s*\$?\s*(-?\d[\d,]*(?:\.\d+)?)", re.IGNORECASE)


def final_number(text: str) -> float | None:
    """The answer's number: after `####` or "the answer is" when present, else the last number."""
    final = _FINAL.findall(text)
    found = final[-1] if final else (_NUMBER.findall(text) or [None])[-1]
    if found is None:
        return None
    try:
        return float(found.replace(",", ""))
    except ValueError:
        return None


def has_final_answer(text: str) -> bool:
    """Whether the text states a final answer (`#### 42`, "The answer is 42")."""
    return bool(_FINAL.search(text))


def _normal(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.casefold()).split())


def numeric_match(answer: str, reference: str) -> float:
    expected, got = final_number(reference), final_number(answer)
    return float(expected is not None and got is not None and abs(expected - got) < 1e-6)


def exact_match(answer: str, reference: str) -> float:
    return float(_normal(answer) == _normal(reference))


def contains(answer: str, reference: str) -> float:
    return float(bool(_normal(reference)) and _normal(reference) in _normal(answer))


def answer_format(answer: str, reference: str) -> float:
    """1 when the answer closes with a final-answer line (`#### 42`, "The answer is 42"), else 0."""
    last = answer.strip().splitlines()[-1] if answer.strip() else ""
    return float(bool(_FINAL.search(last)))


CHECKERS: dict[str, Callable[[str, str], float]] = {
    "numeric_match": numeric_match,
    "exact_match": exact_match,
    "contains": contains,
    "answer_format": answer_format,
}
