"""CPU and edge serving on llama.cpp's own server, with continuous batching.

Each served version runs in one `llama-server` (see `tunesmith.models.llamacpp`) started from the
version's q8_0 GGUF export, made on first load when missing, so the weights, chat template and stop
tokens are the ones its parity check proved. The process has `serve.max_batch_size` slots: a request
takes a free slot and joins the running batch at the next decode step, and a finished one leaves it
at once, so a new request never waits for a whole batch to end. Sampling, stop strings and
incremental detokenisation are llama.cpp's; the prompt is the version's chat template, tokenised
by its tokenizer as on every backend. A client that goes away closes its stream, which frees the slot.
"""

from __future__ import annotations

import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from tunesmith.config import ServeConfig
from tunesmith.models.llamacpp import INSTALL_HINT, LlamaServer, LlamaServerError, find_server
from tunesmith.serve.backends.base import (
    BackendError,
    Choice,
    GenerationJob,
    QueuedBackend,
    SamplingParams,
)
from tunesmith.store import ModelVersion
from tunesmith.workspace import Workspace

log = logging.getLogger("tunesmith.serve")
QUANT = "q8_0"
CONTEXT = 2048  # each slot's context


class _Served:
    def __init__(self, server: LlamaServer, tokenizer: Any, eos: set[int]) -> None:
        self.server, self.tokenizer, self.eos = server, tokenizer, eos


class LlamaCppBackend(QueuedBackend):
    name = "llamacpp"

    def __init__(self, workspace: Workspace, config: ServeConfig) -> None:
        if find_server() is None:
            raise BackendError(f"the llamacpp backend needs llama.cpp's llama-server: {INSTALL_HINT}")
        super().__init__(config.max_queue, max_per_tenant=config.max_queue_per_key)
        self.workspace = workspace
        self.slots = config.max_batch_size
        self._models: dict[str, _Served] = {}
        self._threads: list[Any] = []

    def grammar_refusal(self, version_id: str) -> str | None:
        return None  # llama.cpp compiles the JSON schema into its own grammar

    def loaded(self) -> set[str]:
        return set(self._models)

    def tokenizer(self, version_id: str) -> Any:
        return self._models[version_id].tokenizer

    def context_length(self, version_id: str) -> int:
        return self._models[version_id].server.context

    def start(self) -> None:
        """One worker per slot, so as many requests decode together as the server has slots."""
        import threading

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
        for served in list(self._models.values()):
            served.server.close()
        self._models.clear()

    def load(self, version: ModelVersion) -> None:
        from transformers import AutoTokenizer

        from tunesmith.models.generate import stop_token_ids

        if version.id in self._models:
            self._retired.discard(version.id)
            return
        folder = gguf_export(self.workspace, version)
        tokenizer = AutoTokenizer.from_pretrained(folder)
        logs = self.workspace.root / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        try:
            server = LlamaServer(
                next(folder.glob("*.gguf")),
                slots=self.slots,
                context=CONTEXT,
                log_file=logs / f"llama-server-{version.name}.log",
            )
        except LlamaServerError as exc:
            raise BackendError(str(exc)) from None
        self._models[version.id] = _Served(server, tokenizer, set(stop_token_ids(tokenizer)))
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
            self._models.pop(version.id).server.close()
            raise

    def _drop(self, version_id: str) -> None:
        served = self._models.pop(version_id, None)
        self._retired.discard(version_id)
        if served is not None:
            served.server.close()

    def _work(self) -> None:
        while (jobs := self._wait_for_jobs(take=1)) is not None:
            job = jobs[0]
            started = time.perf_counter()
            try:
                served = self._models[job.version_id]
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
                self._done(jobs, time.perf_counter() - started)

    def _decode(self, served: _Served, job: GenerationJob, choice: Choice) -> None:
        params = choice.params
        request: dict[str, Any] = {
            "n_predict": params.max_tokens,
            "temperature": max(params.temperature, 0.0),
            "top_p": params.top_p,
            "stop": list(params.stop),
            "seed": -1 if params.seed is None else params.seed + choice.index,
        }
        if params.schema is not None:
            request["json_schema"] = json.loads(params.schema)
        chunks = served.server.stream(job.prompt_ids, request)
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


def gguf_export(workspace: Workspace, version: ModelVersion, quant: str = QUANT) -> Path:
    """The folder of the version's GGUF export, exported now when there is none that passed parity."""
    from tunesmith.registry.export import export_version

    folder = workspace.root / "exports" / f"{version.name}-gguf-{quant}"
    parity = folder / "parity.json"
    if parity.exists() and json.loads(parity.read_text(encoding="utf-8")).get("passed"):
        return folder
    log.info("exporting %s to GGUF (%s) for llama.cpp", version.name, quant)
    target, _ = export_version(workspace, version, "gguf", folder, quant=quant)
    return target
