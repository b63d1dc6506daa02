"""What every backend shares: the job a request becomes, the events it streams back, stop handling."""

from __future__ import annotations

import asyncio
import collections
import itertools
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from tunesmith.store import ModelVersion


class BackendError(Exception):
    """A backend cannot load or run a version; the message says why and what to do."""


class OverloadedError(Exception):
    """The queue is full; the caller should retry after `retry_after` seconds."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"the server is at capacity; retry in {retry_after} s")
        self.retry_after = retry_after


@dataclass(frozen=True)
class SamplingParams:
    """How one choice is decoded. Temperature 0 is greedy. `grammar`: an llguidance grammar (a JSON
    schema's, from `response_format`) that every token must keep the answer within; `schema` is that
    JSON schema itself, for engines that compile their own (llama.cpp). `presence_penalty` and
    `frequency_penalty` lower a token's logit once it appeared in the answer, and per appearance."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    grammar: str | None = None
    schema: str | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logprobs: int | None = None  # report each token's log-probability and this many alternatives


@dataclass(frozen=True)
class TokenLogprob:
    """A generated token's log-probability under the model (its own distribution, before penalties,
    temperature or a grammar), and the likeliest tokens in its place."""

    token: str
    logprob: float
    top: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True)
class TextDelta:
    index: int
    text: str
    logprobs: tuple[TokenLogprob, ...] = ()  # the tokens behind this text (with `logprobs` asked)


@dataclass(frozen=True)
class Finished:
    index: int
    finish_reason: str  # stop (end of turn or a stop sequence), length, cancelled
    tokens: int


@dataclass
class Choice:
    """One sequence being decoded: its tokens, its text so far and how much of it was delivered."""

    index: int
    params: SamplingParams
    tokens: list[int] = field(default_factory=list)
    text: str = ""
    sent: int = 0
    finish_reason: str | None = None
    logprobs: list[TokenLogprob] = field(default_factory=list)  # one per token, when asked
    logprobs_sent: int = 0

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    def advance(self, token: int, decode: Callable[[list[int]], str], eos: set[int]) -> str:
        """Take one generated token; return the text that may be delivered now.

        Text that could still turn into a stop sequence (and a half-decoded character) is held
        back until the next token settles it; a stop sequence itself is never delivered.
        """
        if token in eos:
            self.finish_reason = "stop"
            return self.flush()
        self.tokens.append(token)
        self.text = decode(self.tokens)
        cut = min((i for i in (self.text.find(s) for s in self.params.stop) if i >= 0), default=-1)
        if cut >= 0:
            self.text = self.text[:cut]
            self.finish_reason = "stop"
            return self.flush()
        if len(self.tokens) >= self.params.max_tokens:
            self.finish_reason = "length"
            return self.flush()
        hold = max((len(s) - 1 for s in self.params.stop), default=0)
        safe = len(self.text) - hold - (1 if self.text.endswith("\ufffd") else 0)
        if safe <= self.sent:
            return ""
        delta, self.sent = self.text[self.sent : safe], safe
        return delta

    def flush(self) -> str:
        delta, self.sent = self.text[self.sent :], len(self.text)
        return delta


class GenerationJob:
    """One request's choices on one version; events reach the request's asyncio loop.

    A backend thread calls `emit`; the request's coroutine reads `events`. `cancel` (the client
    went away) makes the backend stop decoding the job's choices at the next token. `tenant` (the
    API key) is whose turn it is when the queue is shared fairly.
    """

    def __init__(
        self,
        version_id: str,
        prompt_ids: list[int],
        params: list[SamplingParams],
        loop: asyncio.AbstractEventLoop | None = None,
        *,
        tenant: str = "",
    ) -> None:
        self.version_id = version_id
        self.tenant = tenant
        self.prompt_ids = prompt_ids
        self.choices = [Choice(i, p) for i, p in enumerate(params)]
        self.loop = loop
        self.events: asyncio.Queue[TextDelta | Finished | BaseException] = asyncio.Queue()
        self.cancelled = threading.Event()
        self.sync_result: threading.Event | None = None if loop is not None else threading.Event()
        self.error: BaseException | None = None

    def emit(self, event: TextDelta | Finished | BaseException) -> None:
        if isinstance(event, BaseException):
            self.error = event
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)
        if self.sync_result is not None and (
            isinstance(event, BaseException) or all(c.done for c in self.choices)
        ):
            self.sync_result.set()

    def deliver(self, choice: Choice, delta: str) -> None:
        entries = tuple(choice.logprobs[choice.logprobs_sent :]) if delta or choice.done else ()
        choice.logprobs_sent += len(entries)
        if delta or entries:
            self.emit(TextDelta(choice.index, delta, entries))
        if choice.done:
            self.emit(Finished(choice.index, choice.finish_reason or "stop", len(choice.tokens)))

    def fail(self, exc: BaseException) -> None:
        for choice in self.choices:
            if not choice.done:
                choice.finish_reason = "error"
        self.emit(exc)

    def cancel(self) -> None:
        self.cancelled.set()

    def wait(self, timeout: float | None = None) -> list[str]:
        """Block until done (a job made without a loop, such as a warm-up probe); the texts."""
        assert self.sync_result is not None
        if not self.sync_result.wait(timeout):
            raise BackendError(f"no answer within {timeout} s")
        if self.error is not None:
            raise self.error
        return [c.text for c in self.choices]


class Backend(Protocol):
    """A serving backend. `load` must warm the version up before returning (it raises on failure)."""

    name: str

    def grammar_refusal(self, version_id: str) -> str | None:
        """Why the version cannot decode within a grammar (response_format json); None when it can."""

    def tool_grammar_refusal(self, version_id: str) -> str | None:
        """Why the version cannot be held to a required tool call (tool_choice); None when it can."""

    def logprobs_refusal(self, version_id: str) -> str | None:
        """Why the version's token log-probabilities cannot be reported; None when they can."""

    def start(self) -> None: ...

    def close(self) -> None: ...

    def load(self, version: ModelVersion) -> None: ...

    def retire(self, version_id: str) -> None:
        """Drop a version once its in-flight jobs are done."""

    def loaded(self) -> set[str]: ...

    def tokenizer(self, version_id: str) -> Any:
        """The version's tokenizer: chat template and token counts."""

    def context_length(self, version_id: str) -> int: ...

    def submit(self, job: GenerationJob) -> None:
        """Queue a job. Raises `OverloadedError` when the queue is full."""

    def queue_depth(self) -> int: ...

    def in_flight(self) -> int:
        """Jobs queued or decoding."""

    def engine(self, version_id: str) -> str:
        """The name of the engine that serves a loaded version (a backend may hold several)."""


class QueuedBackend(ABC):
    """The bounded job queue and worker thread that the built-in backends share.

    Subclasses implement `loaded()`, `_work()` and `_drop()`; `submit` refuses work beyond
    `max_queue` waiting sequences, or beyond `max_per_tenant` of one tenant (API key), with
    `OverloadedError`. Jobs leave the queue in turns across tenants (`fair_order`), oldest first
    within each, so a client sending four times as much waits in line with the others, not before them.
    """

    name = "queued"

    def grammar_refusal(self, version_id: str) -> str | None:
        return f"the {self.name} backend does not enforce response_format (the transformers backend does)"

    def tool_grammar_refusal(self, version_id: str) -> str | None:
        return self.grammar_refusal(version_id)

    def logprobs_refusal(self, version_id: str) -> str | None:
        return f"the {self.name} backend does not report logprobs (transformers and llamacpp do)"

    def __init__(self, max_queue: int, batch_size: int = 1, max_per_tenant: int | None = None) -> None:
        self.max_queue = max_queue
        self.max_per_tenant = max_per_tenant or max(1, max_queue // 2)
        self.batch_size = batch_size
        self._queue: collections.deque[GenerationJob] = collections.deque()
        self._cond = threading.Condition()
        self._active: collections.Counter[str] = collections.Counter()  # queued or running jobs per version
        self._retired: set[str] = set()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.batch_seconds = 1.0  # running mean of one batch's time: the Retry-After estimate
        self.on_batch: Callable[[int], None] | None = None  # called with each batch's sequence count

    @abstractmethod
    def loaded(self) -> set[str]:
        """Ids of the versions this backend holds now."""

    @abstractmethod
    def _work(self) -> None:
        """The worker loop: take jobs (`_wait_for_jobs`) and decode them until stopping."""

    def start(self) -> None:
        self._thread = threading.Thread(target=self._work, name=f"tunesmith-{self.name}", daemon=True)
        self._thread.start()

    def close(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=60)

    def queue_depth(self) -> int:
        with self._cond:
            return sum(len(job.choices) for job in self._queue)

    def engine(self, version_id: str) -> str:
        return self.name

    def in_flight(self) -> int:
        """Jobs queued or decoding."""
        with self._cond:
            return sum(self._active.values())

    def retire(self, version_id: str) -> None:
        with self._cond:
            self._retired.add(version_id)
            self._cond.notify_all()

    def submit(self, job: GenerationJob, *, force: bool = False) -> None:
        """Queue a job; `force` (warm-up probes) skips the queue limit."""
        with self._cond:
            if job.version_id not in self.loaded():
                raise BackendError(f"version {job.version_id} is not loaded")
            waiting = sum(len(j.choices) for j in self._queue)
            own = sum(len(j.choices) for j in self._queue if j.tenant == job.tenant)
            if not force and (
                waiting + len(job.choices) > self.max_queue or own + len(job.choices) > self.max_per_tenant
            ):
                batches = (own if waiting < self.max_queue else waiting) / self.batch_size + 1
                raise OverloadedError(retry_after=max(1, round(batches * self.batch_seconds)))
            self._queue.append(job)
            self._active[job.version_id] += 1
            self._cond.notify_all()

    @abstractmethod
    def _drop(self, version_id: str) -> None:
        """Free a retired version (called on the worker thread once nothing of it is in flight)."""

    def _wait_for_jobs(self, take: int | None = None) -> list[GenerationJob] | None:
        """Block until jobs are queued; take up to `take` (None: all), oldest first. None: stopping.

        Retired versions with nothing in flight are dropped while the worker waits.
        """
        with self._cond:
            while True:
                for version_id in self._idle_retired():
                    self._drop(version_id)
                if self._queue or self._stopping:
                    break
                self._cond.wait(timeout=1.0)
            if self._stopping:
                self._fail_queued()
                return None
            order = self.fair_order()
            taken = order if take is None else order[:take]
            for job in taken:
                self._queue.remove(job)
            return taken

    def fair_order(self) -> list[GenerationJob]:
        """The queue in turns across tenants: each one's oldest, then each one's second... (hold `_cond`)."""
        by_tenant: dict[str, list[GenerationJob]] = {}
        for job in self._queue:  # dicts keep insertion order: the tenant of the oldest job goes first
            by_tenant.setdefault(job.tenant, []).append(job)
        turns = itertools.zip_longest(*by_tenant.values())
        return [job for turn in turns for job in turn if job is not None]

    def _idle_retired(self) -> list[str]:
        """Retired versions with nothing queued or running: safe to drop now."""
        return [v for v in self._retired if self._active[v] == 0 and v in self.loaded()]

    def _fail_queued(self) -> None:
        for job in self._queue:
            job.fail(BackendError("the server is shutting down"))
        self._queue.clear()

    def _done(self, jobs: list[GenerationJob], elapsed: float) -> None:
        """Book a finished batch: the Retry-After estimate, metrics, and in-flight counts."""
        self.batch_seconds = 0.8 * self.batch_seconds + 0.2 * elapsed
        if self.on_batch is not None:
            self.on_batch(sum(len(j.choices) for j in jobs))
        with self._cond:
            for job in jobs:
                self._active[job.version_id] -= 1
            self._cond.notify_all()
