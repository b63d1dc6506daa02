"""The data stage for a project: `data.path` (or a stored version, or a task mixture) as a dataset version.

Token lengths are counted with the configured model's tokenizer, against its context window.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tunesmith.config import ProjectConfig
from tunesmith.data.prepare import (
    DataError,
    Prepared,
    TargetModel,
    check_rows,
    get_dataset,
    prepare_for_project,
)
from tunesmith.store import DatasetVersion
from tunesmith.workspace import Workspace, open_workspace


def target_model(config: ProjectConfig) -> TargetModel:
    """The configured model as the data stage measures rows for it: its tokenizer and context window,
    and where training cuts rows (train.max_length)."""
    from tunesmith.models import load_tokenizer, model_info

    model = config.model
    return TargetModel(
        tokenizer=load_tokenizer(model.id, model.source, model.revision),
        context_window=model_info(model.id, model.source, model.revision).context_window,
        truncate_at=config.train.max_length,
        model_id=model.id,
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

        return prepare_mixture(config, workspace, target_model(config))
    if config.data.path is None:
        raise DataError("data.path is not set; point it at a file, folder, glob, saved dataset or hub id")
    stored = _stored_version(config, workspace)
    if stored is not None:
        return stored
    return prepare_for_project(config, workspace, config.data, target_model(config), lineage=lineage)


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
    prepared = check_rows(config.data, config.data.path, config.base_dir, target_model(config))
    out = workspace.root / "validation" / "rejected.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    with tmp.open("w", encoding="utf-8") as handle:
        for rejected in prepared.rejected:
            handle.write(json.dumps(rejected.to_json(), ensure_ascii=False, default=str) + "\n")
    tmp.replace(out)
    return prepared, out
