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


def _load_row(version: ModelVersion, workspace: Workspace | None) -> tuple[Any, Any]:
    import torch
    import transformers
    from peft import PeftModel

    from tunesmith.models import load_configured
    from tunesmith.models.loading import HEADS, float32_heads, saved_head

    model_cfg = version.config["model"]
    remote_code = bool(model_cfg.get("trust_remote_code", False))  # as the version was trained
    head, extra = saved_head(Path(version.path))  # the weights say which head the objective trained
    if version.method in ("lora", "qlora") and version.parent_id is not None:
        if workspace is None:
            raise RegistryError(
                f"{version.name} was trained on top of another version; loading it needs the workspace"
            )
        parent_model, tokenizer = load_row(get_version(workspace, version.parent_id), workspace)
        if hasattr(parent_model, "merge_and_unload"):
            parent_model = parent_model.merge_and_unload()
        dtype = ProjectConfig.model_validate(version.config).weights_dtype
        parent_model = parent_model.to(getattr(torch, dtype))
        float32_heads(parent_model)  # as classify trained it
        return PeftModel.from_pretrained(parent_model, version.path), tokenizer
    if version.method in ("lora", "qlora"):
        dtype = ProjectConfig.model_validate(version.config).weights_dtype
        base = load_configured(model_cfg, dtype, head=head, **extra)
        check_base(version, base.base_revision, "loading")
        float32_heads(base.model)
        return PeftModel.from_pretrained(base.model, version.path), base.tokenizer
    auto_class = getattr(transformers, HEADS[head])
    return (
        auto_class.from_pretrained(version.path, use_safetensors=True, trust_remote_code=remote_code),
        transformers.AutoTokenizer.from_pretrained(version.path, trust_remote_code=remote_code),
    )
