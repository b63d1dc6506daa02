"""The data stage for a project: `data.path` (or a stored version, or a task mixture) as a dataset version.

Token lengths are counted with the configured model's tokenizer, against its context window.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tunesmith.config import ProjectConfig
from tunesmith.data.prepare import DataError, Prepared, check_rows, get_dataset, prepare_for_project
from tunesmith.store import DatasetVersion
from tunesmith.workspace import Workspace, open_workspace


def tokenizer_and_context(config: ProjectConfig) -> tuple[Any, int | None]:
    """The configured model's tokenizer and context window: what token lengths are measured with."""
    from tunesmith.models import load_tokenizer, model_info

    model = config.model
    return (
        load_tokenizer(model.id, model.source, model.revision),
        model_info(model.id, model.source, model.revision).context_window,
    )


def prepare_data(
    config: ProjectConfig, workspace: Workspace | None = None, *, lineage: dict[str, Any] | None = None
) -> DatasetVersion:
    """Turn `data.path` into a stored dataset version (the same rows and options give the same version).

    Raises:
        DataError: when `data.path` is unset or unusable, or no training row is left.
    """
    workspace = workspace or open_workspace(config)
    if config.train.objective == "multitask":
        from tunesmith.data.mixture import prepare_mixture

        return prepare_mixture(config, workspace, *tokenizer_and_context(config))
    if config.data.path is None:
        raise DataError("data.path is not set; point it at a file, folder, glob, saved dataset or hub id")
    stored = _stored_version(config, workspace)
    if stored is not None:
        return stored
    tokenizer, context = tokenizer_and_context(config)
    return prepare_for_project(config, workspace, config.data, tokenizer, context, lineage=lineage)


def _stored_version(config: ProjectConfig, workspace: Workspace) -> DatasetVersion | None:
    """The stored version `data.path` names (`ds-…`, e.g. from `data synth`), unless a file has that name."""
    path = config.data.path or ""
    if not path.startswith("ds-") or config.resolve_path(path).exists():
        return None
    return get_dataset(workspace, path)


def validate_data(config: ProjectConfig, workspace: Workspace | None = None) -> tuple[Prepared, Path]:
    """Run every check of the data stage on `data.path` without storing a version.

    Rejected rows are written to the workspace's `validation/rejected.jsonl`; returns the outcome
    and that path.

    Raises:
        DataError: when `data.path` is unset or unusable.
    """
    if config.data.path is None:
        raise DataError("data.path is not set; point it at a file, folder, glob, saved dataset or hub id")
    workspace = workspace or open_workspace(config)
    tokenizer, context = tokenizer_and_context(config)
    prepared = check_rows(config.data, config.data.path, config.base_dir, tokenizer, context)
    out = workspace.root / "validation" / "rejected.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    with tmp.open("w", encoding="utf-8") as handle:
        for rejected in prepared.rejected:
            handle.write(json.dumps(rejected.to_json(), ensure_ascii=False, default=str) + "\n")
    tmp.replace(out)
    return prepared, out
