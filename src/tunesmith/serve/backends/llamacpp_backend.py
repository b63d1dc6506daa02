"""CPU and edge serving on llama.cpp's own server, with continuous batching.

Versions run in `llama-server` processes (see `tunesmith.models.llamacpp`) with `serve.max_batch_size`
slots: a request takes a free slot and joins the running batch at the next decode step, and a
finished one leaves it at once, so a new request never waits for a whole batch to end. Sampling,
penalties, stop strings, JSON-schema grammars and incremental detokenisation are llama.cpp's; the
prompt is the version's chat template, tokenised by its tokenizer as on every backend. A client that
goes away closes its stream, which frees the slot.

A LoRA version is served as its GGUF LoRA export over the base model's GGUF: every LoRA version of one
base shares one server and one copy of the base, each request applying its own adapter. Loading one
more starts a server with the longer adapter list and moves requests to it once it is warm; the old
one stops when its last stream ends. Other versions (full fine-tunes, adapters on another version, or
an adapter llama.cpp cannot apply) run their own q8_0 GGUF export. Exports are made on first load
when missing; each passed its parity check through llama.cpp.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunesmith.config import ServeConfig
from tunesmith.models.llamacpp import INSTALL_HINT, LlamaServer, LlamaServerError, find_server
from tunesmith.registry.export import served_gguf
from tunesmith.serve.backends.base import (
    BackendError,
    Choice,
    GenerationJob,
    QueuedBackend,
    SamplingParams,
    TokenLogprob,
)
from tunesmith.store import ModelVersion
from tunesmith.workspace import Workspace

log = logging.getLogger("tunesmith.serve")
CONTEXT = 2048  # each slot's context


class _Engine:
    """One llama-server, the versions it serves (by `--lora` position; None: the model itself), and
    how many streams it has open, so a replaced one stops only when its last stream ends."""

    def __init__(self, server: LlamaServer, loras: list[tuple[str, Path]]) -> None:
        self.server, self.loras = server, loras
        self.streams = 0
        self.replaced = False


@dataclass
class _Served:
    engine: _Engine
    lora: int | None
    tokenizer: Any
    eos: set[int]


class LlamaCppBackend(QueuedBackend):
    name = "llamacpp"

    def __init__(self, workspace: Workspace, config: ServeConfig) -> None:
        if find_server() is None:
            raise BackendError(f"the llamacpp backend needs llama.cpp's llama-server: {INSTALL_HINT}")
        super().__init__(config.max_queue, max_per_tenant=config.max_queue_per_key)
        self.workspace = workspace
        self.slots = config.max_batch_size
        self._models: dict[str, _Served] = {}
        self._bases: dict[Path, _Engine] = {}  # base GGUF -> the engine serving its LoRA versions
        self._engines_lock = threading.Lock()
        self._threads: list[Any] = []

    def grammar_refusal(self, version_id: str) -> str | None:
        return None  # llama.cpp compiles the JSON schema into its own grammar

    def logprobs_refusal(self, version_id: str) -> str | None:
        return None  # llama-server reports them (n_probs)

    def tool_grammar_refusal(self, version_id: str) -> str | None:
        return (
            "the llamacpp backend follows JSON schemas, not the tool-call grammar; tool_choice auto "
            "works, or serve this version with serve.backend transformers"
        )

    def loaded(self) -> set[str]:
        return set(self._models)

    def tokenizer(self, version_id: str) -> Any:
        return self._models[version_id].tokenizer

    def context_length(self, version_id: str) -> int:
        return self._models[version_id].engine.server.context

    def start(self) -> None:
        """One worker per slot, so as many requests decode together as the server has slots."""
        for slot in range(self.slots):
            thread = threading.Thread(target=self._work, name=f"tunesmith-llamacpp-{slot}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def close(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(timeout=60)
        for engine in {id(s.engine): s.engine for s in self._models.values()}.values():
            engine.server.close()
        self._models.clear()
        self._bases.clear()

    def load(self, version: ModelVersion) -> None:
        from transformers import AutoTokenizer

        from tunesmith.models.generate import stop_token_ids

        if version.id in self._models:
            self._retired.discard(version.id)
            return
        model_file, adapter = served_gguf(self.workspace, version)
        tokenizer = AutoTokenizer.from_pretrained((adapter or model_file).parent)
        eos = set(stop_token_ids(tokenizer))
        if adapter is None:
            engine = self._start(model_file, [], version.name)
            self._models[version.id] = _Served(engine, None, tokenizer, eos)
        else:
            self._add_lora(version, model_file, adapter, tokenizer, eos)
        prompt = tokenizer.apply_chat_template(
            [{"role": "user", "content": "Hello"}], add_generation_prompt=True, tokenize=False
        )
        job = GenerationJob(
            version.id,
            list(tokenizer(str(prompt), add_special_tokens=False)["input_ids"]),
            [SamplingParams(max_tokens=2, temperature=0.0)],
        )
        try:
            self.submit(job, force=True)
            job.wait(300)
        except Exception:
            self._drop(version.id)
            raise

    def _add_lora(
        self, version: ModelVersion, base: Path, adapter: Path, tokenizer: Any, eos: set[int]
    ) -> None:
        """Serve `version` from its base's engine: a new one with one more adapter, warm before use."""
        with self._engines_lock:
            old = self._bases.get(base)
            loras = [(v, p) for v, p in (old.loras if old else []) if v in self._models] + [
                (version.id, adapter)
            ]
        engine = self._start(base, loras, f"{base.stem}")
        with self._engines_lock:
            for index, (version_id, _) in enumerate(loras):
                served = self._models.get(version_id)
                self._models[version_id] = _Served(
                    engine, index, *((served.tokenizer, served.eos) if served else (tokenizer, eos))
                )
            self._bases[base] = engine
            if old is not None:
                old.replaced = True
                if old.streams == 0:
                    old.server.close()

    def _start(self, model: Path, loras: list[tuple[str, Path]], label: str) -> _Engine:
        logs = self.workspace.root / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        try:
            server = LlamaServer(
                model,
                slots=self.slots,
                context=CONTEXT,
                loras=[path for _, path in loras],
                log_file=logs / f"llama-server-{label}.log",
            )
        except LlamaServerError as exc:
            raise BackendError(str(exc)) from None
        return _Engine(server, loras)

    def _drop(self, version_id: str) -> None:
        with self._engines_lock:
            served = self._models.pop(version_id, None)
            self._retired.discard(version_id)
            if served is None or any(s.engine is served.engine for s in self._models.values()):
                return  # its adapter stays loaded, unused, until the engine is next replaced
            served.engine.replaced = True
            self._bases = {b: e for b, e in self._bases.items() if e is not served.engine}
            if served.engine.streams == 0:
                served.engine.server.close()

    def _open(self, version_id: str) -> _Served:
        with self._engines_lock:
            served = self._models[version_id]
            served.engine.streams += 1
            return served

    def _close(self, served: _Served) -> None:
        with self._engines_lock:
            served.engine.streams -= 1
            if served.engine.replaced and served.engine.streams == 0:
                served.engine.server.close()

    def _work(self) -> None:
        while (jobs := self._wait_for_jobs(take=1)) is not None:
            job = jobs[0]
            started = time.perf_counter()
            served = self._open(job.version_id)
            try:
                if len(job.choices) == 1:
                    self._decode(served, job, job.choices[0])
                else:  # n > 1: the choices take slots side by side
                    with ThreadPoolExecutor(len(job.choices)) as pool:
                        for done in [pool.submit(self._decode, served, job, c) for c in job.choices]:
                            done.result()
            except Exception as exc:
                log.exception("llama.cpp generation failed")
                job.fail(BackendError(f"generation failed: {exc}"))
            finally:
                self._close(served)
                self._done(jobs, time.perf_counter() - started)

    def _decode(self, served: _Served, job: GenerationJob, choice: Choice) -> None:
        params = choice.params
        request: dict[str, Any] = {
            "n_predict": params.max_tokens,
            "temperature": max(params.temperature, 0.0),
            "top_p": params.top_p,
            "stop": list(params.stop),
            "seed": -1 if params.seed is None else params.seed + choice.index,
            "presence_penalty": params.presence_penalty,
            "frequency_penalty": params.frequency_penalty,
            "repeat_last_n": CONTEXT,  # penalties count the whole answer, as OpenAI's do
        }
        if params.schema is not None:
            request["json_schema"] = json.loads(params.schema)
        if params.logprobs is not None:  # the model's own distribution: llama.cpp's default
            request["n_probs"] = max(params.logprobs, 1)
        chunks = served.engine.server.stream(job.prompt_ids, request, served.lora)
        try:
            for chunk in chunks:
                if job.cancelled.is_set():
                    choice.finish_reason = "cancelled"
                    job.deliver(choice, "")
                    return
                tokens = [int(t) for t in chunk.get("tokens", [])]
                content = str(chunk.get("content", ""))
                ended = next((i for i, t in enumerate(tokens) if t in served.eos), None)
                if ended is not None:  # a stop token llama.cpp does not count as end of generation
                    tokens, content = tokens[:ended], ""
                if params.logprobs is not None:
                    choice.logprobs += _logprobs(chunk, len(tokens), params.logprobs)
                choice.tokens.extend(tokens)
                choice.text += content
                if ended is not None or chunk.get("stop"):
                    limit = ended is None and chunk.get("stop_type") == "limit"
                    choice.finish_reason = "length" if limit else "stop"
                    choice.sent = len(choice.text)
                    job.deliver(choice, content)
                    return
                choice.sent = len(choice.text)
                job.deliver(choice, content)
        finally:
            chunks.close()  # type: ignore[attr-defined]
        if not choice.done:
            choice.finish_reason = "stop"
            job.deliver(choice, "")


def _logprobs(chunk: dict[str, Any], count: int, top: int) -> list[TokenLogprob]:
    """The first `count` tokens' log-probabilities of a llama-server chunk (`n_probs`), with `top`
    alternatives each."""
    entries = chunk.get("completion_probabilities") or []
    return [
        TokenLogprob(
            str(entry["token"]),
            float(entry["logprob"]),
            tuple((str(t["token"]), float(t["logprob"])) for t in entry.get("top_logprobs", [])[:top]),
        )
        for entry in entries[:count]
    ]
