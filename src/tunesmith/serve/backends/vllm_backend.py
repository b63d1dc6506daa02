"""GPU serving with vLLM (`pip install 'tunesmith[vllm]'`, Linux with CUDA): LoRA versions share one engine.

One vLLM engine holds the base model; every LoRA version is a `LoRARequest` on it, so any mix of
versions is decoded together by vLLM's own scheduler. A full fine-tune gets the engine to itself
(vLLM reserves most of the GPU per engine), so a server holds one base or one full version.
Queued jobs are handed to the engine together; each job's text arrives when its batch finishes.
"""

from __future__ import annotations

import itertools
import logging
import time
from typing import Any

from tunesmith.config import ProjectConfig, ServeConfig
from tunesmith.serve.backends.base import BackendError, GenerationJob, QueuedBackend, SamplingParams
from tunesmith.store import ModelVersion
from tunesmith.workspace import Workspace

log = logging.getLogger("tunesmith.serve")


class VllmBackend(QueuedBackend):
    name = "vllm"

    def __init__(self, workspace: Workspace, config: ServeConfig) -> None:
        try:
            import torch
            import vllm  # noqa: F401
        except ImportError:
            raise BackendError(
                "the vllm backend needs vLLM: pip install 'tunesmith[vllm]' (Linux, CUDA)"
            ) from None
        if not torch.cuda.is_available():
            raise BackendError("the vllm backend needs a CUDA GPU; use backend transformers or llamacpp")
        super().__init__(config.max_queue, config.max_batch_size, config.max_queue_per_key)
        self.workspace = workspace
        self._engine: Any = None
        self._engine_key: str | None = None
        self._tokenizer: Any = None
        self._eos: set[int] = set()
        self._loras: dict[str, Any] = {}  # version id -> LoRARequest (None: the engine's own weights)
        # vLLM caches an adapter by its int id, so an id is never given twice in the engine's life:
        # after a hot swap drops a version, `len() + 1` would hand its id (and cached weights) to another
        self._lora_ids = itertools.count(1)

    def loaded(self) -> set[str]:
        return set(self._loras)

    def tokenizer(self, version_id: str) -> Any:
        return self._tokenizer

    def context_length(self, version_id: str) -> int:
        return int(self._engine.llm_engine.model_config.max_model_len)

    def load(self, version: ModelVersion) -> None:
        from transformers import AutoTokenizer
        from vllm import LLM
        from vllm.lora.request import LoRARequest

        from tunesmith.models.generate import stop_token_ids
        from tunesmith.models.loading import convert_bundled, resolve

        if version.id in self._loras:
            return
        lora = version.method in ("lora", "qlora") and version.parent_id is None
        if lora:
            model_cfg = version.config["model"]
            resolved = resolve(model_cfg["id"], model_cfg["source"], model_cfg["revision"])
            if resolved.origin == "bundled-gguf":  # vLLM reads the converted safetensors
                resolved = convert_bundled(resolved)
            location = str(resolved.path) if resolved.path is not None else str(resolved.hub_id)
            key = f"base:{location}"
        else:
            location, key = version.path, f"version:{version.id}"
        if self._engine is None:
            dtype = ProjectConfig.model_validate(version.config).weights_dtype
            self._engine = LLM(
                model=location, enable_lora=lora, max_lora_rank=64, dtype=dtype if dtype != "auto" else "auto"
            )
            self._engine_key = key
            self._tokenizer = AutoTokenizer.from_pretrained(version.path if not lora else location)
            self._eos = set(stop_token_ids(self._tokenizer))
        elif key != self._engine_key:
            raise BackendError(
                f"{version.name} needs another base than this vLLM server holds ({self._engine_key}); "
                "run one server per base model"
            )
        self._loras[version.id] = (
            LoRARequest(version.name, next(self._lora_ids), version.path) if lora else None
        )
        job = GenerationJob(version.id, self._tokenizer("Hello")["input_ids"], [SamplingParams(2, 0.0)])
        self.submit(job, force=True)
        try:
            job.wait(600)
        except Exception:
            self._loras.pop(version.id, None)
            raise

    def _drop(self, version_id: str) -> None:
        self._loras.pop(version_id, None)
        self._retired.discard(version_id)

    def _work(self) -> None:
        from vllm import SamplingParams as VllmParams
        from vllm.inputs import TokensPrompt

        while (jobs := self._wait_for_jobs()) is not None:
            started = time.perf_counter()
            rows = [(job, choice) for job in jobs for choice in job.choices if not job.cancelled.is_set()]
            if not rows:
                self._done(jobs, 0.0)
                continue
            try:
                outputs = self._engine.generate(
                    [TokensPrompt(prompt_token_ids=job.prompt_ids) for job, _ in rows],
                    sampling_params=[
                        VllmParams(
                            max_tokens=c.params.max_tokens,
                            temperature=c.params.temperature,
                            top_p=c.params.top_p,
                            seed=None if c.params.seed is None else c.params.seed + c.index,
                            presence_penalty=c.params.presence_penalty,
                            frequency_penalty=c.params.frequency_penalty,
                            stop_token_ids=sorted(self._eos),
                            skip_special_tokens=True,
                        )
                        for _, c in rows
                    ],
                    lora_request=[self._loras.get(job.version_id) for job, _ in rows],
                    use_tqdm=False,
                )
                for (job, choice), output in zip(rows, outputs, strict=True):
                    for token in output.outputs[0].token_ids:
                        job.deliver(choice, choice.advance(int(token), self._decode, self._eos))
                        if choice.done:
                            break
                    if not choice.done:
                        choice.finish_reason = "length"
                        job.deliver(choice, choice.flush())
            except Exception as exc:
                log.exception("vLLM generation failed")
                for job in jobs:
                    job.fail(BackendError(f"generation failed: {exc}"))
            self._done(jobs, time.perf_counter() - started)

    def _decode(self, ids: list[int]) -> str:
        return str(self._tokenizer.decode(ids, skip_special_tokens=True))
