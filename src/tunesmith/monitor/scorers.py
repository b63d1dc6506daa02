"""Online scorers: numbers about each served answer, stored per request and version.

Reference-free scorers run on every sampled answer: `empty`, `truncated`, `refusal`, `toxicity`
(a word list; yours with `monitor.toxicity_words`), `relevance` (cosine similarity of the prompt's
and the answer's MiniLM embeddings), `length` (words) and `pii` (personal data found by the data
stage's patterns). Where a reference exists — a user's corrected answer — the offline eval metrics
score the answer against it (`reference_<metric>`), with the very same code as `tunesmith eval`.
Outside packages add scorers with `register_scorer`.

A scorer reads the answer as eval scores it: a reasoning trace (a leading <think> block) apart.
`toxicity` and `pii` read all the client was sent, the trace included (`everything_said`).
"""

from __future__ import annotations

import logging
import queue
import random
import re
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from tunesmith.chat import asked
from tunesmith.plugins import Registry
from tunesmith.reasoning import split_answer
from tunesmith.store import RequestScore, session
from tunesmith.store.schema import utcnow
from tunesmith.workspace import Workspace

log = logging.getLogger("tunesmith.monitor")

ScoreFn = Callable[[str, str, dict[str, Any], "ScoringContext"], float | None]

REFUSAL = re.compile(
    r"\b(i(?:'m| am) (?:sorry|afraid)\b.{0,40}\b(?:can(?:not|'t)|unable|not able)"
    r"|i can(?:not|'t) (?:help|assist|answer|provide|do that)"
    r"|i(?:'m| am) (?:unable|not able) to|as an ai\b|i won't be able to)",
    re.IGNORECASE,
)
DEFAULT_SCORERS = ["empty", "truncated", "refusal", "toxicity", "relevance", "length", "pii"]


@dataclass
class ScoringContext:
    """What scorers share: the embedder (loaded on first use), the toxic word list, the judge."""

    toxic_words: frozenset[str]
    embedder: Any = None
    judge: Any = None  # a started `tunesmith.evaluate.judge.JudgeRun`, when monitor.judge is on
    judge_sample_rate: float = 0.0
    reward_model: Any = (
        None  # a loaded `tunesmith.registry.reward.RewardModel`, when monitor.reward_model is set
    )

    def embed(self, texts: list[str]) -> Any:
        if self.embedder is None:
            from tunesmith.models.embed import Embedder

            self.embedder = Embedder()
        return self.embedder.encode(texts)


@dataclass(frozen=True)
class Scorer:
    name: str
    fn: ScoreFn
    description: str
    better: Literal["higher", "lower"] | None = None  # which way is better; None: neither (length)


SCORERS: Registry[Scorer] = Registry("scorer")


def register_scorer(
    name: str, description: str = "", *, better: Literal["higher", "lower"] | None = None
) -> Callable[[ScoreFn], ScoreFn]:
    """Register `fn(prompt, answer, row, context) -> float | None` (None: does not apply) as a scorer;
    `better` says which way is better, for the rollout score gate (`tunesmith.monitor.gates`)."""

    def decorator(fn: ScoreFn) -> ScoreFn:
        summary = description or (fn.__doc__ or name).strip().splitlines()[0]
        SCORERS.add(name, Scorer(name, fn, summary, better))
        return fn

    return decorator


def scorer_names() -> list[str]:
    return SCORERS.names()


def get_scorer(name: str) -> Scorer:
    return SCORERS.get(name)


def load_toxic_words(path: Path | None = None) -> frozenset[str]:
    text = (
        path.read_text(encoding="utf-8")
        if path is not None
        else resources.files("tunesmith").joinpath("monitor", "toxic_words.txt").read_text(encoding="utf-8")
    )
    return frozenset(w.strip().lower() for w in text.split("\n") if w.strip() and not w.startswith("#"))


@register_scorer("empty", better="lower")
def empty(prompt: str, answer: str, row: dict[str, Any], ctx: ScoringContext) -> float:
    """1 when the answer has no text."""
    return float(not answer.strip())


@register_scorer("truncated", better="lower")
def truncated(prompt: str, answer: str, row: dict[str, Any], ctx: ScoringContext) -> float:
    """1 when the answer stopped at its token limit, not at its end."""
    return float("length" in (row.get("finish_reasons") or []))


@register_scorer("refusal", better="lower")
def refusal(prompt: str, answer: str, row: dict[str, Any], ctx: ScoringContext) -> float:
    """1 when the answer declines ("I'm sorry, but I can't...")."""
    return float(bool(REFUSAL.search(answer)))


@register_scorer("toxicity", better="lower")
def toxicity(prompt: str, answer: str, row: dict[str, Any], ctx: ScoringContext) -> float:
    """1 when the answer (or its reasoning trace) uses a word or phrase of the toxic word list."""
    text = everything_said(row, answer).lower()
    words = set(re.findall(r"[a-z']+", text))
    phrases = (w for w in ctx.toxic_words if " " in w)
    return float(
        bool(words & ctx.toxic_words) or any(re.search(rf"\b{re.escape(p)}\b", text) for p in phrases)
    )


@register_scorer("relevance", better="higher")
def relevance(prompt: str, answer: str, row: dict[str, Any], ctx: ScoringContext) -> float | None:
    """Cosine similarity of the prompt's and the answer's MiniLM embeddings (-1 to 1)."""
    if not prompt.strip() or not answer.strip():
        return None
    vectors = ctx.embed([prompt, answer])
    return float(vectors[0] @ vectors[1])


@register_scorer("length")
def length(prompt: str, answer: str, row: dict[str, Any], ctx: ScoringContext) -> float:
    """Words in the answer."""
    return float(len(answer.split()))


@register_scorer("pii", better="lower")
def pii(prompt: str, answer: str, row: dict[str, Any], ctx: ScoringContext) -> float:
    """Pieces of personal data (emails, phones, cards, IBANs, IPs...) in the answer or its trace."""
    from tunesmith.data.clean import scrub_pii

    counts: Counter[str] = Counter()
    scrub_pii(everything_said(row, answer), counts)
    return float(sum(counts.values()))


@register_scorer("judge", better="higher")
def judge(prompt: str, answer: str, row: dict[str, Any], ctx: ScoringContext) -> float | None:
    """The judge's G-Eval score 1-5 (monitor.judge), on a `monitor.judge_sample_rate` share of answers."""
    if ctx.judge is None or random.random() >= ctx.judge_sample_rate or not answer.strip():
        return None
    return ctx.judge.score(prompt, answer, None)


@register_scorer("reward", better="higher")
def reward(prompt: str, answer: str, row: dict[str, Any], ctx: ScoringContext) -> float | None:
    """The reward model's score of the answer (monitor.reward_model), given the whole conversation."""
    if ctx.reward_model is None or not answer.strip():
        return None
    conversation = row.get("prompt")
    chat = isinstance(conversation, list) and conversation and isinstance(conversation[0], dict)
    (score,) = ctx.reward_model.score([conversation if chat else prompt], [answer])
    return float(score)


def start_judge(workspace: Workspace, config: Any) -> Any:
    """The online judge of `monitor.judge`: an OpenAI-compatible endpoint (a local model would compete
    with serving for the machine), its verdicts cached in the workspace."""
    from tunesmith.evaluate.judge import make_judge, start

    if not config.endpoint:
        raise ValueError("monitor.judge needs judge.endpoint (an OpenAI-compatible URL) for online scoring")
    return start(config, make_judge(config, None), workspace.root / "eval_cache" / "judge")


def answer_of(said: str) -> str:
    """The answer in what a model said: a leading reasoning trace apart, as eval scores it."""
    return split_answer(said)[1]


def everything_said(row: dict[str, Any], answer: str) -> str:
    """All the client was sent with the answer: the logged text, a reasoning trace included (the
    answer itself when the row holds no output)."""
    answers = row.get("output")
    return str(answers[0]) if answers else answer


def prompt_of(row: dict[str, Any]) -> str:
    """The last user turn of a chat request, or the completion prompt."""
    prompt = row.get("prompt")
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], dict):
        return asked(prompt)
    if isinstance(prompt, list):
        return str(prompt[0]) if prompt else ""
    return str(prompt or "")


def score_row(row: dict[str, Any], names: list[str], ctx: ScoringContext) -> list[RequestScore]:
    """Every named scorer on every answer of a logged request (choice 0 when there are several)."""
    answers = row.get("output") or []
    if not answers or row.get("status", 200) != 200:
        return []
    prompt, answer = prompt_of(row), answer_of(str(answers[0]))
    scores = []
    for name in names:
        try:
            value = get_scorer(name).fn(prompt, answer, row, ctx)
        except Exception:  # a scorer's bug must not lose the others' scores
            log.exception("scorer %s failed on %s", name, row.get("id"))
            continue
        if value is not None:
            scores.append(
                RequestScore(
                    request_id=row["id"],
                    version_id=row.get("version_id"),
                    name=name,
                    value=value,
                    at=utcnow(),
                )
            )
    return scores


def reference_scores(
    request_id: str, version_id: str | None, answer: str, reference: str, metrics: list[str]
) -> list[RequestScore]:
    """Offline eval metrics of an answer against a reference (a user's correction): `reference_<metric>`."""
    from tunesmith.evaluate.metrics import get_metric

    scores = []
    for name in metrics:
        metric = get_metric(name)
        value, _ = metric.compute([answer], [reference], [{}])
        scores.append(
            RequestScore(
                request_id=request_id,
                version_id=version_id,
                name=f"reference_{name}",
                value=float(value),
                at=utcnow(),
            )
        )
    return scores


class OnlineScorer:
    """Scores a sample of served requests in a background thread and writes the scores to the store.

    Its queue is bounded (`max_pending`): under pressure a row is dropped and counted (`dropped`),
    so scoring never holds memory or time that answers need.
    """

    def __init__(
        self,
        workspace: Workspace,
        names: list[str],
        sample_rate: float,
        toxic_words: frozenset[str],
        judge: Any = None,
        judge_sample_rate: float = 0.0,
        reward_model: Any = None,
        max_pending: int = 256,
    ) -> None:
        for name in names:
            get_scorer(name)  # an unknown name fails at start, not per request
        self.workspace = workspace
        added = [
            name
            for name, on in (("judge", judge), ("reward", reward_model))
            if on is not None and name not in names
        ]
        self.names = [*names, *added]
        self.sample_rate = sample_rate
        self.ctx = ScoringContext(
            toxic_words, judge=judge, judge_sample_rate=judge_sample_rate, reward_model=reward_model
        )
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue(maxsize=max_pending)
        self._thread = threading.Thread(target=self._work, name="tunesmith-scorer", daemon=True)
        self.scored = 0
        self.dropped = 0  # sampled rows not scored because the queue was full

    def start(self) -> None:
        self._thread.start()

    def offer(self, row: dict[str, Any]) -> None:
        """Score `row` with probability `sample_rate` (off the request path); drop it, counted, when
        `max_pending` rows already wait."""
        if self.names and random.random() < self.sample_rate:
            try:
                self._queue.put_nowait(row)
            except queue.Full:
                self.dropped += 1

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=60)

    def flush(self, timeout: float = 30.0) -> None:
        import time

        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.02)

    def _work(self) -> None:
        while True:
            row = self._queue.get()
            try:
                if row is None:
                    return
                scores = score_row(row, self.names, self.ctx)
                if scores:
                    with session(self.workspace.engine) as s:
                        s.add_all(scores)
                    self.scored += 1
            except Exception:
                log.exception("scoring request %s failed", (row or {}).get("id"))
            finally:
                self._queue.task_done()
