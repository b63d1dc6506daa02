"""The teacher of synthetic data (`synth.teacher`): an OpenAI-compatible endpoint, the base model, or a
registered version. The teacher itself, its backends and its reply cache are `models.teacher`'s."""

from __future__ import annotations

from typing import Any

from tunesmith.config import ProjectConfig, endpoint_api_key
from tunesmith.models.teacher import EndpointBackend, LocalBackend, Request, Teacher, TeacherError
from tunesmith.workspace import Workspace

__all__ = ["Request", "Teacher", "TeacherError", "load_local_model", "load_teacher"]


def load_local_model(config: ProjectConfig, workspace: Workspace, ref: str) -> tuple[Any, Any, str]:
    """(model, tokenizer, identity) of `base` (the configured model), a registered version or any
    model (`registry.loading.load_named_model`), in float32.

    Raises:
        TeacherError: when `ref` is none of them.
    """
    from tunesmith.registry.loading import load_named_model
    from tunesmith.registry.versions import RegistryError

    try:
        return load_named_model(workspace, ref, config, "float32")
    except RegistryError as exc:
        raise TeacherError(f"{ref}: {exc}") from None


def load_teacher(config: ProjectConfig, workspace: Workspace) -> Teacher:
    """The configured teacher: an endpoint when `synth.teacher.endpoint` is set, else a local model.

    Raises:
        TeacherError: when the local model is neither the base nor a registered version.
    """
    settings = config.synth.teacher
    cache_dir = workspace.root / "synth" / "cache"
    if settings.endpoint:
        key = endpoint_api_key(settings.endpoint, settings.api_key_env)
        return Teacher(EndpointBackend(settings.endpoint, settings.model, key), settings, cache_dir)
    return Teacher(LocalBackend(*load_local_model(config, workspace, settings.model)), settings, cache_dir)
