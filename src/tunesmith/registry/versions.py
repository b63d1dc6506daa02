"""Model versions: immutable records of what was trained, from what, and how well it did."""

from __future__ import annotations

import getpass
import hashlib
import os
import secrets
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from tunesmith.config import ProjectConfig
from tunesmith.store import AliasEvent, ModelVersion, Run, VersionMetric, session
from tunesmith.workspace import Workspace

LIBRARIES = ("tunesmith", "torch", "transformers", "peft", "trl", "accelerate", "datasets")


class RegistryError(LookupError):
    """A version or family that is not in the registry."""


def register_version(
    workspace: Workspace,
    run: Run,
    *,
    family: str,
    weights_dir: Path,
    base_revision: str | None,
    method: str,
    seed: int,
    metrics: dict[str, Any],
    tokenizer: Any,
    parent_id: str | None = None,
    lineage_extra: dict[str, Any] | None = None,
) -> ModelVersion:
    """Record a trained model as the next version of `family` (`family-v1`, `family-v2`, ...);
    `lineage_extra` adds to the lineage (a merge's parents and method)."""
    lineage = {
        "libraries": library_versions(),
        "git_commit": git_commit(),
        "chat_template_sha256": _sha256_text(getattr(tokenizer, "chat_template", None) or ""),
        "tokenizer_sha256": _tokenizer_hash(tokenizer),
        "eos_token": getattr(tokenizer, "eos_token", None),
        "os_user": os_user(),  # who registered it, as the OS knows them (approvals are checked against it)
        **(lineage_extra or {}),
    }
    with session(workspace.engine) as s:
        number = (
            s.scalar(select(func.max(ModelVersion.number)).where(ModelVersion.family == family)) or 0
        ) + 1
        version = ModelVersion(
            id=f"mv-{secrets.token_hex(6)}",
            name=f"{family}-v{number}",
            family=family,
            number=number,
            run_id=run.id,
            parent_id=parent_id,
            base_model=run.base_model,
            base_revision=base_revision,
            method=method,
            weights_sha256=weights_sha256(weights_dir),
            dataset_version_id=run.dataset_version_id,
            seed=seed,
            config=run.config,
            metrics=metrics,
            lineage=lineage,
            path=str(weights_dir),
            created_by=who(),
        )
        s.add(version)
    return version


def get_version(workspace: Workspace, ref: str) -> ModelVersion:
    """A version by name (`support-v3`) or id (`mv-...`).

    Raises:
        RegistryError: when there is none.
    """
    with session(workspace.engine) as s:
        version = s.scalars(
            select(ModelVersion).where((ModelVersion.name == ref) | (ModelVersion.id == ref))
        ).first()
    if version is None:
        raise RegistryError(f"no model version {ref!r}; `tunesmith registry list` shows the registered ones")
    return version


def list_versions(workspace: Workspace, family: str | None = None) -> list[ModelVersion]:
    """Registered versions, newest first, optionally of one family."""
    query = select(ModelVersion).order_by(ModelVersion.created_at.desc())
    if family is not None:
        query = query.where(ModelVersion.family == family)
    with session(workspace.engine) as s:
        return list(s.scalars(query))


def weights_sha256(directory: Path) -> str:
    """sha256 over the weight files of an adapter or model folder, in name order."""
    from tunesmith.models.loading import file_sha256

    files = sorted(directory.glob("*.safetensors")) or sorted(directory.glob("*.bin"))
    if not files:
        raise RegistryError(f"{directory} holds no weights (*.safetensors)")
    if len(files) == 1:
        return file_sha256(files[0])
    return hashlib.sha256("".join(file_sha256(f) for f in files).encode()).hexdigest()


def library_versions() -> dict[str, str]:
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def git_commit() -> str | None:
    """The commit of the tunesmith checkout this runs from, if it runs from one."""
    root = Path(__file__).resolve().parents[3]
    if not (root / ".git").exists():
        return None
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


def _sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _tokenizer_hash(tokenizer: Any) -> str | None:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    return _sha256_text(backend.to_str()) if backend is not None else None


def add_metrics(workspace: Workspace, version: ModelVersion, metrics: dict[str, float], source: str) -> None:
    """Record metrics of `version` found after registration, as new rows (its registered ones stay)."""
    with session(workspace.engine) as s:
        s.add_all(
            VersionMetric(version_id=version.id, name=name, value=float(value), source=source)
            for name, value in metrics.items()
        )


def all_metrics(workspace: Workspace, version: ModelVersion) -> dict[str, Any]:
    """The version's registered metrics and every one added later (the latest value of a name wins)."""
    with session(workspace.engine) as s:
        later = s.scalars(
            select(VersionMetric).where(VersionMetric.version_id == version.id).order_by(VersionMetric.id)
        )
        return {**version.metrics, **{row.name: row.value for row in later}}


def who() -> str:
    """Who is acting, for history rows and notes: $TUNESMITH_USER, or the login name (free text: an
    approval needs `tunesmith.registry.identity.checked_identity`)."""
    return os.environ.get("TUNESMITH_USER") or os_user()


def os_user() -> str:
    """The login of the OS user running this process."""
    try:
        return getpass.getuser()
    except OSError:
        return "unknown"


def alias_target(workspace: Workspace, family: str, alias: str) -> ModelVersion | None:
    """The version `alias` points at now (its latest move), or None when it was never set or cleared."""
    with session(workspace.engine) as s:
        event = s.scalars(
            select(AliasEvent)
            .where(AliasEvent.family == family, AliasEvent.alias == alias)
            .order_by(AliasEvent.id.desc())
            .limit(1)
        ).first()
        if event is None or event.to_version_id is None:
            return None
        return s.get(ModelVersion, event.to_version_id)


def move_alias(
    workspace: Workspace,
    family: str,
    alias: str,
    version: ModelVersion | None,
    *,
    reason: str = "",
    gate_report_id: str | None = None,
    action: str = "move",
    forced: bool = False,
    actor: str | None = None,
) -> AliasEvent:
    """Point `alias` of `family` at `version` (None clears it), appending one history row.

    This is the bare move; `tunesmith.registry.aliases.promote` applies the gates first.
    """
    current = alias_target(workspace, family, alias)
    with session(workspace.engine) as s:
        event = AliasEvent(
            family=family,
            alias=alias,
            from_version_id=current.id if current else None,
            to_version_id=version.id if version else None,
            actor=actor or who(),
            reason=reason,
            gate_report_id=gate_report_id,
            action=action,
            forced=forced,
        )
        s.add(event)
    return event


def version_names(workspace: Workspace) -> dict[str, str]:
    """Every version's name by id: for showing history rows and rollouts."""
    with session(workspace.engine) as s:
        return {vid: name for vid, name in s.execute(select(ModelVersion.id, ModelVersion.name))}


def resolve_name(workspace: Workspace, name: str) -> ModelVersion:
    """The version a served name means now: `family@alias`, a version name or id, or a bare family
    (its production alias).

    Raises:
        RegistryError: the alias is not set, or nothing answers to the name.
    """
    if "@" in name:
        family, alias = name.split("@", 1)
        version = alias_target(workspace, family, alias)
        if version is None:
            raise RegistryError(f"alias {alias} of {family} is not set")
        return version
    try:
        return get_version(workspace, name)
    except RegistryError:
        version = alias_target(workspace, name, "production")
        if version is None:
            raise
        return version


def register_trained(
    config: ProjectConfig,
    workspace: Workspace,
    result: Any,
    base_revision: str | None,
    extra_metrics: dict[str, Any] | None = None,
) -> ModelVersion:
    """Register a finished run's weights (`result`: a train stage's `TrainResult`) as the project's
    next version, and make it the candidate."""
    with session(workspace.engine) as s:
        run_row = s.get(Run, result.run_id)
    assert run_row is not None
    version = register_version(
        workspace,
        run_row,
        family=config.project,
        weights_dir=result.adapter_dir,
        base_revision=base_revision,
        method=config.train.method,
        seed=config.train.seed,
        metrics={**result.metrics, **(extra_metrics or {})},
        tokenizer=result.tokenizer,
        parent_id=get_version(workspace, config.train.init_from).id if config.train.init_from else None,
        lineage_extra=getattr(result, "lineage", None),
    )
    if "candidate" in config.registry.aliases:  # the newest version is the one to evaluate next
        move_alias(
            workspace,
            version.family,
            "candidate",
            version,
            reason=f"trained in {result.run_id}",
            action="register",
        )
    return version
