"""The default backend: llama.cpp for what it can serve on a CPU, transformers for the rest.

Measured on a 2-core CPU with a LoRA version of SmolLM2-135M (bench/serve.py, in the README),
llama.cpp's server decodes one request several times faster than transformers and keeps that lead
with continuous batching under concurrent load. So on a machine without a CUDA GPU, where
`llama-server` is installed, each generative version whose GGUF export llama.cpp can run (a
Llama-architecture model with a BPE tokenizer, passing the export's parity check) is served by the
`llamacpp` backend; every other version (classifiers, other architectures or tokenizers, an
export that fails its parity check) by `transformers`, with the reason logged. On a GPU everything
goes to `transformers`. Set `serve.backend` to `llamacpp` or `transformers` to choose yourself.
"""

from __future__ import annotations

import logging
from typing import Any

from tunesmith.config import ServeConfig
from tunesmith.models.llamacpp import find_server
from tunesmith.registry import RegistryError
from tunesmith.registry.export import gguf_refusal
from tunesmith.serve.backends.base import Backend, BackendError, GenerationJob
from tunesmith.serve.backends.llamacpp_backend import LlamaCppBackend
from tunesmith.serve.backends.transformers_backend import TransformersBackend
from tunesmith.store import ModelVersion
from tunesmith.workspace import Workspace

log = logging.getLogger("tunesmith.serve")


class AutoBackend:
    name = "auto"

    def __init__(self, workspace: Workspace, config: ServeConfig) -> None:
        import torch

        self.transformers = TransformersBackend(workspace, config)
        self.llamacpp: LlamaCppBackend | None = None
        if torch.cuda.is_available():
            log.info("serving on the GPU with transformers")
        elif find_server() is None:
            log.warning(
                "llama-server was not found: serving with transformers, several times slower on a CPU"
            )
        else:
            self.llamacpp = LlamaCppBackend(workspace, config)
        self._owner: dict[str, Backend] = {}
        self._on_batch: Any = None

    @property
    def backends(self) -> list[Backend]:
        return [b for b in (self.llamacpp, self.transformers) if b is not None]

    @property
    def on_batch(self) -> Any:
        return self._on_batch

    @on_batch.setter
    def on_batch(self, callback: Any) -> None:
        self._on_batch = callback
        for backend in self.backends:
            backend.on_batch = callback  # type: ignore[attr-defined]

    def backend_of(self, version_id: str) -> Backend:
        if version_id not in self._owner:
            raise BackendError(f"version {version_id} is not loaded")
        return self._owner[version_id]

    def load(self, version: ModelVersion) -> None:
        if version.id in self._owner:
            self._owner[version.id].load(version)
            return
        if self.llamacpp is not None:
            refusal = gguf_refusal(version)
            if refusal is None:
                try:
                    self.llamacpp.load(version)
                    self._owner[version.id] = self.llamacpp
                    log.info("%s is served by llama.cpp", version.name)
                    return
                except (BackendError, RegistryError) as exc:
                    refusal = str(exc)
                except Exception as exc:  # an export that broke: the version is still served, by transformers
                    log.warning("llama.cpp could not load %s", version.name, exc_info=True)
                    refusal = f"llama.cpp could not load it ({type(exc).__name__}: {exc})"
            log.info("%s is served by transformers: %s", version.name, refusal)
        self.transformers.load(version)
        self._owner[version.id] = self.transformers

    def retire(self, version_id: str) -> None:
        backend = self._owner.pop(version_id, None)
        if backend is not None:
            backend.retire(version_id)

    def loaded(self) -> set[str]:
        return {v for backend in self.backends for v in backend.loaded()}

    def grammar_refusal(self, version_id: str) -> str | None:
        return self.backend_of(version_id).grammar_refusal(version_id)

    def tool_grammar_refusal(self, version_id: str) -> str | None:
        return self.backend_of(version_id).tool_grammar_refusal(version_id)

    def logprobs_refusal(self, version_id: str) -> str | None:
        return self.backend_of(version_id).logprobs_refusal(version_id)

    def tokenizer(self, version_id: str) -> Any:
        return self.backend_of(version_id).tokenizer(version_id)

    def context_length(self, version_id: str) -> int:
        return self.backend_of(version_id).context_length(version_id)

    def submit(self, job: GenerationJob) -> None:
        self.backend_of(job.version_id).submit(job)

    def queue_depth(self) -> int:
        return sum(backend.queue_depth() for backend in self.backends)

    def engine(self, version_id: str) -> str:
        return self.backend_of(version_id).name

    def in_flight(self) -> int:
        return sum(backend.in_flight() for backend in self.backends)

    def start(self) -> None:
        for backend in self.backends:
            backend.start()

    def close(self) -> None:
        for backend in self.backends:
            backend.close()
