"""Quality filters for synthetic rows. Each one reports what it removed (or changed), and every
removed row is kept in `rejected.jsonl` with the filter and the reason.

- `length`: the prompt and the answer within word limits, and not copies of each other;
- `pii`: the data stage's scrub, personal data replaced by typed placeholders;
- `dedup_exact` / `dedup_near`: against the existing data and the rows kept so far (MinHash on the
  prompt side, as the data stage's leakage check does);
- `grounding`: the answer's MiniLM similarity to the closest sentences of its passage, and names
  and numbers in it that the passage never mentions;
- `meaning`: a paraphrase's MiniLM similarity to its original (so meaning and label hold);
- `judge`: the eval judge's faithfulness score of the answer against its passage (optional).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

import numpy as np

from tunesmith.config import CleanConfig, SynthConfig
from tunesmith.data import clean as cleaning
from tunesmith.data.prepare import Step
from tunesmith.data.sources import Rejected

FAITHFULNESS = (
    "Faithfulness to the passage: the response answers the request using only facts stated in the "
    "passage. A response that adds facts the passage does not state, or contradicts it, is unfaithful; "
    "a response that does not answer the request is unhelpful."
)


@dataclass
class Candidate:
    """A synthetic row on its way through the filters."""

    location: str  # where it came from: `<chunk id>/s<sample>/p<pair>` or `<row>/para<k>`
    record: dict[str, Any]  # the canonical row it will become
    context: str  # what it must stay true to: its passage, or the original text it paraphrases
    scores: dict[str, float] = field(default_factory=dict)

    @property
    def prompt(self) -> str:
        return cleaning.prompt_text(self.record)

    @property
    def answer(self) -> str:
        messages = self.record.get("messages")
        return str(messages[-1]["content"]) if messages else ""

    @property
    def text(self) -> str:
        """The text a paraphrase filter looks at: the user turn, or a classification row's text."""
        return str(self.record["text"]) if "text" in self.record else self.prompt


def _reject(rejected: list[Rejected], step: Step, candidate: Candidate, reason: str) -> None:
    rejected.append(Rejected(candidate.location, reason, candidate.record, step=step.name))
    step.removed += 1


def _words(text: str) -> int:
    return len(re.findall(r"\w+", text))


def check_lengths(
    candidates: list[Candidate],
    settings: SynthConfig,
    rejected: list[Rejected],
    steps: list[Step],
    *,
    paraphrases: bool = False,
) -> list[Candidate]:
    """Prompt and answer within the word limits; an answer that only repeats the prompt is no answer.

    A paraphrase is held to its original's length instead: between a third of it and three times it.
    """
    step = Step(
        "length", details={"question_words": [settings.min_question_words, settings.max_question_words]}
    )
    kept = []
    for c in candidates:
        prompt_words = _words(c.text)
        reason = None
        if paraphrases:
            original = _words(c.context)
            if not max(1, original // 3) <= prompt_words <= 3 * original + 10:
                reason = f"paraphrase has {prompt_words} words, the original {original}"
        elif not settings.min_question_words <= prompt_words <= settings.max_question_words:
            reason = (
                f"prompt has {prompt_words} words, outside synth.min_question_words.."
                f"max_question_words ({settings.min_question_words}..{settings.max_question_words})"
            )
        elif c.answer:
            answer_words = _words(c.answer)
            if not settings.min_answer_words <= answer_words <= settings.max_answer_words:
                reason = (
                    f"answer has {answer_words} words, outside synth.min_answer_words..max_answer_words "
                    f"({settings.min_answer_words}..{settings.max_answer_words})"
                )
            elif cleaning.dedup_key(c.answer) == cleaning.dedup_key(c.prompt):
                reason = "answer repeats the question"
        if reason:
            _reject(rejected, step, c, reason)
        else:
            kept.append(c)
    steps.append(step)
    return kept


def scrub(candidates: list[Candidate], clean: CleanConfig, steps: list[Step]) -> None:
    """The data stage's PII scrub on every text of every row (personal data the teacher copied or made up)."""
    counts: Counter[str] = Counter()
    step = Step("pii")
    for c in candidates:
        scrubbed = cleaning.map_texts(
            c.record, lambda text: cleaning.scrub_pii(text, counts, clean.pii_types, clean.pii_keep)
        )
        if scrubbed != c.record:
            c.record, step.changed = scrubbed, step.changed + 1
    step.details = {"by_type": dict(counts.most_common())}
    steps.append(step)


def dedup(
    candidates: list[Candidate],
    existing: Iterable[tuple[str, dict[str, Any]]],
    threshold: float,
    rejected: list[Rejected],
    steps: list[Step],
) -> list[Candidate]:
    """Drop rows that repeat existing data or a row kept before them: exactly, or nearly on the prompt."""
    exact_step, near_step = Step("dedup_exact"), Step("dedup_near", details={"threshold": threshold})
    index = cleaning.NearDuplicateIndex(threshold=threshold)
    exact: dict[str, str] = {}
    existing = list(existing)
    prompts = [cleaning.prompt_text(record) for _, record in existing]
    for (location, record), minhash in zip(existing, index.minhashes(prompts), strict=True):
        exact.setdefault(cleaning.dedup_key(cleaning.record_text(record)), location)
        if location not in index._hashes:
            index.add(location, minhash)
    kept = []
    for c, minhash in zip(candidates, index.minhashes([c.prompt for c in candidates]), strict=True):
        key = cleaning.dedup_key(cleaning.record_text(c.record))
        if key in exact:
            _reject(rejected, exact_step, c, f"exact duplicate of {exact[key]}")
            continue
        near = index.query(minhash)
        if near:
            _reject(rejected, near_step, c, f"near duplicate (similarity {near[0][1]:.2f}) of {near[0][0]}")
            continue
        exact[key] = c.location
        index.add(c.location, minhash)
        kept.append(c)
    exact_step.details["against"] = near_step.details["against"] = len(existing)
    steps += [exact_step, near_step]
    return kept


_SENTENCE = re.compile(r"(?<=[.!?;:])\s+|\n+")


def passage_windows(passage: str) -> list[str]:
    """The passage's sentences, and each pair of neighbouring sentences: what an answer is matched to."""
    sentences = [s.strip(" #*-") for s in _SENTENCE.split(passage) if len(s.strip(" #*-")) > 1]
    return sentences + [f"{a} {b}" for a, b in pairwise(sentences)] or [passage]


_NAME_OR_NUMBER = re.compile(r"\b\d[\d,.]*\b|\b[A-Z][\w'’-]*")


def invented_specifics(answer: str, sources: str) -> list[str]:
    """Names and numbers in `answer` that `sources` never mentions (sentence-initial words aside)."""
    known = sources.casefold()
    known_numbers = {n.replace(",", "").rstrip(".") for n in re.findall(r"\d[\d,.]*", sources)}
    missing = []
    for match in _NAME_OR_NUMBER.finditer(answer):
        word = match.group(0).rstrip(".,")
        before = answer[: match.start()].rstrip()
        if word[0].isdigit():
            if word.replace(",", "") not in known_numbers:
                missing.append(word)
        elif before and before[-1] not in ".!?:;\"'(“" and len(word) > 1 and word.casefold() not in known:
            missing.append(word)
    return list(dict.fromkeys(missing))


def check_grounding(
    candidates: list[Candidate],
    encode: Callable[[list[str]], np.ndarray],
    settings: SynthConfig,
    rejected: list[Rejected],
    steps: list[Step],
) -> list[Candidate]:
    """Keep answers close to a sentence of their passage that invent no names or numbers."""
    step = Step("grounding", details={"min_grounding": settings.min_grounding})
    windows: dict[str, list[str]] = {c.context: passage_windows(c.context) for c in candidates}
    flat = [w for ws in windows.values() for w in ws]
    vectors = encode(flat + [c.answer for c in candidates])
    window_vectors, answer_vectors = vectors[: len(flat)], vectors[len(flat) :]
    offsets, start = {}, 0
    for context, ws in windows.items():
        offsets[context] = (start, start + len(ws))
        start += len(ws)
    kept, scores = [], []
    for c, vector in zip(candidates, answer_vectors, strict=True):
        lo, hi = offsets[c.context]
        similarity = float(np.max(window_vectors[lo:hi] @ vector))
        c.scores["grounding"] = round(similarity, 4)
        scores.append(similarity)
        invented = (
            invented_specifics(c.answer, c.context + "\n" + c.prompt) if settings.check_specifics else []
        )
        if similarity < settings.min_grounding:
            _reject(
                rejected,
                step,
                c,
                f"not grounded: the answer's similarity to its passage is {similarity:.2f}, "
                f"below synth.min_grounding={settings.min_grounding}",
            )
        elif invented:
            _reject(rejected, step, c, f"invented specifics: {', '.join(invented[:5])} not in the passage")
        else:
            kept.append(c)
    if scores:
        step.details.update(
            mean=round(float(np.mean(scores)), 3), p10=round(float(np.percentile(scores, 10)), 3)
        )
    steps.append(step)
    return kept


def check_meaning(
    candidates: list[Candidate],
    encode: Callable[[list[str]], np.ndarray],
    min_similarity: float,
    rejected: list[Rejected],
    steps: list[Step],
) -> list[Candidate]:
    """Keep paraphrases that stay close in meaning to their original (MiniLM cosine)."""
    step = Step("meaning", details={"min_similarity": min_similarity})
    if candidates:
        vectors = encode([c.text for c in candidates] + [c.context for c in candidates])
        similarities = np.sum(vectors[: len(candidates)] * vectors[len(candidates) :], axis=1)
    else:
        similarities = np.zeros(0)
    kept = []
    for c, similarity in zip(candidates, similarities, strict=True):
        c.scores["similarity"] = round(float(similarity), 4)
        if similarity < min_similarity:
            _reject(
                rejected,
                step,
                c,
                f"meaning drifted: similarity to the original is {similarity:.2f}, "
                f"below synth.min_similarity={min_similarity}",
            )
        else:
            kept.append(c)
    if len(similarities):
        step.details["mean"] = round(float(np.mean(similarities)), 3)
    steps.append(step)
    return kept


def check_with_judge(
    candidates: list[Candidate], run: Any, min_score: float, rejected: list[Rejected], steps: list[Step]
) -> list[Candidate]:
    """Keep answers the judge scores as faithful to their passage (G-Eval 1-5, at least `min_score`)."""
    from tunesmith.evaluate.judge import score_all

    step = Step("judge", details={"judge": run.judge.identity, "min_score": min_score})
    scores = score_all(run, [(c.prompt, c.answer, c.context) for c in candidates], "Judging faithfulness")
    kept = []
    for c, score in zip(candidates, scores, strict=True):
        if score is None:
            _reject(rejected, step, c, "the judge gave no score")
            continue
        c.scores["judge"] = round(score, 3)
        if score < min_score:
            _reject(
                rejected, step, c, f"judge: faithfulness {score:.2f}, below synth.min_judge_score={min_score}"
            )
        else:
            kept.append(c)
    valid = [s for s in scores if s is not None]
    if valid:
        step.details["mean"] = round(float(np.mean(valid)), 3)
    steps.append(step)
    return kept
