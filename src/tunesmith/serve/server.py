"""The server's state, in one object: backend, model table, router, keys, runtime config, request log,
online scorers and metrics; how it answers a request; and the loop that follows the registry (alias
moves, API keys, the runtime config file, rollouts) while it runs. The HTTP routes over it are in
`tunesmith.serve.routes`, mounted by `tunesmith.serve.app.create_app`.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from sqlalchemy import select

from tunesmith.chat import answer_message, called_fields, render_chat
from tunesmith.config import GENERATIVE_OBJECTIVES, ProjectConfig
from tunesmith.monitor.alerts import check_alerts
from tunesmith.monitor.scorers import OnlineScorer, load_toxic_words, start_judge
from tunesmith.reasoning import TraceSplitter
from tunesmith.registry.versions import RegistryError
from tunesmith.serve import rollout as rollouts
from tunesmith.serve.backends import (
    Backend,
    BackendError,
    Finished,
    GenerationJob,
    OverloadedError,
    SamplingParams,
    TextDelta,
    TokenLogprob,
    create_backend,
)
from tunesmith.serve.grammar import GrammarError, json_grammar, tool_grammar
from tunesmith.serve.keys import Caller, KeyRing
from tunesmith.serve.metrics import ServeMetrics
from tunesmith.serve.ratelimit import RateLimiter, Refusal
from tunesmith.serve.requestlog import RequestLogWriter, pii_scrubber
from tunesmith.serve.router import (
    CapacityError,
    Decision,
    ModelTable,
    Router,
    UnknownModelError,
    configured_names,
)
from tunesmith.serve.runtime import ModelSettings, RuntimeConfig
from tunesmith.serve.schemas import (
    ApiError,
    ChatCompletionRequest,
    CompletionRequest,
)
from tunesmith.store import AliasEvent, ModelVersion, session
from tunesmith.store.schema import utcnow
from tunesmith.toolcalls import CallSplitter
from tunesmith.workspace import Workspace, open_workspace

log = logging.getLogger("tunesmith.serve")
T = TypeVar("T")


class Server:
    """Everything one running server holds: backend, names, routes, keys, runtime config, log, metrics."""

    def __init__(
        self, config: ProjectConfig, workspace: Workspace | None = None, backend: Backend | None = None
    ) -> None:
        self.config = config
        self.serve = config.serve
        self.workspace = workspace or open_workspace(config)
        self.backend = backend or create_backend(self.serve.backend, self.workspace, self.serve)
        self.table = ModelTable(
            self.workspace,
            self.backend,
            max_loaded=self.serve.max_loaded,
            pinned=configured_names(self.serve),
        )
        self.router = Router(self.serve, self.table)
        self.keys = KeyRing(self.workspace, self.serve.auth)
        self.limiter = RateLimiter(self.serve.rate_limit)
        runtime_path = config.resolve_path(self.serve.runtime_config) if self.serve.runtime_config else None
        self.runtime = RuntimeConfig(runtime_path)
        self.request_log = (
            RequestLogWriter(self.workspace, flush_seconds=self.serve.log_flush_seconds)
            if self.serve.log_requests
            else None
        )
        self.scrub = pii_scrubber(self.serve.log_pii, config.data.clean.pii_keep)
        monitor = config.monitor
        words = config.resolve_path(monitor.toxicity_words) if monitor.toxicity_words else None
        online_judge = start_judge(self.workspace, monitor.judge) if monitor.judge_sample_rate > 0 else None
        self.scorer = (
            OnlineScorer(
                self.workspace,
                monitor.scorers,
                monitor.sample_rate,
                load_toxic_words(words),
                judge=online_judge,
                judge_sample_rate=monitor.judge_sample_rate,
                reward_model=_reward_model(self.workspace, monitor.reward_model),
            )
            if self.request_log is not None and monitor.scorers and monitor.sample_rate > 0
            else None
        )
        self.metrics = ServeMetrics()
        if self.scorer is not None:
            scorer = self.scorer
            self.metrics.scoring_dropped.set_function(lambda: scorer.dropped)
        self.ready = False
        self.startup_error: str | None = None
        self.on_startup_error: Callable[[str], None] | None = None  # e.g. stop the process (run_server)
        self._next_alert_check = 0.0
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._background: set[asyncio.Task[Any]] = set()
        # feedback, listings and admin calls wait on the store on threads of their own (see off_path)
        self._store_pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="tunesmith-store")
        self.table.on_swap = lambda name, version, result: self.metrics.swaps.labels(
            name, version, result
        ).inc()
        self.backend.on_batch = self.metrics.batch.observe  # type: ignore[attr-defined]

    # --- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Start the backend and the log writer; load the served models in the background (see /ready)."""
        warning = self.keys.startup_warning()
        if warning:
            log.warning(warning)
        self.backend.start()
        if self.request_log is not None:
            self.request_log.start()
        if self.scorer is not None:
            self.scorer.start()
        self._spawn(self._preload, "tunesmith-preload")

    def stop(self) -> None:
        self._stop.set()
        self._store_pool.shutdown(wait=False, cancel_futures=True)
        for thread in self._threads:
            thread.join(timeout=30)
        self.backend.close()
        if self.request_log is not None:
            self.request_log.close()
        if self.scorer is not None:
            self.scorer.close()

    def _spawn(self, target: Any, name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def check_models(self) -> None:
        """Check that every name the server would load names a version, before any weights load.

        Raises:
            RegistryError: a name in `serve.models` or `serve.routes` that points at no version.
        """
        try:
            self.router.check_names(self.serve.models or default_models(self.workspace))
        except UnknownModelError as exc:
            raise RegistryError(f"{exc}; fix serve.models or serve.routes") from None

    def _preload(self) -> None:
        try:
            self.router.refresh_rollouts()
            self.router.preload(self.serve.models or default_models(self.workspace))
        except Exception as exc:
            self.startup_error = str(exc)
            log.error("could not load the served models: %s", exc)
            if self.on_startup_error is not None:
                self.on_startup_error(self.startup_error)
            return
        self.ready = True
        self.metrics.loaded.set(len(self.backend.loaded()))
        log.info(
            "ready: %s",
            ", ".join(f"{n} -> {v.name}" for n, v in self.table.names().items()) or "no models yet",
        )
        self._spawn(self._follow, "tunesmith-follow")

    def _follow(self) -> None:
        while not self._stop.wait(self.serve.poll_seconds):
            try:
                self.poll_once()
            except Exception:
                log.exception("following the registry failed; retrying")

    def poll_once(self) -> None:
        """One look at the store and the runtime config file: alias moves, keys, config edits, rollouts."""
        self.table.refresh()
        self.keys.refresh()
        failures = self.runtime.failures
        if self.runtime.reload_if_changed():
            self.metrics.reloads.labels("ok").inc()
        elif self.runtime.failures > failures:
            self.metrics.reloads.labels("rejected").inc()
        drifting = any("drift" in route.rollout.gates for route in self.serve.routes)
        for row, event in rollouts.tick(
            self.workspace,
            self.serve,
            self.config.registry,
            self._primary_of,
            monitor=self.config.monitor,
            embedder=self._embedder() if drifting else None,
        ):
            self.metrics.rollouts.labels(row.route, event).inc()
        self.router.refresh_rollouts()
        if self.config.monitor.alerts and time.monotonic() >= self._next_alert_check:
            self._next_alert_check = time.monotonic() + self.config.monitor.alert_interval_seconds
            drifting = any(r.metric.startswith("drift_") for r in self.config.monitor.alerts)
            for alert in check_alerts(
                self.workspace,
                self.config.monitor,
                self.config.registry,
                embedder=self._embedder() if drifting else None,
            ):
                self.metrics.alerts.labels(alert.rule).inc()
        self.table.refresh()  # a completed rollout, or an alert's rollback, moved an alias
        self.metrics.loaded.set(len(self.backend.loaded()))

    def _embedder(self) -> Any:
        """The online scorers' MiniLM, loaded once, for the drift checks (rules and rollout gates)."""
        if self.scorer is None:
            return None
        self.scorer.ctx.embed([""])
        return self.scorer.ctx.embedder

    def _primary_of(self, route: str) -> str | None:
        try:
            return self.table.ensure(route).id
        except Exception:
            return None

    async def off_path(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run `fn` on the server's store threads, never on those that route and answer requests:
        a slow or locked store (feedback writes, listings, admin moves) cannot hold up inference."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._store_pool, functools.partial(fn, *args, **kwargs))

    # --- answering -------------------------------------------------------------------------

    async def answer(
        self, request: Request, body: ChatCompletionRequest | CompletionRequest, caller: Caller
    ) -> Response:
        """Route, generate and answer one request; a refusal (4xx, 503) is logged before it is raised."""
        started = time.perf_counter()
        headers = {k.lower(): v for k, v in request.headers.items()}
        chat = isinstance(body, ChatCompletionRequest)
        trace = _Trace(f"req-{uuid.uuid4().hex}", started, body, caller, headers, chat, _prompt_of(body))
        trace.gone = request.is_disconnected
        try:
            return await self._answer(trace)
        except ApiError as exc:
            decision = trace.decision
            version = decision.version if decision else None
            route = decision.route if decision else "refused"
            # a name nothing routed (any string a caller sends) is one label value, not a new series
            model = body.model if decision else "(unrouted)"
            self.metrics.requests.labels(model, version.name if version else "", route, str(exc.status)).inc()
            self._log(
                trace,
                version,
                route,
                exc.status,
                [],
                [],
                0,
                time.perf_counter() - started,
                exc.body["error"]["message"],
                shadow_of=None,
            )
            raise

    async def _answer(self, trace: _Trace) -> Response:
        body, request_id = trace.body, trace.request_id
        self._check(self.limiter.admit_request(trace.caller))
        try:
            decision = await asyncio.to_thread(
                self.router.decide, body.model, trace.caller, body.user, trace.headers
            )
        except UnknownModelError as exc:
            raise ApiError(404, str(exc), param="model", code="model_not_found") from None
        except (BackendError, RegistryError, CapacityError) as exc:
            raise ApiError(
                503, f"the model `{body.model}` cannot be served: {exc}", type="server_error"
            ) from None
        trace.decision, version = decision, decision.version
        try:
            jobs = self._queue(trace, version)
        finally:
            self.router.release(decision)  # queued jobs keep the version loaded from here on
        self.metrics.queue.set(self.backend.queue_depth())
        response_headers = {
            "x-request-id": request_id,
            "x-tunesmith-version": version.name,
            "x-tunesmith-route": decision.route,
        }
        if decision.shadow is not None:
            response_headers["x-tunesmith-shadow"] = decision.shadow.name
        if body.stream:
            return StreamingResponse(
                self._stream(jobs, trace), media_type="text/event-stream", headers=response_headers
            )
        texts, reasons, tokens = await self._collect(jobs, trace)
        if trace.disconnected:
            return Response(status_code=499)  # nobody reads it; logged as 499 by _collect
        payload = _completion(
            request_id, version, trace.chat, texts, reasons, _usage(trace.tokens_in, tokens), _calling(trace)
        )
        if trace.body.logprob_count() is not None:  # each choice's tokens, as OpenAI lays them out
            for choice in payload["choices"]:
                choice["logprobs"] = _logprobs_json(trace.logprobs.get(choice["index"], []), trace.chat)
        return JSONResponse(payload, headers=response_headers)

    def _queue(self, trace: _Trace, version: ModelVersion) -> list[GenerationJob]:
        """Encode the request for `version`, admit its tokens and queue its jobs."""
        body = trace.body
        settings = self.runtime.settings.for_request(body.model, version)
        trace.prompt, prompt_ids = self._encode(body, version, settings)
        params = self._params(body, settings, max(len(ids) for ids in prompt_ids), version)
        wanted = sum(len(ids) + params.max_tokens * body.n for ids in prompt_ids)
        self._check(self.limiter.admit_tokens(trace.caller, wanted))
        tenant = trace.caller.key_id or "anonymous"
        jobs = [
            GenerationJob(version.id, ids, [params] * body.n, asyncio.get_running_loop(), tenant=tenant)
            for ids in prompt_ids
        ]
        self._submit(jobs)
        trace.tokens_in = sum(len(i) for i in prompt_ids) * body.n
        return jobs

    def _check(self, refusal: Refusal | None) -> None:
        """Raise a rate limit's refusal as 429 (with Retry-After when waiting helps)."""
        if refusal is None:
            return
        self.metrics.rejected.labels("rate_limited").inc()
        raise ApiError(
            429, refusal.message, type="rate_limit_error", code="rate_limit_exceeded", headers=refusal.headers
        )

    def _submit(self, jobs: list[GenerationJob]) -> None:
        """Queue every job, or none: a full queue is answered 429 with Retry-After."""
        try:
            for job in jobs:
                self.backend.submit(job)
        except BackendError as exc:  # unloaded between routing and now (serve.max_loaded)
            for job in jobs:
                job.cancel()
            raise ApiError(503, f"retry: {exc}", type="server_error", headers={"Retry-After": "1"}) from None
        except OverloadedError as exc:
            for job in jobs:
                job.cancel()
            self.metrics.rejected.labels("overloaded").inc()
            raise ApiError(
                429,
                str(exc),
                type="rate_limit_error",
                code="overloaded",
                headers={"Retry-After": str(exc.retry_after)},
            ) from None

    def _encode(
        self, body: ChatCompletionRequest | CompletionRequest, version: ModelVersion, settings: ModelSettings
    ) -> tuple[Any, list[list[int]]]:
        tokenizer = self.backend.tokenizer(version.id)
        if isinstance(body, ChatCompletionRequest):
            messages = [m.as_record() for m in body.messages]
            if settings.system_prompt and messages[0]["role"] != "system":
                messages.insert(0, {"role": "system", "content": settings.system_prompt})
            try:  # traces and tools written in as training wrote them
                text = render_chat(tokenizer, messages, body.offered_tools(), add_generation_prompt=True)
            except Exception as exc:  # the template refuses the conversation (roles out of order...)
                raise ApiError(
                    400, f"the model's chat template refused these messages: {exc}", param="messages"
                ) from None
            return messages, [list(tokenizer(str(text), add_special_tokens=False)["input_ids"])]
        return body.prompt, [
            list(tokenizer(p)["input_ids"]) or [tokenizer.eos_token_id] for p in body.prompts
        ]

    def _params(
        self,
        body: ChatCompletionRequest | CompletionRequest,
        settings: ModelSettings,
        prompt_tokens: int,
        version: ModelVersion,
    ) -> SamplingParams:
        limit = self.serve.max_tokens
        max_tokens = body.requested_max_tokens or settings.max_tokens or self.serve.default_max_tokens
        if max_tokens > limit:
            raise ApiError(
                400,
                f"max_tokens is too large: {max_tokens}. This server allows at most {limit}.",
                param="max_tokens",
            )
        if body.n > self.serve.max_n:
            raise ApiError(
                400, f"n is too large: {body.n}. This server allows at most {self.serve.max_n}.", param="n"
            )
        context = self.backend.context_length(version.id)
        if not body.requested_max_tokens and prompt_tokens < context:
            max_tokens = min(max_tokens, context - prompt_tokens)  # a default never overflows the window
        if prompt_tokens + max_tokens > context:
            raise ApiError(
                400,
                f"This model's maximum context length is {context} tokens. However, you requested "
                f"{prompt_tokens + max_tokens} tokens ({prompt_tokens} in the messages, {max_tokens} in the "
                "completion). Please reduce the length of the messages or completion.",
                param="messages",
                code="context_length_exceeded",
            )
        schema = body.json_schema()
        forced = body.forced_tools() if isinstance(body, ChatCompletionRequest) else None
        return SamplingParams(
            grammar=self._grammar(schema, version, forced, _parallel(body)),
            schema=None if schema is None else json.dumps(schema),
            max_tokens=max_tokens,
            temperature=body.temperature
            if body.temperature is not None
            else (settings.temperature if settings.temperature is not None else 1.0),
            top_p=body.top_p if body.top_p is not None else (settings.top_p or 1.0),
            seed=body.seed,
            stop=tuple(dict.fromkeys([*body.stops, *(settings.stop or [])])),
            presence_penalty=body.presence_penalty,
            frequency_penalty=body.frequency_penalty,
            logprobs=self._logprobs(body, version),
        )

    def _logprobs(self, body: ChatCompletionRequest | CompletionRequest, version: ModelVersion) -> int | None:
        """How many alternatives per token the request asks logprobs with; 400 where the backend
        serving the version cannot report them."""
        count = body.logprob_count()
        refusal = None if count is None else self.backend.logprobs_refusal(version.id)
        if refusal is not None:
            raise ApiError(400, f"logprobs cannot be reported: {refusal}", param="logprobs")
        return count

    def _grammar(
        self,
        schema: dict[str, Any] | None,
        version: ModelVersion,
        forced: list[dict[str, Any]] | None = None,
        parallel: bool = True,
    ) -> str | None:
        """The grammar of the request's `response_format` JSON schema, or of the tool calls that
        tool_choice requires; None for free text. 400 for a schema that cannot be enforced, or a
        backend that cannot enforce one."""
        if schema is None and forced is None:
            return None
        param = "response_format" if forced is None else "tool_choice"
        refusal = (self.backend.grammar_refusal if forced is None else self.backend.tool_grammar_refusal)(
            version.id
        )
        if refusal is not None:
            raise ApiError(400, f"{param} cannot be followed: {refusal}", param=param)
        if schema is not None and forced is not None:
            raise ApiError(
                400, "response_format and a required tool call cannot both shape the answer", param=param
            )
        try:
            return json_grammar(schema) if schema is not None else tool_grammar(forced or [], parallel)
        except GrammarError as exc:
            raise ApiError(400, str(exc), param=param) from None

    async def _events(
        self, jobs: list[GenerationJob], trace: _Trace
    ) -> AsyncIterator[tuple[int, TextDelta | Finished]]:
        """Every job's events as (choice index across jobs, event) until all choices finish."""
        n = len(jobs[0].choices)
        merged: asyncio.Queue[tuple[int, Any]] = asyncio.Queue()

        async def pump(offset: int, job: GenerationJob) -> None:
            remaining = len(job.choices)
            while remaining:
                event = await job.events.get()
                await merged.put((offset, event))
                if isinstance(event, BaseException):
                    return
                if isinstance(event, Finished):
                    remaining -= 1

        pumps = [asyncio.create_task(pump(k * n, job)) for k, job in enumerate(jobs)]
        remaining = sum(len(j.choices) for j in jobs)
        try:
            while remaining:
                offset, event = await merged.get()
                if isinstance(event, BaseException):
                    raise event
                if isinstance(event, TextDelta) and trace.first_token is None:
                    trace.first_token = time.perf_counter()
                if isinstance(event, Finished):
                    remaining -= 1
                yield offset + event.index, event
        finally:
            for job in jobs:
                job.cancel()  # no-op for finished jobs; stops decoding when the client went away
            for task in pumps:
                task.cancel()

    async def _collect(self, jobs: list[GenerationJob], trace: _Trace) -> tuple[list[str], list[str], int]:
        """The whole answer of a request that is not streamed; a client that goes away meanwhile
        stops its decoding (logged 499), as a streamed one does."""
        count = sum(len(j.choices) for j in jobs)
        texts, reasons, tokens = [""] * count, ["stop"] * count, 0
        watcher = asyncio.create_task(self._watch(jobs, trace))
        try:
            async for index, event in self._events(jobs, trace):
                if isinstance(event, TextDelta):
                    texts[index] += event.text
                    trace.logprobs.setdefault(index, []).extend(event.logprobs)
                else:
                    reasons[index] = event.finish_reason
                    tokens += event.tokens
        except BackendError as exc:
            self._finish(trace, 500, [], [], 0, str(exc))
            raise ApiError(500, f"generation failed: {exc}", type="server_error") from None
        finally:
            watcher.cancel()
        if trace.disconnected:
            self._finish(trace, 499, texts, reasons, tokens, "client closed the connection")
        else:
            self._finish(trace, 200, texts, reasons, tokens)
        return texts, reasons, tokens

    async def _watch(self, jobs: list[GenerationJob], trace: _Trace, every: float = 0.2) -> None:
        """Cancel `jobs` when the client of a non-streamed request disconnects."""
        if trace.gone is None:
            return
        while not await trace.gone():
            await asyncio.sleep(every)
        trace.disconnected = True
        for job in jobs:
            job.cancel()

    async def _stream(self, jobs: list[GenerationJob], trace: _Trace) -> AsyncIterator[str]:
        count = sum(len(j.choices) for j in jobs)
        texts, reasons, tokens = [""] * count, ["stop"] * count, 0
        chunks = _Chunks(trace, count)
        status, error, logged = 200, None, False
        try:
            for line in chunks.opening():
                yield line
            async for index, event in self._events(jobs, trace):
                if isinstance(event, TextDelta):
                    texts[index] += event.text
                    for line in chunks.text(index, event.text, event.logprobs):
                        yield line
                else:
                    reasons[index] = event.finish_reason
                    tokens += event.tokens
                    for line in chunks.finish(index, event.finish_reason):
                        yield line
            # Logged before the end of the stream goes out: an answer the client has whole is on disk.
            logged = True
            self._finish(trace, status, texts, reasons, tokens, error)
            options = trace.body.stream_options
            if options is not None and options.include_usage:
                usage: dict[str, Any] = {
                    **chunks.base,
                    "choices": [],
                    "usage": _usage(trace.tokens_in, tokens),
                }
                yield f"data: {json.dumps(usage)}\n\n"
            yield "data: [DONE]\n\n"
        except BackendError as exc:
            status, error = 500, str(exc)
            body = {
                "error": {
                    "message": f"generation failed: {exc}",
                    "type": "server_error",
                    "param": None,
                    "code": None,
                }
            }
            yield f"data: {json.dumps(body)}\n\n"
        except (asyncio.CancelledError, GeneratorExit):
            status, error = 499, "client closed the connection"
            tokens = sum(len(c.tokens) for job in jobs for c in job.choices)  # decoded before it stopped
            raise
        finally:
            if not logged:
                self._finish(trace, status, texts, reasons, tokens, error)

    def _finish(
        self,
        trace: _Trace,
        status: int,
        texts: list[str],
        reasons: list[str],
        tokens: int,
        error: str | None = None,
    ) -> None:
        """Record the answer: metrics now, the request log row off the request path, then the shadow."""
        elapsed = time.perf_counter() - trace.started
        version = trace.routed.version
        self.metrics.requests.labels(trace.body.model, version.name, trace.routed.route, str(status)).inc()
        self.metrics.latency.labels(version.name, trace.routed.route).observe(elapsed)
        if trace.first_token is not None:
            self.metrics.ttft.labels(version.name).observe(trace.first_token - trace.started)
        self.metrics.tokens.labels(version.name, "prompt").inc(trace.tokens_in)
        self.metrics.tokens.labels(version.name, "completion").inc(tokens)
        self.metrics.queue.set(self.backend.queue_depth())
        self._log(
            trace,
            version,
            trace.routed.route,
            status,
            texts,
            reasons,
            tokens,
            elapsed,
            error,
            shadow_of=None,
        )
        if trace.routed.shadow is not None and status == 200:
            task = asyncio.get_running_loop().create_task(self._shadow(trace))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    def _log(
        self,
        trace: _Trace,
        version: ModelVersion | None,
        route: str,
        status: int,
        texts: list[str],
        reasons: list[str],
        tokens: int,
        elapsed: float,
        error: str | None,
        *,
        shadow_of: str | None,
        request_id: str | None = None,
        first_token: float | None = None,
        started: float | None = None,
    ) -> None:
        if self.request_log is None:
            return
        first = first_token if shadow_of else trace.first_token
        begin = started if started is not None else trace.started
        body = trace.body
        row = {
            "id": request_id or trace.request_id,
            "at": utcnow(),
            "endpoint": "chat" if trace.chat else "completion",
            "requested_model": body.model,
            "version_id": version.id if version is not None else None,
            "route": route,
            "shadow_of": shadow_of,
            "prompt": trace.prompt,
            "output": texts,
            "finish_reasons": reasons,
            "params": {
                "max_tokens": body.requested_max_tokens,
                "temperature": body.temperature,
                "top_p": body.top_p,
                "n": body.n,
                "seed": body.seed,
                "stop": body.stops,
                "stream": body.stream,
                "response_format": body.response_format,
                **(
                    {"tools": body.tools, "tool_choice": body.tool_choice}
                    if isinstance(body, ChatCompletionRequest) and body.tools
                    else {}
                ),
            },
            "status": status,
            "error": error,
            "latency_ms": round(elapsed * 1000, 3),
            "ttft_ms": round((first - begin) * 1000, 3) if first is not None else None,
            "tokens_in": trace.tokens_in,
            "tokens_out": tokens,
            "user": body.user,
            "session": trace.headers.get("x-session-id"),
            "api_key_id": trace.caller.key_id,
            "client": {
                "metadata": body.metadata or {},
                "user_agent": trace.headers.get("user-agent"),
                "client_request_id": trace.headers.get("x-client-request-id")
                or trace.headers.get("x-request-id"),
            },
        }
        self.request_log.put(self.scrub.row(row) if self.scrub else row)
        if self.scorer is not None and status == 200:
            self.scorer.offer(row)  # the scorers see what was said (the pii score counts it); nothing is kept

    async def _shadow(self, trace: _Trace) -> None:
        """Answer a mirror of the request on the shadow version: logged, counted, never returned."""
        shadow = trace.routed.shadow
        assert shadow is not None
        if self.backend.queue_depth() > self.serve.max_queue // 2:
            self.metrics.shadow.labels(shadow.name, "dropped").inc()  # callers come first
            return
        started = time.perf_counter()
        shadow_trace = replace(
            trace, request_id=f"req-{uuid.uuid4().hex}", started=started, decision=Decision(shadow, "shadow")
        )
        shadow_trace.tokens_in, shadow_trace.first_token = 0, None
        try:
            settings = self.runtime.settings.for_request(trace.body.model, shadow)
            _, prompt_ids = self._encode(trace.body, shadow, settings)
            params = self._params(trace.body, settings, max(len(i) for i in prompt_ids), shadow)
            shadow_trace.tokens_in = sum(len(i) for i in prompt_ids) * trace.body.n
            jobs = [
                GenerationJob(
                    shadow.id, ids, [params] * trace.body.n, asyncio.get_running_loop(), tenant="(shadow)"
                )
                for ids in prompt_ids
            ]
            for job in jobs:
                self.backend.submit(job)
            count = sum(len(j.choices) for j in jobs)
            texts, reasons, tokens = [""] * count, ["stop"] * count, 0
            async for index, event in self._events(jobs, shadow_trace):
                if isinstance(event, TextDelta):
                    texts[index] += event.text
                else:
                    reasons[index], tokens = event.finish_reason, tokens + event.tokens
            status, error = 200, None
        except (OverloadedError, BackendError):  # a full queue, or the shadow was swapped out meanwhile
            self.metrics.shadow.labels(shadow.name, "dropped").inc()
            return
        except Exception as exc:
            status, error, texts, reasons, tokens = 500, str(exc), [], [], 0
        self.metrics.shadow.labels(shadow.name, str(status)).inc()
        self._log(
            shadow_trace,
            shadow,
            "shadow",
            status,
            texts,
            reasons,
            tokens,
            time.perf_counter() - started,
            error,
            shadow_of=trace.request_id,
            request_id=shadow_trace.request_id,
            first_token=shadow_trace.first_token,
            started=started,
        )

    # --- listing ---------------------------------------------------------------------------

    def model_list(self) -> list[dict[str, Any]]:
        names = self.table.names()
        with session(self.workspace.engine) as s:
            versions = list(s.scalars(select(ModelVersion).order_by(ModelVersion.created_at)))
        listed = {name: version for name, version in names.items()}
        for route in self.router.routes:
            listed.setdefault(route, names.get(self.table.canonical(route)))  # type: ignore[arg-type]
        for version in [] if self.router.restricted else versions:  # restricted: only what it serves
            if version.config.get("train", {}).get("objective", "sft") in GENERATIVE_OBJECTIVES:
                listed.setdefault(version.name, version)
        return [
            {
                "id": name,
                "object": "model",
                "created": int(version.created_at.timestamp()) if version is not None else 0,
                "owned_by": "tunesmith",
                "version": version.name if version is not None else None,
                "loaded": version is not None and version.id in self.backend.loaded(),
            }
            for name, version in listed.items()
        ]


@dataclass
class _Trace:
    """What the answer of one request needs to be logged; filled in as the request is routed."""

    request_id: str
    started: float
    body: Any
    caller: Caller
    headers: dict[str, str]
    chat: bool
    prompt: Any  # the messages or text as asked; the rendered prompt once encoded
    decision: Decision | None = None
    tokens_in: int = 0
    first_token: float | None = None
    gone: Callable[[], Awaitable[bool]] | None = None  # whether the client has disconnected
    disconnected: bool = False
    logprobs: dict[int, list[TokenLogprob]] = field(default_factory=dict)  # per choice, when asked

    @property
    def routed(self) -> Decision:
        """The routing decision of an answered request (refused requests may have none)."""
        assert self.decision is not None
        return self.decision


def _prompt_of(body: ChatCompletionRequest | CompletionRequest) -> Any:
    if isinstance(body, ChatCompletionRequest):
        return [m.as_record() for m in body.messages]
    return body.prompt


def _completion(
    request_id: str,
    version: ModelVersion,
    chat: bool,
    texts: list[str],
    reasons: list[str],
    usage: dict[str, int],
    calling: bool = False,
) -> dict[str, Any]:
    """The OpenAI response body of a finished (not streamed) chat or text completion; a chat answer's
    leading <think> block is its `reasoning_content`, as reasoning models are served, and when the
    request offered tools, the calls it writes are its `tool_calls` (finish_reason tool_calls)."""
    choices: list[dict[str, Any]] = []
    for i, (text, reason) in enumerate(zip(texts, reasons, strict=True)):
        if not chat:
            choices.append({"index": i, "text": text, "finish_reason": reason, "logprobs": None})
            continue
        message = answer_message(text, calling)
        finish = "tool_calls" if message.get("tool_calls") and reason == "stop" else reason
        choices.append({"index": i, "message": message, "finish_reason": finish, "logprobs": None})
    return {
        "id": ("chatcmpl-" if chat else "cmpl-") + request_id[4:],
        "object": "chat.completion" if chat else "text_completion",
        "created": int(time.time()),
        "model": version.name,
        "system_fingerprint": f"fp_{version.weights_sha256[:12]}",
        "choices": choices,
        "usage": usage,
    }


class _Chunks:
    """The server-sent events of a streamed completion; a chat answer's leading <think> block goes
    out as `reasoning_content` deltas (`TraceSplitter`), the rest as `content`."""

    def __init__(self, trace: _Trace, count: int) -> None:
        version = trace.routed.version
        self.chat, self.count = trace.chat, count
        self.base = {
            "id": ("chatcmpl-" if self.chat else "cmpl-") + trace.request_id[4:],
            "object": "chat.completion.chunk" if self.chat else "text_completion",
            "created": int(time.time()),
            "model": version.name,
            "system_fingerprint": f"fp_{version.weights_sha256[:12]}",
        }
        self.splitters = [TraceSplitter() for _ in range(count)]
        self.callers = [CallSplitter() for _ in range(count)] if _calling(trace) else None
        self.offsets: dict[int, int] = {}  # each choice's text so far, in characters (text_offset)

    def opening(self) -> list[str]:
        """A chat stream starts with each choice's role."""
        return (
            [self._event(i, {"role": "assistant", "content": ""}, None) for i in range(self.count)]
            if self.chat
            else []
        )

    def text(self, index: int, text: str, entries: tuple[TokenLogprob, ...] = ()) -> list[str]:
        """The events of one delta of choice `index`; its tokens' logprobs ride on the first."""
        logprobs = None
        if entries:
            logprobs = _logprobs_json(list(entries), self.chat, self.offsets.get(index, 0))
            self.offsets[index] = self.offsets.get(index, 0) + sum(len(e.token) for e in entries)
        if not self.chat:
            return [self._event(index, text, None, logprobs)]
        deltas = self._deltas(index, *self.splitters[index].feed(text)) or ([{}] if logprobs else [])
        return [self._event(index, d, None, logprobs if k == 0 else None) for k, d in enumerate(deltas)]

    def finish(self, index: int, reason: str) -> list[str]:
        if not self.chat:
            return [self._event(index, "", reason)]
        held = [self._event(index, d, None) for d in self._deltas(index, *self.splitters[index].flush())]
        if self.callers is None:
            return [*held, self._event(index, {}, reason)]
        called = called_fields(self.callers[index].finish())
        calls = [{"index": k, **call} for k, call in enumerate(called.get("tool_calls") or [])]
        tail = {
            **({"content": called["content"]} if called["content"] else {}),
            **({"tool_calls": calls} if calls else {}),
        }
        if calls and reason == "stop":
            reason = "tool_calls"
        return [*held, *([self._event(index, tail, None)] if tail else []), self._event(index, {}, reason)]

    def _deltas(self, index: int, trace: str, text: str) -> list[dict[str, Any]]:
        if self.callers is not None and text:
            text = self.callers[index].feed(text)  # a call is sent whole at the end
        delta = {**({"reasoning_content": trace} if trace else {}), **({"content": text} if text else {})}
        return [delta] if delta else []

    def _event(
        self,
        index: int,
        delta: dict[str, Any] | str,
        finish: str | None,
        logprobs: dict[str, Any] | None = None,
    ) -> str:
        choice: dict[str, Any] = (
            {"index": index, "delta": delta, "finish_reason": finish, "logprobs": logprobs}
            if isinstance(delta, dict)
            else {"index": index, "text": delta, "finish_reason": finish, "logprobs": logprobs}
        )
        return f"data: {json.dumps({**self.base, 'choices': [choice]}, ensure_ascii=False)}\n\n"


def _logprobs_json(entries: list[TokenLogprob], chat: bool, offset: int = 0) -> dict[str, Any]:
    """Tokens' logprobs as OpenAI lays them out: a chat's `content` entries (with `bytes` and
    `top_logprobs`), or a text completion's parallel lists (`text_offset` from `offset`)."""
    if chat:
        return {
            "content": [
                {
                    "token": e.token,
                    "logprob": e.logprob,
                    "bytes": list(e.token.encode()),
                    "top_logprobs": [{"token": t, "logprob": v, "bytes": list(t.encode())} for t, v in e.top],
                }
                for e in entries
            ],
            "refusal": None,
        }
    offsets = [offset + sum(len(e.token) for e in entries[:i]) for i in range(len(entries))]
    return {
        "tokens": [e.token for e in entries],
        "token_logprobs": [e.logprob for e in entries],
        "top_logprobs": [dict(e.top) for e in entries],
        "text_offset": offsets,
    }


def _parallel(body: ChatCompletionRequest | CompletionRequest) -> bool:
    """Whether a required tool call may be several (a named function is called once)."""
    return (
        isinstance(body, ChatCompletionRequest)
        and body.tool_choice == "required"
        and body.parallel_tool_calls
    )


def _calling(trace: _Trace) -> bool:
    """Whether the answer is read for tool calls: the request offered tools."""
    return isinstance(trace.body, ChatCompletionRequest) and bool(trace.body.offered_tools())


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def default_models(workspace: Workspace) -> list[str]:
    """Every family's production alias that is set: what a server with no `serve.models` loads."""
    with session(workspace.engine) as s:
        families = sorted(set(s.scalars(select(AliasEvent.family).where(AliasEvent.alias == "production"))))
    from tunesmith.registry.versions import alias_target

    return [f"{f}@production" for f in families if alias_target(workspace, f, "production") is not None]


def _reward_model(workspace: Any, ref: str | None) -> Any:
    """The reward model that scores served answers online (monitor.reward_model), loaded at start."""
    if ref is None:
        return None
    from tunesmith.registry.reward import RewardModel

    return RewardModel(workspace, ref)
