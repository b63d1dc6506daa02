"""The workspace: a folder holding the store file and every artifact, each named by its id."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from sqlalchemy import Engine

from tunesmith.config import CONFIG_FILENAME, ProjectConfig
from tunesmith.store import open_store


@dataclass(frozen=True)
class Workspace:
    """Paths and store of one project workspace (by default `.tunesmith/` beside the config)."""

    root: Path
    engine: Engine

    @property
    def datasets_dir(self) -> Path:
        return self.root / "datasets"

    @property
    def runs_dir(self) -> Path:
        return self.root / "runs"

    def dataset_dir(self, dataset_id: str) -> Path:
        return self.datasets_dir / dataset_id

    def run_dir(self, run_id: str) -> Path:
        return self.runs_dir / run_id


def open_workspace(config: ProjectConfig) -> Workspace:
    """Open (creating if needed) the workspace and store that `config` names."""
    root = config.workspace_dir
    root.mkdir(parents=True, exist_ok=True)
    return Workspace(root=root, engine=open_store(config.resolved_store_url))


def init_project(directory: Path, *, force: bool = False) -> Path:
    """Write a commented `tunesmith.yaml` and create the `.tunesmith/` workspace in `directory`.

    Returns the path of the config file. An existing config is kept unless `force` is set.
    """
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / CONFIG_FILENAME
    if target.exists() and not force:
        raise FileExistsError(f"{target} already exists; pass --force to overwrite it")
    template = resources.files("tunesmith").joinpath("templates", CONFIG_FILENAME).read_text(encoding="utf-8")
    target.write_text(template.replace("{project}", _project_name(directory)), encoding="utf-8")
    from tunesmith.config import load_config

    open_workspace(load_config(target))
    return target


def _project_name(directory: Path) -> str:
    name = "".join(c if c.isalnum() or c in "._-" else "-" for c in directory.resolve().name.lower())
    return name.strip("-._") or "my-project"


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists (one of another user's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temps(folder: Path) -> list[Path]:
    """Remove the half-written folders that killed processes left in `folder` (`.NAME.PID.XXXX.tmp`
    whose PID is gone); a live writer's folder is left alone. Returns what was removed."""
    removed = []
    for candidate in folder.glob(".*.tmp"):
        parts = candidate.name.split(".")
        pid = parts[-3] if len(parts) >= 4 else ""
        if candidate.is_dir() and pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(candidate, ignore_errors=True)
            removed.append(candidate)
    return removed


@contextmanager
def atomic_dir(target: Path) -> Iterator[Path]:
    """Yield a temporary folder beside `target` that becomes `target` only if the block succeeds.

    A crash or error leaves `target` untouched (absent, or as it was); half-written outputs are
    removed, never visible under the final name. A process killed mid-write leaves its folder
    behind; the next write into the same parent removes it.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(target.parent)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.{os.getpid()}.", suffix=".tmp", dir=target.parent))
    try:
        yield tmp
        if target.exists():
            shutil.rmtree(target)
        tmp.replace(target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
