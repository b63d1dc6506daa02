"""Serving backends: what turns a prompt's token ids into tokens, behind one small interface.

`auto` (the default) serves each version with llama.cpp on a CPU when it can, else transformers;
`transformers` batches concurrent requests on one base model that carries every served adapter;
`llamacpp` runs a version's GGUF export on llama.cpp's server with continuous batching; `vllm` runs
on a GPU with multi-LoRA. Outside packages add a backend with `register_backend` or the `tunesmith.backends`
entry point group.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import metadata
from typing import Any

from tunesmith.plugins import Registry
from tunesmith.serve.backends.base import (
    Backend,
    BackendError,
    Finished,
    GenerationJob,
    OverloadedError,
    SamplingParams,
    TextDelta,
    TokenLogprob,
)

ENTRY_POINT_GROUP = "tunesmith.backends"
BackendFactory = Callable[..., Backend]
BACKENDS: Registry[BackendFactory] = Registry("serving backend", BackendError)
_ENTRY_POINTS = {"loaded": False}


def register_backend(name: str) -> Callable[[BackendFactory], BackendFactory]:
    """Register a backend factory `(workspace, serve_config) -> Backend` under `name`."""
    return BACKENDS.register(name)


def backend_names() -> list[str]:
    _load_builtin_and_entry_points()
    return BACKENDS.names()


def create_backend(name: str, *args: Any, **kwargs: Any) -> Backend:
    """A new backend of kind `name` (see `backend_names`)."""
    _load_builtin_and_entry_points()
    return BACKENDS.get(name)(*args, **kwargs)


def _load_builtin_and_entry_points() -> None:
    if _ENTRY_POINTS["loaded"]:
        return
    _ENTRY_POINTS["loaded"] = True
    from tunesmith.serve.backends import auto_backend, llamacpp_backend, transformers_backend, vllm_backend

    register_backend("auto")(auto_backend.AutoBackend)
    register_backend("transformers")(transformers_backend.TransformersBackend)
    register_backend("llamacpp")(llamacpp_backend.LlamaCppBackend)
    register_backend("vllm")(vllm_backend.VllmBackend)
    for entry in metadata.entry_points(group=ENTRY_POINT_GROUP):
        register_backend(entry.name)(entry.load())


__all__ = [
    "Backend",
    "BackendError",
    "Finished",
    "GenerationJob",
    "OverloadedError",
    "SamplingParams",
    "TextDelta",
    "TokenLogprob",
    "backend_names",
    "create_backend",
    "register_backend",
]
