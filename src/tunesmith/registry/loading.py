"""Loading a registered version back: base model plus adapter, or full weights, with its tokenizer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunesmith.config import ProjectConfig
from tunesmith.registry.versions import RegistryError, get_version
from tunesmith.store import ModelVersion
from tunesmith.workspace import Workspace


def load_version(workspace: Workspace, ref: str) -> tuple[ModelVersion, Any, Any]:
    """Load a registered version (base model plus its adapter, or its full weights) with its tokenizer."""
    version = get_version(workspace, ref)
    return (version, *load_row(version, workspace))


def check_base(version: ModelVersion, loaded_revision: str | None, action: str) -> None:
    """Refuse to pair `version` with base weights other than the ones it was trained on.

    `loaded_revision` is what the base resolves to now (a hub commit, or the content hash of local
    or bundled weights); `action` says what was about to happen ("comparing with the base of", "loading"...).

    Raises:
        RegistryError: the base resolves to another revision than the one the version records.
    """
    recorded = version.base_revision
    if not recorded or not loaded_revision or recorded == loaded_revision:
        return
    fix = (
        f"restore the weights of {version.base_model} that the version was trained on"
        if recorded.startswith("sha256:")
        else f"pin the base: set model.revision: {recorded}"
    )
    raise RegistryError(
        f"{action} {version.name}: it was trained on {version.base_model} at {recorded}, but that base "
        f"now resolves to {loaded_revision}; {fix}"
    )


def load_row(version: ModelVersion, workspace: Workspace | None = None) -> tuple[Any, Any]:
    """(model, tokenizer) of a version record.

    An adapter trained on top of another version (`train.init_from`) is loaded onto its parent,
    itself loaded the same way and merged; that needs the workspace to find the parent.
    """
    from tunesmith.models.loading import LOAD_LOCK

    with LOAD_LOCK:  # one load at a time in the process, as for base models
        return _load_row(version, workspace)


def merged_row(version: ModelVersion, workspace: Workspace | None, dtype: str) -> tuple[Any, Any]:
    """(model, tokenizer) of a version as plain weights: its adapter, if it has one, merged in; in
    `dtype` ("float32", "bfloat16"...), a classifier's head kept in float32 (`float32_heads`)."""
    import torch

    from tunesmith.models.loading import float32_heads

    model, tokenizer = load_row(version, workspace)
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    model = model.to(getattr(torch, dtype))
    float32_heads(model)
    return model, tokenizer


def load_named_model(
    workspace: Workspace, ref: str, config: ProjectConfig, dtype: str
) -> tuple[Any, Any, str]:
    """(model, tokenizer, identity) of a model a setting names (a teacher, a judge): `base` (the
    project's model), a registered version (its adapter merged in), or any model id or folder the
    catalog resolves; in `dtype`. The identity keys caches of its answers.

    Raises:
        RegistryError: `ref` is none of them.
    """
    from tunesmith.models import load_configured
    from tunesmith.models.catalog import ModelNotFoundError
    from tunesmith.models.loading import load_causal_lm

    if ref == "base":
        loaded = load_configured(config.model, dtype)
        return loaded.model, loaded.tokenizer, f"{config.model.id}@{config.model.revision or 'default'}"
    try:
        version = get_version(workspace, ref)
    except RegistryError:
        try:
            loaded = load_causal_lm(ref, dtype=dtype, trust_remote_code=config.model.trust_remote_code)
        except ModelNotFoundError as exc:
            raise RegistryError(
                f"{ref!r} is neither `base`, a registered version (`tunesmith registry list`) nor a model "
                f"that loads ({exc})"
            ) from None
        return loaded.model, loaded.tokenizer, ref
    model, tokenizer = merged_row(version, workspace, dtype)
    return model, tokenizer, f"{version.name}:{version.id}"


def adapter_base(
    version: ModelVersion, workspace: Workspace | None, dtype: str | None = None, action: str = "loading"
) -> tuple[Any, Any, str | None]:
    """(model, tokenizer, base revision) that a LoRA or QLoRA version's adapter sits on: the version
    it was trained from (`train.init_from`), merged, or else its base model, checked against the
    revision it was trained on. In `dtype`, the version's own weights dtype unless given.

    Raises:
        RegistryError: the parent version cannot be found without the workspace, or the base
            resolves to another revision (`check_base`; `action` says what was about to happen).
    """
    from tunesmith.models import load_configured
    from tunesmith.models.loading import float32_heads, saved_head

    dtype = dtype or ProjectConfig.model_validate(version.config).weights_dtype
    if version.parent_id is not None:
        if workspace is None:
            raise RegistryError(
                f"{version.name} was trained on top of another version; loading it needs the workspace"
            )
        model, tokenizer = merged_row(get_version(workspace, version.parent_id), workspace, dtype)
        return model, tokenizer, version.base_revision
    head, extra = saved_head(Path(version.path))  # the weights say which head the objective trained
    base = load_configured(version.config["model"], dtype, head=head, **extra)
    check_base(version, base.base_revision, action)
    float32_heads(base.model)  # as classify trained it
    return base.model, base.tokenizer, base.base_revision


def _load_row(version: ModelVersion, workspace: Workspace | None) -> tuple[Any, Any]:
    import transformers
    from peft import PeftModel

    from tunesmith.models.loading import HEADS, saved_head

    if version.method in ("lora", "qlora"):
        model, tokenizer, _ = adapter_base(version, workspace)
        return PeftModel.from_pretrained(model, version.path), tokenizer
    remote_code = bool(version.config["model"].get("trust_remote_code", False))  # as it was trained
    head, _ = saved_head(Path(version.path))
    auto_class = getattr(transformers, HEADS[head])
    return (
        auto_class.from_pretrained(version.path, use_safetensors=True, trust_remote_code=remote_code),
        transformers.AutoTokenizer.from_pretrained(version.path, trust_remote_code=remote_code),
    )
