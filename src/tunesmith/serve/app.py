"""The server: an OpenAI-compatible FastAPI app over the registry, its admin routes, and the loop that
follows the registry (alias moves, API keys, the runtime config file, rollouts) while it runs.

Routes: `POST /v1/chat/completions`, `POST /v1/completions` (both with `stream`), `GET /v1/models`,
`GET /v1/models/{id}`, `GET /health`, `GET /ready`, `GET /metrics`; admin (admin-scope key):
`POST /admin/promote`, `POST /admin/rollback`, `POST /admin/reload`, `GET|POST /admin/rollouts`,
`POST /admin/rollouts/{id}/abort`, `GET /admin/status`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from pydantic import BaseModel, ValidationError
from sqlalchemy import select

from tunesmith.config import GENERATIVE_OBJECTIVES, ConfigError, ProjectConfig
from tunesmith.monitor.alerts import check_alerts
from tunesmith.monitor.feedback import FeedbackError, FeedbackIn, record_feedback
from tunesmith.monitor.scorers import OnlineScorer, load_toxic_words, start_judge
from tunesmith.registry.aliases import PromotionError, describe, promote, rollback
from tunesmith.registry.versions import RegistryError, get_version, version_names
from tunesmith.serve import rollout as rollouts
from tunesmith.serve.backends import (
    Backend,
    BackendError,
    Finished,
    GenerationJob,
    OverloadedError,
    SamplingParams,
    TextDelta,
    create_backend,
)
from tunesmith.serve.keys import Caller, KeyRing
from tunesmith.serve.metrics import ServeMetrics
from tunesmith.serve.requestlog import RequestLogWriter, pii_scrubber
from tunesmith.serve.router import Decision, ModelTable, Router, UnknownModelError
from tunesmith.serve.runtime import ModelSettings, RuntimeConfig
from tunesmith.serve.schemas import (
    AliasMove,
    AliasRollback,
    ApiError,
    ChatCompletionRequest,
    CompletionRequest,
    RolloutStart,
)
from tunesmith.store import AliasEvent, ModelVersion, session
from tunesmith.store.schema import utcnow
from tunesmith.workspace import Workspace, open_workspace

log = logging.getLogger("tunesmith.serve")


class Server:
    """Everything one running server holds: backend, names, routes, keys, runtime config, log, metrics."""

    def __init__(
        self, config: ProjectConfig, workspace: Workspace | None = None, backend: Backend | None = None
    ) -> None:
        self.config = config
        self.serve = config.serve
        self.workspace = workspace or open_workspace(config)
        self.backend = backend or create_backend(self.serve.backend, self.workspace, self.serve)
        self.table = ModelTable(self.workspace, self.backend)
        self.router = Router(self.serve, self.table)
        self.keys = KeyRing(self.workspace)
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
        self.ready = False
        self.startup_error: str | None = None
        self._next_alert_check = 0.0
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._background: set[asyncio.Task[Any]] = set()
        self.table.on_swap = lambda name, version, result: self.metrics.swaps.labels(
            name, version, result
        ).inc()
        self.backend.on_batch = self.metrics.batch.observe  # type: ignore[attr-defined]
        if self.serve.require_keys and self.keys.open:
            raise RegistryError(
                "serve.require_keys is on and there is no active key; `tunesmith serve keys create NAME`"
            )

    # --- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Start the backend and the log writer; load the served models in the background (see /ready)."""
        if self.keys.open:
            log.warning(
                "no API keys: anyone who can reach this server may call it (`tunesmith serve keys create`)"
            )
        self.backend.start()
        if self.request_log is not None:
            self.request_log.start()
        if self.scorer is not None:
            self.scorer.start()
        self._spawn(self._preload, "tunesmith-preload")

    def stop(self) -> None:
        self._stop.set()
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

    def _preload(self) -> None:
        try:
            self.router.refresh_rollouts()
            self.router.preload(self.serve.models or default_models(self.workspace))
        except Exception as exc:
            self.startup_error = str(exc)
            log.error("could not load the served models: %s", exc)
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
        for row, event in rollouts.tick(self.workspace, self.serve, self.config.registry, self._primary_of):
            self.metrics.rollouts.labels(row.route, event).inc()
        self.router.refresh_rollouts()
        if self.config.monitor.alerts and time.monotonic() >= self._next_alert_check:
            self._next_alert_check = time.monotonic() + self.config.monitor.alert_interval_seconds
            embedder = self.scorer.ctx if self.scorer is not None else None
            if embedder is not None and any(
                r.metric.startswith("drift_") for r in self.config.monitor.alerts
            ):
                embedder.embed([""])  # load the scorers' MiniLM once; drift rules share it
            shared = embedder.embedder if embedder is not None else None
            for alert in check_alerts(
                self.workspace, self.config.monitor, self.config.registry, embedder=shared
            ):
                self.metrics.alerts.labels(alert.rule).inc()
        self.table.refresh()  # a completed rollout, or an alert's rollback, moved an alias
        self.metrics.loaded.set(len(self.backend.loaded()))

    def _primary_of(self, route: str) -> str | None:
        try:
            return self.table.ensure(route).id
        except Exception:
            return None

    # --- answering -------------------------------------------------------------------------

    async def answer(
        self, request: Request, body: ChatCompletionRequest | CompletionRequest, caller: Caller
    ) -> Response:
        """Route, generate and answer one request; a refusal (4xx, 503) is logged before it is raised."""
        started = time.perf_counter()
        request_id = f"req-{uuid.uuid4().hex}"
        headers = {k.lower(): v for k, v in request.headers.items()}
        decision: list[Decision] = []
        try:
            return await self._answer(request_id, started, body, caller, headers, decision)
        except ApiError as exc:
            trace = _Trace(
                request_id,
                started,
                body,
                caller,
                headers,
                decision[0] if decision else None,
                _prompt_of(body),
                0,
                isinstance(body, ChatCompletionRequest),
            )
            version = decision[0].version if decision else None
            route = decision[0].route if decision else "refused"
            self.metrics.requests.labels(
                body.model, version.name if version else "", route, str(exc.status)
            ).inc()
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

    async def _answer(
        self,
        request_id: str,
        started: float,
        body: ChatCompletionRequest | CompletionRequest,
        caller: Caller,
        headers: dict[str, str],
        decided: list[Decision],
    ) -> Response:
        chat = isinstance(body, ChatCompletionRequest)
        try:
            decision = await asyncio.to_thread(self.router.decide, body.model, caller, body.user, headers)
        except UnknownModelError as exc:
            raise ApiError(404, str(exc), param="model", code="model_not_found") from None
        except (BackendError, RegistryError) as exc:
            raise ApiError(
                503, f"the model `{body.model}` cannot be served: {exc}", type="server_error"
            ) from None
        decided.append(decision)
        version = decision.version
        settings = self.runtime.settings.for_request(body.model, version)
        prompt, prompt_ids = self._encode(body, version, settings)
        params = self._params(body, settings, max(len(ids) for ids in prompt_ids), version)
        jobs = [
            GenerationJob(version.id, ids, [params] * body.n, asyncio.get_running_loop())
            for ids in prompt_ids
        ]
        try:
            for job in jobs:
                self.backend.submit(job)
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
        self.metrics.queue.set(self.backend.queue_depth())
        trace = _Trace(
            request_id,
            started,
            body,
            caller,
            headers,
            decision,
            prompt,
            sum(len(i) for i in prompt_ids) * body.n,
            chat,
        )
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
        created = int(time.time())
        if chat:
            choices: list[dict[str, Any]] = [
                {
                    "index": i,
                    "message": {"role": "assistant", "content": t},
                    "finish_reason": r,
                    "logprobs": None,
                }
                for i, (t, r) in enumerate(zip(texts, reasons, strict=True))
            ]
        else:
            choices = [
                {"index": i, "text": t, "finish_reason": r, "logprobs": None}
                for i, (t, r) in enumerate(zip(texts, reasons, strict=True))
            ]
        payload = {
            "id": ("chatcmpl-" if chat else "cmpl-") + request_id[4:],
            "object": "chat.completion" if chat else "text_completion",
            "created": created,
            "model": version.name,
            "system_fingerprint": f"fp_{version.weights_sha256[:12]}",
            "choices": choices,
            "usage": _usage(trace.tokens_in, tokens),
        }
        return JSONResponse(payload, headers=response_headers)

    def _encode(
        self, body: ChatCompletionRequest | CompletionRequest, version: ModelVersion, settings: ModelSettings
    ) -> tuple[Any, list[list[int]]]:
        tokenizer = self.backend.tokenizer(version.id)
        if isinstance(body, ChatCompletionRequest):
            messages = [
                {"role": "system" if m.role == "developer" else m.role, "content": m.text()}
                for m in body.messages
            ]
            if settings.system_prompt and messages[0]["role"] != "system":
                messages.insert(0, {"role": "system", "content": settings.system_prompt})
            try:
                text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
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
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=body.temperature
            if body.temperature is not None
            else (settings.temperature if settings.temperature is not None else 1.0),
            top_p=body.top_p if body.top_p is not None else (settings.top_p or 1.0),
            seed=body.seed,
            stop=tuple(dict.fromkeys([*body.stops, *(settings.stop or [])])),
        )

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
        count = sum(len(j.choices) for j in jobs)
        texts, reasons, tokens = [""] * count, ["stop"] * count, 0
        try:
            async for index, event in self._events(jobs, trace):
                if isinstance(event, TextDelta):
                    texts[index] += event.text
                else:
                    reasons[index] = event.finish_reason
                    tokens += event.tokens
        except BackendError as exc:
            self._finish(trace, 500, [], [], 0, str(exc))
            raise ApiError(500, f"generation failed: {exc}", type="server_error") from None
        self._finish(trace, 200, texts, reasons, tokens)
        return texts, reasons, tokens

    async def _stream(self, jobs: list[GenerationJob], trace: _Trace) -> AsyncIterator[str]:
        count = sum(len(j.choices) for j in jobs)
        texts, reasons, tokens = [""] * count, ["stop"] * count, 0
        chat, created = trace.chat, int(time.time())
        base = {
            "id": ("chatcmpl-" if chat else "cmpl-") + trace.request_id[4:],
            "object": "chat.completion.chunk" if chat else "text_completion",
            "created": created,
            "model": trace.routed.version.name,
            "system_fingerprint": f"fp_{trace.routed.version.weights_sha256[:12]}",
        }

        def chunk(index: int, text: str | None, finish: str | None, first: bool = False) -> str:
            if chat:
                delta: dict[str, Any] = {"role": "assistant", "content": ""} if first else {}
                if text:
                    delta["content"] = text
                choice: dict[str, Any] = {
                    "index": index,
                    "delta": delta,
                    "finish_reason": finish,
                    "logprobs": None,
                }
            else:
                choice = {"index": index, "text": text or "", "finish_reason": finish, "logprobs": None}
            return f"data: {json.dumps({**base, 'choices': [choice]}, ensure_ascii=False)}\n\n"

        status, error, logged = 200, None, False
        try:
            if chat:
                for index in range(count):
                    yield chunk(index, None, None, first=True)
            async for index, event in self._events(jobs, trace):
                if isinstance(event, TextDelta):
                    texts[index] += event.text
                    yield chunk(index, event.text, None)
                else:
                    reasons[index] = event.finish_reason
                    tokens += event.tokens
                    yield chunk(index, None, event.finish_reason)
            # Logged before the end of the stream goes out: an answer the client has whole is on disk.
            logged = True
            self._finish(trace, status, texts, reasons, tokens, error)
            options = trace.body.stream_options
            if options is not None and options.include_usage:
                usage: dict[str, Any] = {**base, "choices": [], "usage": _usage(trace.tokens_in, tokens)}
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
        shadow_trace = _Trace(
            f"req-{uuid.uuid4().hex}",
            started,
            trace.body,
            trace.caller,
            trace.headers,
            Decision(shadow, "shadow"),
            trace.prompt,
            0,
            trace.chat,
        )
        try:
            settings = self.runtime.settings.for_request(trace.body.model, shadow)
            _, prompt_ids = self._encode(trace.body, shadow, settings)
            params = self._params(trace.body, settings, max(len(i) for i in prompt_ids), shadow)
            shadow_trace.tokens_in = sum(len(i) for i in prompt_ids) * trace.body.n
            jobs = [
                GenerationJob(shadow.id, ids, [params] * trace.body.n, asyncio.get_running_loop())
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
        except OverloadedError:
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
        for version in versions:
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


class _Trace:
    """What the answer of one request needs to be logged."""

    def __init__(
        self,
        request_id: str,
        started: float,
        body: Any,
        caller: Caller,
        headers: dict[str, str],
        decision: Decision | None,
        prompt: Any,
        tokens_in: int,
        chat: bool,
    ) -> None:
        self.request_id, self.started, self.body, self.caller = request_id, started, body, caller
        self.headers, self.decision, self.prompt, self.tokens_in, self.chat = (
            headers,
            decision,
            prompt,
            tokens_in,
            chat,
        )
        self.first_token: float | None = None

    @property
    def routed(self) -> Decision:
        """The routing decision of an answered request (refused requests may have none)."""
        assert self.decision is not None
        return self.decision


def _feedback_kind(row: Any) -> str:
    if row.preference is not None:
        return "preference"
    if row.correction:
        return "correction"
    if row.rating is not None:
        return f"rating_{row.scale}"
    return "comment"


def _prompt_of(body: ChatCompletionRequest | CompletionRequest) -> Any:
    if isinstance(body, ChatCompletionRequest):
        return [{"role": m.role, "content": m.text()} for m in body.messages]
    return body.prompt


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def default_models(workspace: Workspace) -> list[str]:
    """Every family's production alias that is set: what a server with no `serve.models` loads."""
    with session(workspace.engine) as s:
        families = sorted(set(s.scalars(select(AliasEvent.family).where(AliasEvent.alias == "production"))))
    from tunesmith.registry.versions import alias_target

    return [f"{f}@production" for f in families if alias_target(workspace, f, "production") is not None]


# --- the app -------------------------------------------------------------------------------


def _reward_model(workspace: Any, ref: str | None) -> Any:
    """The reward model that scores served answers online (monitor.reward_model), loaded at start."""
    if ref is None:
        return None
    from tunesmith.registry.reward import RewardModel

    return RewardModel(workspace, ref)


def create_app(server: Server) -> FastAPI:  # noqa: PLR0915 (one nested function per route)
    """The FastAPI app of `server`; its lifespan starts and stops the server."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        server.start()
        try:
            yield
        finally:
            await asyncio.to_thread(server.stop)

    app = FastAPI(
        title="tunesmith", summary="OpenAI-compatible API over the tunesmith registry", lifespan=lifespan
    )
    app.state.server = server
    bodies: list[type[BaseModel]] = []  # request models the routes read themselves, for the OpenAPI document

    def body(model: type[BaseModel]) -> dict[str, Any]:
        """The OpenAPI request body of a route that reads `model` itself (its errors are OpenAI-shaped,
        and an oversized body is refused before it is parsed)."""
        bodies.append(model)
        schema = {"$ref": f"#/components/schemas/{model.__name__}"}
        return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.body, status_code=exc.status, headers=exc.headers)

    @app.exception_handler(Exception)
    async def internal_error(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return JSONResponse(
            ApiError(500, f"internal error: {exc}", type="server_error").body, status_code=500
        )

    def caller(request: Request) -> Caller:
        header = request.headers.get("authorization", "")
        token = header[7:].strip() if header.lower().startswith("bearer ") else None
        who = server.keys.authenticate(token)
        if who is None:
            message = (
                "Incorrect API key provided."
                if token
                else "Missing API key: send `Authorization: Bearer KEY`."
            )
            raise ApiError(401, message, code="invalid_api_key")
        return who

    def admin(who: Caller = Depends(caller)) -> Caller:
        if not who.admin:
            raise ApiError(
                403, f"the key {who.name!r} has no admin scope", type="permission_error", code="forbidden"
            )
        return who

    async def parse(request: Request, model: type[BaseModel]) -> Any:
        declared = request.headers.get("content-length")
        limit = server.serve.max_request_bytes
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise ApiError(
                413, f"the request body is over the server's limit of {limit} bytes", code="request_too_large"
            )
        raw = await request.body()
        if len(raw) > limit:
            raise ApiError(
                413, f"the request body is over the server's limit of {limit} bytes", code="request_too_large"
            )
        try:
            data = json.loads(raw or b"null")
        except ValueError as exc:
            raise ApiError(400, f"the body is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise ApiError(400, "the body must be a JSON object")
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or None
            message = str(first["msg"]).removeprefix("Value error, ")
            raise ApiError(400, f"{where}: {message}" if where else message, param=where) from None

    @app.post("/v1/chat/completions", response_model=None, openapi_extra=body(ChatCompletionRequest))
    async def chat_completions(request: Request, who: Caller = Depends(caller)) -> Response:
        _require_ready(server)
        return await server.answer(request, await parse(request, ChatCompletionRequest), who)

    @app.post("/v1/completions", response_model=None, openapi_extra=body(CompletionRequest))
    async def completions(request: Request, who: Caller = Depends(caller)) -> Response:
        _require_ready(server)
        return await server.answer(request, await parse(request, CompletionRequest), who)

    @app.get("/v1/models")
    async def models(_: Caller = Depends(caller)) -> dict[str, Any]:
        return {"object": "list", "data": await asyncio.to_thread(server.model_list)}

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str, _: Caller = Depends(caller)) -> dict[str, Any]:
        for entry in await asyncio.to_thread(server.model_list):
            if entry["id"] == model_id:
                return entry
        raise ApiError(404, f"the model `{model_id}` does not exist", param="model", code="model_not_found")

    @app.post("/v1/feedback", openapi_extra=body(FeedbackIn))
    async def feedback(request: Request, who: Caller = Depends(caller)) -> dict[str, Any]:
        body = await parse(request, FeedbackIn)
        if server.scrub:
            body = server.scrub.feedback(body)
        try:
            row = await asyncio.to_thread(
                record_feedback,
                server.workspace,
                body,
                api_key_id=who.key_id,
                reference_metrics=server.config.monitor.reference_metrics,
            )
        except FeedbackError as exc:
            raise ApiError(404 if "no request" in str(exc) else 400, str(exc), param="request_id") from None
        server.metrics.feedback.labels(row.version_id or "", _feedback_kind(row)).inc()
        return {"object": "feedback", "id": row.id, "request_id": row.request_id, "status": "recorded"}

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready")
    async def ready() -> JSONResponse:
        names = {name: v.name for name, v in server.table.names().items()}
        if server.ready:
            return JSONResponse({"status": "ready", "models": names})
        status = "failed" if server.startup_error else "loading"
        return JSONResponse(
            {"status": status, "error": server.startup_error, "models": names}, status_code=503
        )

    @app.get("/metrics")
    async def metrics() -> PlainTextResponse:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        server.metrics.queue.set(server.backend.queue_depth())
        return PlainTextResponse(generate_latest(server.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.post("/admin/promote", openapi_extra=body(AliasMove))
    async def admin_promote(request: Request, who: Caller = Depends(admin)) -> dict[str, Any]:
        move = await parse(request, AliasMove)

        def run() -> AliasEvent:
            version = get_version(server.workspace, move.version)
            return promote(
                server.workspace,
                server.config.registry,
                version,
                move.alias,
                force=move.force,
                reason=move.reason,
                actor=f"api:{who.name}",
            )

        return await _alias_change(server, run)

    @app.post("/admin/rollback", openapi_extra=body(AliasRollback))
    async def admin_rollback(request: Request, who: Caller = Depends(admin)) -> dict[str, Any]:
        move = await parse(request, AliasRollback)
        return await _alias_change(
            server,
            lambda: rollback(
                server.workspace, move.family, alias=move.alias, reason=move.reason, actor=f"api:{who.name}"
            ),
        )

    @app.post("/admin/reload")
    async def admin_reload(_: Caller = Depends(admin)) -> dict[str, Any]:
        try:
            settings = server.runtime.reload()
        except ConfigError as exc:
            server.metrics.reloads.labels("rejected").inc()
            raise ApiError(
                400,
                f"runtime config rejected; the previous settings keep serving: {exc}",
                code="invalid_config",
            ) from None
        server.metrics.reloads.labels("ok").inc()
        return {"status": "reloaded", "models": sorted(settings.models)}

    @app.get("/admin/rollouts")
    async def admin_rollouts(_: Caller = Depends(admin)) -> dict[str, Any]:
        return {"data": await asyncio.to_thread(_rollout_list, server)}

    @app.post("/admin/rollouts", openapi_extra=body(RolloutStart))
    async def admin_rollout_start(request: Request, _: Caller = Depends(admin)) -> dict[str, Any]:
        start = await parse(request, RolloutStart)

        def run() -> dict[str, Any]:
            version = get_version(server.workspace, start.version)
            row = rollouts.start_rollout(server.workspace, server.serve, start.route, version)
            server.router.refresh_rollouts()
            return rollouts.describe(row, {version.id: version.name})

        try:
            return await asyncio.to_thread(run)
        except RegistryError as exc:
            raise ApiError(409, str(exc), code="conflict") from None

    @app.post("/admin/rollouts/{rollout_id}/abort")
    async def admin_rollout_abort(rollout_id: str, who: Caller = Depends(admin)) -> dict[str, Any]:
        def run() -> dict[str, Any]:
            row = rollouts.abort_rollout(
                server.workspace, rollout_id, f"aborted through the API by {who.name}"
            )
            server.router.refresh_rollouts()
            return rollouts.describe(row, {})

        try:
            return await asyncio.to_thread(run)
        except RegistryError as exc:
            raise ApiError(404, str(exc), code="not_found") from None

    @app.get("/admin/status")
    async def admin_status(_: Caller = Depends(admin)) -> dict[str, Any]:
        return {
            "backend": server.backend.name,
            "ready": server.ready,
            "models": {name: v.name for name, v in server.table.names().items()},
            "loaded": sorted(server.backend.loaded()),
            "queue": server.backend.queue_depth(),
            "runtime_config": str(server.runtime.path) if server.runtime.path else None,
            "request_log_pending": server.request_log.pending() if server.request_log else None,
        }

    _document_bodies(app, server, bodies)
    return app


def _document_bodies(app: FastAPI, server: Server, models: list[type[BaseModel]]) -> None:
    """Put the schemas that the routes' bodies refer to into the app's OpenAPI document; the `model` field of
    the generation requests lists the names this server answers to as examples (for /docs, and for
    API fuzzers, which then reach generation instead of only 404s)."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = generate()
            schemas = document.setdefault("components", {}).setdefault("schemas", {})
            for model in models:
                schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
                schemas.update(schema.pop("$defs", {}))
                schemas[model.__name__] = schema
        schemas = app.openapi_schema["components"]["schemas"]  # type: ignore[index]
        names = sorted(server.table.names()) if server.ready else []
        for request in (ChatCompletionRequest, CompletionRequest):
            field = schemas[request.__name__]["properties"]["model"]
            if names:
                field["examples"] = names
        return app.openapi_schema  # type: ignore[return-value]

    app.openapi = openapi  # type: ignore[method-assign]


def _require_ready(server: Server) -> None:
    if not server.ready:
        raise ApiError(
            503,
            server.startup_error or "the server is still loading its models; see GET /ready",
            type="server_error",
            code="not_ready",
            headers={"Retry-After": "5"},
        )


async def _alias_change(server: Server, move: Any) -> dict[str, Any]:
    """Apply an alias move through the registry, then follow it at once (load, warm up, switch)."""
    try:
        event = await asyncio.to_thread(move)
    except PromotionError as exc:
        raise ApiError(409, str(exc), code="promotion_refused") from None
    except RegistryError as exc:
        raise ApiError(404 if "no version" in str(exc) or "unknown" in str(exc) else 409, str(exc)) from None
    changes = await asyncio.to_thread(server.table.refresh, force=True)
    names = version_names(server.workspace)
    return {
        "event": describe(event, names),
        "swaps": [{"model": m, "version": v, "result": r} for m, v, r in changes],
    }


def _rollout_list(server: Server) -> list[dict[str, Any]]:
    names = version_names(server.workspace)
    return [rollouts.describe(r, names) for r in rollouts.list_rollouts(server.workspace)]


def run_server(config: ProjectConfig, *, host: str | None = None, port: int | None = None) -> None:
    """`tunesmith serve`: run the app under uvicorn until interrupted."""
    import uvicorn

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    server = Server(config)
    uvicorn.run(
        create_app(server), host=host or config.serve.host, port=port or config.serve.port, log_level="info"
    )


@contextmanager
def uvicorn_in_background(
    app: Any, *, name: str, ready: Callable[[], object] = lambda: True, timeout: float = 60.0
) -> Iterator[str]:
    """The base URL of `app` under uvicorn on a free 127.0.0.1 port, in a thread, until the block ends.

    Waits until uvicorn has started and `ready()` is true (or `timeout` passes; the caller checks).
    """
    import socket

    import uvicorn

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    runner = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=runner.run, name=name, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and thread.is_alive() and not (runner.started and ready()):
        time.sleep(0.02)
    try:
        if not runner.started:
            raise RuntimeError(f"{name} did not start on 127.0.0.1:{port}")
        yield f"http://127.0.0.1:{port}"
    finally:
        runner.should_exit = True
        thread.join(timeout=60)


@contextmanager
def serve_in_background(config: ProjectConfig, *, timeout: float = 300.0) -> Iterator[tuple[str, Server]]:
    """(base URL, server) of a server under uvicorn on a free 127.0.0.1 port, ready, until the block ends.

    For tests, benchmarks and notebooks; `tunesmith serve` is the way to run one for real.
    """
    server = Server(config)
    app = create_app(server)

    def ready() -> object:
        return server.ready or server.startup_error

    with uvicorn_in_background(app, name="tunesmith-uvicorn", ready=ready, timeout=timeout) as url:
        if not server.ready:
            raise RegistryError(f"the server did not become ready: {server.startup_error or 'timed out'}")
        yield url, server
