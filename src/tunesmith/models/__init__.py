"""Models: the catalogue, where each model loads from, and loading (hub, local, bundled GGUF)."""

from tunesmith.models.catalog import CATALOG, ModelInfo, ModelNotFoundError, list_models, model_info
from tunesmith.models.loading import (
    LoadedModel,
    ResolvedModel,
    load_causal_lm,
    load_configured,
    load_model,
    load_tokenizer,
    resolve,
)

__all__ = [
    "CATALOG",
    "LoadedModel",
    "ModelInfo",
    "ModelNotFoundError",
    "ResolvedModel",
    "list_models",
    "load_causal_lm",
    "load_configured",
    "load_model",
    "load_tokenizer",
    "model_info",
    "resolve",
]
