"""The default backend: transformers on CPU or GPU, concurrent requests decoded in one batch.

Every LoRA version trained on the same base shares one copy of that base in memory: each adapter
is loaded onto it under the version's id, and a batch may mix versions (PEFT's mixed-adapter
batches pick each row's adapter). Full fine-tunes, and adapters trained on top of another version,
get a model of their own.

Sampling happens per row (its own temperature, top-p and seeded generator), so a request's answer
does not depend on what it was batched with, apart from floating-point noise of padding.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunesmith.config import GENERATIVE_OBJECTIVES, ProjectConfig, ServeConfig
from tunesmith.serve.backends.base import (
    BackendError,
    GenerationJob,
    QueuedBackend,
    SamplingParams,
    TokenLogprob,
)
from tunesmith.serve.grammar import TokenMasks, grammar_tokenizer
from tunesmith.store import ModelVersion
from tunesmith.workspace import Workspace

log = logging.getLogger("tunesmith.serve")

WARMUP_PROMPT = [{"role": "user", "content": "Hello"}]
PICKLED_WEIGHTS = ("adapter_model*.bin", "pytorch_model*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl", "*.pickle")
GREEDY_BELOW = 1e-5  # a temperature under this samples the most likely token anyway


@dataclass
class _Group:
    """One model in memory and the versions it serves (adapter name = version id; None: the model itself)."""

    model: Any
    tokenizer: Any
    eos: set[int]
    peft: bool
    context_length: int
    versions: set[str] = field(default_factory=set)
    grammar_tokenizer: Any = None  # llguidance's view of the tokenizer, built on the first response_format
    grammar_error: str | None = None  # why it cannot be built (a word-level tokenizer...)

    def grammar_refusal(self) -> str | None:
        """Why this model's tokenizer cannot be constrained by a grammar; None when it can."""
        if self.grammar_tokenizer is None and self.grammar_error is None:
            try:
                vocab = int(self.model.get_output_embeddings().weight.shape[0])
                self.grammar_tokenizer = grammar_tokenizer(self.tokenizer, vocab, self.eos)
            except Exception as exc:  # a slow tokenizer, or one without a byte-level decoder
                self.grammar_error = f"this model's tokenizer cannot be constrained by a grammar ({exc})"
        return self.grammar_error

    def token_text(self, token: int) -> str:
        """A token as its own text (a byte-level piece of a character shows as U+FFFD)."""
        return str(self.tokenizer.decode([token], skip_special_tokens=False))

    def masks(self, grammars: list[str | None]) -> TokenMasks | None:
        """The grammar matchers of a batch's rows, or None when no row has a grammar."""
        if not any(grammars):
            return None
        if self.grammar_refusal() is not None:
            raise BackendError(self.grammar_error)
        return TokenMasks(self.grammar_tokenizer, grammars, self.eos)


class TransformersBackend(QueuedBackend):
    name = "transformers"

    def __init__(self, workspace: Workspace, config: ServeConfig) -> None:
        super().__init__(config.max_queue, config.max_batch_size, config.max_queue_per_key)
        self.workspace = workspace
        self.max_batch_size = config.max_batch_size
        self.batch_wait = config.batch_wait_ms / 1000
        self._groups: dict[str, _Group] = {}
        self._group_of: dict[str, str] = {}  # version id -> group key
        self._tasks: collections.deque[tuple[Any, Future[Any]]] = collections.deque()
        self._load_lock = threading.Lock()

    def loaded(self) -> set[str]:
        return set(self._group_of)

    def tokenizer(self, version_id: str) -> Any:
        return self._groups[self._group_of[version_id]].tokenizer

    def grammar_refusal(self, version_id: str) -> str | None:
        return self._groups[self._group_of[version_id]].grammar_refusal()

    def logprobs_refusal(self, version_id: str) -> str | None:
        return None

    def context_length(self, version_id: str) -> int:
        return self._groups[self._group_of[version_id]].context_length

    # --- loading ---------------------------------------------------------------------------

    def load(self, version: ModelVersion) -> None:
        """Load `version` (onto its shared base when it is a LoRA adapter), then warm it up."""
        with self._load_lock:
            if version.id in self._group_of:
                self._retired.discard(version.id)
                return
            _safetensors_only(Path(version.path))
            objective = version.config.get("train", {}).get("objective", "sft")
            if objective not in GENERATIVE_OBJECTIVES:
                raise BackendError(
                    f"{version.name} is a {objective} model; the server answers with generative versions only"
                )
            shared = version.method in ("lora", "qlora") and version.parent_id is None
            key = _base_key(version) if shared else f"version:{version.id}"
            with self._cond:  # the worker drops versions under it: reserve a place in the group first,
                group = self._groups.get(key)  # so dropping its last other version keeps the base
                if group is not None:
                    group.versions.add(version.id)
            if group is None:
                group = self._new_group(version, shared)
                with self._cond:
                    self._groups[key] = group
                    group.versions.add(version.id)
            try:
                if shared:
                    self._run_exclusive(lambda: _attach_adapter(group, version)).result()
            except Exception:
                with self._cond:
                    group.versions.discard(version.id)
                    if not group.versions:  # a base loaded for this version alone
                        self._groups.pop(key, None)
                raise
            self._group_of[version.id] = key
        try:
            self.warm_up(version.id)
        except Exception:
            self._run_exclusive(lambda: self._drop(version.id)).result()
            raise

    def warm_up(self, version_id: str, timeout: float = 300.0) -> None:
        """Generate a few tokens through the batcher: proof that the version answers."""
        tokenizer = self.tokenizer(version_id)
        prompt = _chat_ids(tokenizer, WARMUP_PROMPT)
        job = GenerationJob(version_id, prompt, [SamplingParams(max_tokens=2, temperature=0.0)])
        self.submit(job, force=True)
        job.wait(timeout)

    def _new_group(self, version: ModelVersion, shared: bool) -> _Group:
        import torch

        from tunesmith.models import load_configured
        from tunesmith.models.generate import stop_token_ids
        from tunesmith.registry.loading import load_row

        model: Any
        if shared:
            model_cfg = version.config["model"]
            dtype = ProjectConfig.model_validate(version.config).weights_dtype
            loaded = load_configured(model_cfg, dtype)
            model, tokenizer = loaded.model, loaded.tokenizer
        else:
            model, tokenizer = load_row(version, self.workspace)
            if hasattr(model, "merge_and_unload"):
                model = model.merge_and_unload()
        if torch.cuda.is_available():
            model = model.to(torch.device("cuda"))
        model.eval()
        length = getattr(model.config, "max_position_embeddings", None) or tokenizer.model_max_length
        return _Group(
            model=model,
            tokenizer=tokenizer,
            eos=set(stop_token_ids(tokenizer, model)),
            peft=False,
            context_length=int(min(length, 1_000_000)),
        )

    def _drop(self, version_id: str) -> None:
        """Remove a version now (the worker thread calls this when nothing of it is in flight)."""
        key = self._group_of.pop(version_id, None)
        self._retired.discard(version_id)
        if key is None:
            return
        group = self._groups[key]
        group.versions.discard(version_id)
        if group.peft and version_id in group.model.peft_config and len(group.model.peft_config) > 1:
            group.model.delete_adapter(version_id)
        if not group.versions:
            del self._groups[key]
        log.info("unloaded %s", version_id)

    def _run_exclusive(self, fn: Any) -> Future[Any]:
        """Run `fn` on the worker thread between batches (nothing generates meanwhile)."""
        future: Future[Any] = Future()
        with self._cond:
            self._tasks.append((fn, future))
            self._cond.notify_all()
        return future

    # --- requests --------------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            with self._cond:
                while not (self._queue or self._tasks or self._stopping or self._idle_retired()):
                    self._cond.wait(timeout=1.0)
                if self._stopping:
                    self._fail_queued()
                    return
                tasks = list(self._tasks)
                self._tasks.clear()
            for fn, future in tasks:
                try:
                    future.set_result(fn())
                except Exception as exc:
                    future.set_exception(exc)
            with self._cond:
                for version_id in self._idle_retired():
                    self._drop(version_id)
            if not self._queue:
                continue
            if self.batch_wait and sum(len(j.choices) for j in self._queue) < self.max_batch_size:
                time.sleep(self.batch_wait)  # let concurrent requests join the batch
            jobs = self._take_batch()
            if jobs:
                self._run(jobs)

    def _take_batch(self) -> list[GenerationJob]:
        """The oldest job and the next ones on the same model in fair order, up to `max_batch_size`
        sequences."""
        with self._cond:
            order = self.fair_order()
            key = self._group_of[order[0].version_id]
            jobs: list[GenerationJob] = []
            rows = 0
            for job in order:
                if self._group_of.get(job.version_id) != key:
                    continue
                if jobs and rows + len(job.choices) > self.max_batch_size:
                    break
                self._queue.remove(job)
                if job.cancelled.is_set():
                    self._active[job.version_id] -= 1
                    continue
                jobs.append(job)
                rows += len(job.choices)
            return jobs

    def _run(self, jobs: list[GenerationJob]) -> None:
        started = time.perf_counter()
        group = self._groups[self._group_of[jobs[0].version_id]]
        try:
            _generate(group, jobs)
        except Exception as exc:  # one bad batch must not stop the server
            log.exception("generation failed for %d request(s)", len(jobs))
            for job in jobs:
                job.fail(BackendError(f"generation failed: {exc}"))
        finally:
            self._done(jobs, time.perf_counter() - started)


def _safetensors_only(folder: Path) -> None:
    """Refuse a version folder with pickled weights: loading those can run arbitrary code."""
    pickled = sorted({p.name for pattern in PICKLED_WEIGHTS for p in folder.glob(pattern)})
    if pickled:
        raise BackendError(
            f"{folder} holds pickled weights ({', '.join(pickled)}); the server loads safetensors only. "
            "Re-save them with safetensors (save_pretrained(..., safe_serialization=True))."
        )


def _base_key(version: ModelVersion) -> str:
    model = version.config["model"]
    dtype = ProjectConfig.model_validate(version.config).weights_dtype
    return f"base:{model['id']}@{model.get('revision') or ''}:{dtype}"


def _attach_adapter(group: _Group, version: ModelVersion) -> None:
    from peft import PeftModel

    from tunesmith.models.loading import LOAD_LOCK

    with LOAD_LOCK:  # one load at a time in the process (see LOAD_LOCK)
        if not group.peft:
            group.model = PeftModel.from_pretrained(group.model, version.path, adapter_name=version.id)
            group.peft = True
        else:
            group.model.load_adapter(version.path, adapter_name=version.id)
    group.model.eval()


def _chat_ids(tokenizer: Any, messages: list[dict[str, Any]]) -> list[int]:
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return list(tokenizer(str(text), add_special_tokens=False)["input_ids"])


def _generate(group: _Group, jobs: list[GenerationJob]) -> None:
    """Decode every choice of `jobs` in one `generate` call."""
    import torch
    from transformers import GenerationConfig, LogitsProcessorList, StoppingCriteriaList

    rows = [(job, choice) for job in jobs for choice in job.choices]
    tokenizer, model = group.tokenizer, group.model
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(group.eos)
    width = max(len(job.prompt_ids) for job, _ in rows)
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (job, _) in enumerate(rows):
        input_ids[i, width - len(job.prompt_ids) :] = torch.tensor(job.prompt_ids)
        mask[i, width - len(job.prompt_ids) :] = 1
    device = next(model.parameters()).device
    extra: dict[str, Any] = {}
    adapters = [job.version_id for job, _ in rows]
    if group.peft and len(set(adapters)) > 1:
        extra["adapter_names"] = adapters  # a mixed batch: each row through its own adapter
    elif group.peft and model.active_adapter != adapters[0]:
        model.set_adapter(adapters[0])  # one adapter: the plain forward pass, without per-row routing
    masks = group.masks([c.params.grammar for _, c in rows])
    sampled = any(
        c.params.temperature > 0 or c.params.presence_penalty or c.params.frequency_penalty for _, c in rows
    )
    scored = any(c.params.logprobs is not None for _, c in rows)
    processors = [_RowSampler(rows, masks, group if scored else None)] if sampled or masks or scored else []
    settings = GenerationConfig(
        max_new_tokens=max(choice.params.max_tokens for _, choice in rows),
        do_sample=False,
        eos_token_id=sorted(group.eos),
        pad_token_id=pad,
    )
    with torch.inference_mode():
        model.generate(
            input_ids=input_ids.to(device),
            attention_mask=mask.to(device),
            generation_config=settings,
            logits_processor=LogitsProcessorList(processors),  # none: every row is plain greedy
            stopping_criteria=StoppingCriteriaList([_RowsDone(rows)]),
            streamer=_RowStreamer(rows, tokenizer, group.eos),
            **extra,
        )
    for job, choice in rows:  # generation ended (every row done, or the longest limit reached)
        if not choice.done:
            choice.finish_reason = "length"
            job.deliver(choice, choice.flush())


class _RowSampler:
    """Each row's next token by its own penalties, temperature, top-p, generator and grammar; greedy
    decoding then takes it."""

    def __init__(
        self,
        rows: list[tuple[GenerationJob, Any]],
        masks: TokenMasks | None = None,
        scoring: _Group | None = None,
    ) -> None:
        import torch

        self.rows = rows
        self.masks = masks
        self.scoring = scoring  # the group whose tokenizer names the tokens, when logprobs are asked
        self.generators: list[Any] = []
        for _, choice in rows:
            generator = None
            if choice.params.temperature > 0:
                generator = torch.Generator()
                if choice.params.seed is not None:
                    generator.manual_seed(choice.params.seed + choice.index)
                else:
                    generator.seed()
            self.generators.append(generator)

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        chosen = torch.full_like(scores, float("-inf"))
        for i, (_, choice) in enumerate(self.rows):
            row = penalised(scores[i].float(), choice)
            if self.masks is not None and not choice.done:
                row = self.masks.apply(i, row)
            # A temperature this close to 0 is greedy decoding: dividing by it overflows to inf.
            if choice.params.temperature < GREEDY_BELOW or self.generators[i] is None:
                token = int(torch.argmax(row))
            else:
                probs = torch.softmax(row / choice.params.temperature, dim=-1)
                if choice.params.top_p < 1.0:
                    sorted_probs, order = torch.sort(probs, descending=True)
                    keep = torch.cumsum(sorted_probs, dim=-1) - sorted_probs < choice.params.top_p
                    keep[0] = True  # the most likely token always stays (a tiny top_p is 0 in float32)
                    probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_probs[keep])
                token = int(torch.multinomial(probs.cpu(), 1, generator=self.generators[i]))
            if self.masks is not None and not choice.done:
                self.masks.consume(i, token)
            wanted = choice.params.logprobs
            # the end of the turn is not part of the answer: it has no entry
            if (
                self.scoring is not None
                and wanted is not None
                and not choice.done
                and token not in self.scoring.eos
            ):
                choice.logprobs.append(token_logprob(scores[i], token, wanted, self.scoring))
            chosen[i, token] = 0.0
        return chosen


def token_logprob(logits: Any, token: int, top: int, group: _Group) -> TokenLogprob:
    """The chosen token's log-probability under the model's own distribution (`logits`, before
    penalties, temperature or a grammar), with the `top` likeliest tokens."""
    import torch

    logprobs = torch.log_softmax(logits.float(), dim=-1)
    name = group.token_text
    best = torch.topk(logprobs, top) if top else None
    alternatives = (
        tuple(zip(map(name, best.indices.tolist()), best.values.tolist(), strict=True)) if best else ()
    )
    return TokenLogprob(name(token), float(logprobs[token]), alternatives)


def penalised(row: Any, choice: Any) -> Any:
    """OpenAI's penalties on one row's logits: less `presence_penalty` for each token already in the
    answer, and less `frequency_penalty` times the number of times it appeared."""
    import torch

    params = choice.params
    if not choice.tokens or (params.presence_penalty == 0 and params.frequency_penalty == 0):
        return row
    counts = torch.bincount(torch.tensor(choice.tokens), minlength=row.shape[0])[: row.shape[0]].to(row)
    return row - params.frequency_penalty * counts - params.presence_penalty * (counts > 0).to(row)


class _RowStreamer:
    """Receives each step's tokens from `generate` and hands every row's new text to its request."""

    def __init__(self, rows: list[tuple[GenerationJob, Any]], tokenizer: Any, eos: set[int]) -> None:
        self.rows = rows
        self.eos = eos
        self.prompt_seen = False
        self.decode = lambda ids: str(tokenizer.decode(ids, skip_special_tokens=True))

    def put(self, value: Any) -> None:
        if not self.prompt_seen:  # generate() first passes the prompts
            self.prompt_seen = True
            return
        tokens = value.tolist()
        for (job, choice), token in zip(self.rows, tokens, strict=True):
            if choice.done:
                continue
            if job.cancelled.is_set():
                choice.finish_reason = "cancelled"
                job.deliver(choice, "")
                continue
            job.deliver(choice, choice.advance(int(token), self.decode, self.eos))

    def end(self) -> None:
        pass


class _RowsDone:
    """Stops each row as soon as its own request is satisfied (its stop, its length, or cancelled)."""

    def __init__(self, rows: list[tuple[GenerationJob, Any]]) -> None:
        self.rows = rows

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        return torch.tensor(
            [choice.done or job.cancelled.is_set() for job, choice in self.rows],
            dtype=torch.bool,
            device=input_ids.device,
        )
