"""CPU and edge serving from a version's GGUF export with llama.cpp (`pip install 'tunesmith[llamacpp]'`).

The GGUF file is the registry's export (`tunesmith registry export VERSION --format gguf`), made on
first load when missing, so the weights, chat template and stop tokens are the ones its parity
check proved. Requests are decoded one at a time in a worker thread: llama.cpp gives one sequence
its full CPU, which on small machines beats batching.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from tunesmith.config import ServeConfig
from tunesmith.serve.backends.base import BackendError, GenerationJob, QueuedBackend, SamplingParams
from tunesmith.store import ModelVersion
from tunesmith.workspace import Workspace

log = logging.getLogger("tunesmith.serve")
QUANT = "q8_0"


class LlamaCppBackend(QueuedBackend):
    name = "llamacpp"

    def __init__(self, workspace: Workspace, config: ServeConfig) -> None:
        try:
            import llama_cpp  # noqa: F401
        except ImportError:
            raise BackendError(
                "the llamacpp backend needs llama-cpp-python: pip install 'tunesmith[llamacpp]'"
            ) from None
        super().__init__(config.max_queue, max_per_tenant=config.max_queue_per_key)
        self.workspace = workspace
        self._models: dict[str, tuple[Any, Any, set[int]]] = {}  # version id -> (Llama, tokenizer, eos)

    def loaded(self) -> set[str]:
        return set(self._models)

    def tokenizer(self, version_id: str) -> Any:
        return self._models[version_id][1]

    def context_length(self, version_id: str) -> int:
        return int(self._models[version_id][0].n_ctx())

    def load(self, version: ModelVersion) -> None:
        from llama_cpp import Llama
        from transformers import AutoTokenizer

        from tunesmith.models.generate import stop_token_ids

        if version.id in self._models:
            self._retired.discard(version.id)
            return
        folder = gguf_export(self.workspace, version)
        gguf = next(folder.glob("*.gguf"))
        tokenizer = AutoTokenizer.from_pretrained(folder)
        llm = Llama(model_path=str(gguf), n_ctx=2048, verbose=False, logits_all=False)
        self._models[version.id] = (llm, tokenizer, set(stop_token_ids(tokenizer)))
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
            self._models.pop(version.id, None)
            raise

    def _drop(self, version_id: str) -> None:
        self._models.pop(version_id, None)
        self._retired.discard(version_id)

    def _work(self) -> None:
        while (jobs := self._wait_for_jobs(take=1)) is not None:
            job = jobs[0]
            started = time.perf_counter()
            try:
                self._decode(job)
            except Exception as exc:
                log.exception("llama.cpp generation failed")
                job.fail(BackendError(f"generation failed: {exc}"))
            finally:
                self._done(jobs, time.perf_counter() - started)

    def _decode(self, job: GenerationJob) -> None:
        llm, tokenizer, eos = self._models[job.version_id]

        def decode(ids: list[int]) -> str:
            return str(tokenizer.decode(ids, skip_special_tokens=True))

        for choice in job.choices:
            params = choice.params
            if params.seed is not None:
                llm.set_seed(params.seed + choice.index)
            greedy = params.temperature <= 0
            tokens = llm.generate(
                job.prompt_ids,
                temp=0.0 if greedy else params.temperature,
                top_p=1.0 if greedy else params.top_p,
                top_k=1 if greedy else 0,
                repeat_penalty=1.0,
                reset=True,
            )
            for token in tokens:
                if job.cancelled.is_set():
                    choice.finish_reason = "cancelled"
                    job.deliver(choice, "")
                    break
                job.deliver(choice, choice.advance(int(token), decode, eos))
                if choice.done:
                    break


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
