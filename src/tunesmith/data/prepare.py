"""Preparing a dataset version: read, validate, convert, split without leakage, hash, store.

A dataset version is immutable and named by the hash of its content, so preparing the same rows
twice gives the same id. Rows that cannot be used are written to `rejected.jsonl` with the
file:line they came from and the reason; nothing is dropped silently.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select

from tunesmith.config import DataConfig
from tunesmith.data.formats import RowError, detect_format, to_chat
from tunesmith.store import DatasetVersion, session
from tunesmith.workspace import Workspace, atomic_dir

SPLITS = ("train", "val", "test")
SPLIT_ALIASES = {"train": "train", "val": "val", "validation": "val", "dev": "val", "test": "test"}


class DataError(ValueError):
    """Data that cannot become a dataset version."""


@dataclass
class Rejected:
    """A row left out of the dataset, and why."""

    location: str  # file:line
    reason: str
    row: Any

    def to_json(self) -> dict[str, Any]:
        return {"location": self.location, "reason": self.reason, "row": self.row}


@dataclass
class PreparedRows:
    """Rows per split, and the rows that were rejected."""

    splits: dict[str, list[dict[str, Any]]]
    rejected: list[Rejected] = field(default_factory=list)
    format: str = "chat"


def read_jsonl(path: Path) -> tuple[list[tuple[int, dict[str, Any]]], list[Rejected]]:
    """Read a JSONL file: (line number, object) pairs, plus the lines that are not JSON objects."""
    rows, rejected = [], []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as exc:
                rejected.append(
                    Rejected(
                        f"{path}:{number}",
                        f"not valid JSON: {exc.msg} at column {exc.colno}",
                        line.rstrip("\n"),
                    )
                )
                continue
            if not isinstance(value, dict):
                rejected.append(Rejected(f"{path}:{number}", "expected a JSON object per line", value))
                continue
            rows.append((number, value))
    return rows, rejected


def build_splits(path: Path, config: DataConfig) -> PreparedRows:
    """Read `path` and turn its rows into canonical chat records split into train/val/test.

    Raises:
        DataError: when the file is missing or no row is usable for training.
    """
    if not path.exists():
        raise DataError(f"{path}: no such file (data.path)")
    if path.suffix not in (".jsonl", ".json"):
        raise DataError(f"{path}: only JSONL files are read so far (one JSON object per line)")
    raw_rows, rejected = read_jsonl(path)
    formats: set[str] = set()
    records: list[tuple[str, dict[str, Any]]] = []  # (location, record)
    for number, row in raw_rows:
        location = f"{path}:{number}"
        try:
            fmt = detect_format(row) if config.format == "auto" else config.format
            record = to_chat(row, fmt, config.system_prompt)
            formats.add(fmt)
        except RowError as exc:
            rejected.append(Rejected(location, str(exc), row))
            continue
        split = record.pop(config.split.field, None)
        if split is not None:
            if not isinstance(split, str) or split.lower() not in SPLIT_ALIASES:
                rejected.append(
                    Rejected(
                        location, f"{config.split.field}: expected train, val or test, got {split!r}", row
                    )
                )
                continue
            record["_split"] = SPLIT_ALIASES[split.lower()]
        records.append((location, record))

    _assign_splits(records, config)
    splits: dict[str, list[dict[str, Any]]] = {name: [] for name in SPLITS}
    seen: dict[str, tuple[str, str]] = {}  # conversation key -> (split, location)
    train_prompts: set[str] = set()
    for location, record in sorted(records, key=lambda item: SPLITS.index(item[1]["_split"])):
        split = record.pop("_split")
        key = json.dumps(record["messages"], sort_keys=True)
        if key in seen:
            rejected.append(Rejected(location, f"exact duplicate of {seen[key][1]}", record))
            continue
        prompt = _prompt_key(record)
        if split != "train" and prompt in train_prompts:
            rejected.append(
                Rejected(
                    location,
                    f"leakage: the same prompt is in the train split; a {split} row "
                    "must be unseen in training",
                    record,
                )
            )
            continue
        seen[key] = (split, location)
        if split == "train":
            train_prompts.add(prompt)
        splits[split].append(record)
    if not splits["train"]:
        first = "\n".join(f"  {r.location}: {r.reason}" for r in rejected[:5])
        raise DataError(
            f"{path}: no usable training rows ({len(rejected)} rejected)" + (f":\n{first}" if first else "")
        )
    return PreparedRows(splits=splits, rejected=rejected, format="+".join(sorted(formats)) or "chat")


def _prompt_key(record: dict[str, Any]) -> str:
    """The conversation up to the answer, normalised: what a model sees before it answers."""
    turns = [m for m in record["messages"][:-1] if m["role"] != "system"]
    return " ".join(" ".join(m["content"].lower().split()) for m in turns)


def _assign_splits(records: list[tuple[str, dict[str, Any]]], config: DataConfig) -> None:
    """Give every record without a pre-assigned split one, keeping groups together."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for location, record in records:
        if "_split" not in record:
            group = record.get(config.split.group_field)
            groups.setdefault(str(group) if group is not None else location, []).append(record)
    keys = sorted(groups)
    random.Random(config.split.seed).shuffle(keys)
    n_test = round(len(keys) * config.split.test)
    n_val = round(len(keys) * config.split.val)
    for index, key in enumerate(keys):
        split = "test" if index < n_test else "val" if index < n_test + n_val else "train"
        for record in groups[key]:
            record["_split"] = split


def content_hash(prepared: PreparedRows) -> str:
    """sha256 over the canonical rows of every split: the dataset version's identity."""
    digest = hashlib.sha256()
    for name in SPLITS:
        for record in prepared.splits[name]:
            digest.update(name.encode())
            digest.update(json.dumps(record, sort_keys=True, ensure_ascii=False).encode())
            digest.update(b"\n")
    return digest.hexdigest()


def prepare_dataset(
    workspace: Workspace, path: Path, config: DataConfig, name: str | None = None
) -> DatasetVersion:
    """Read, validate, split and store `path` as an immutable dataset version.

    Returns the existing version when the same content was prepared before.

    Raises:
        DataError: when the file is missing or has no usable training rows.
    """
    prepared = build_splits(path, config)
    digest = content_hash(prepared)
    dataset_id = f"ds-{digest[:12]}"
    with session(workspace.engine) as s:
        existing = s.scalars(select(DatasetVersion).where(DatasetVersion.content_hash == digest)).first()
        if existing is not None and workspace.dataset_dir(existing.id).exists():
            return existing
    counts: dict[str, Any] = {name: len(rows) for name, rows in prepared.splits.items()}
    counts["rejected"] = len(prepared.rejected)
    target = workspace.dataset_dir(dataset_id)
    with atomic_dir(target) as tmp:
        for split, rows in prepared.splits.items():
            _write_jsonl(tmp / f"{split}.jsonl", rows)
        _write_jsonl(tmp / "rejected.jsonl", [r.to_json() for r in prepared.rejected])
        (tmp / "manifest.json").write_text(
            json.dumps(
                {
                    "id": dataset_id,
                    "content_hash": digest,
                    "source": str(path),
                    "format": prepared.format,
                    "counts": counts,
                    "data_config": config.model_dump(mode="json"),
                },
                indent=2,
            ),
            encoding="utf-8",
        )
    with session(workspace.engine) as s:
        version = s.get(DatasetVersion, dataset_id)
        if version is None:
            version = DatasetVersion(
                id=dataset_id,
                name=name or path.stem,
                content_hash=digest,
                source=str(path),
                format=prepared.format,
                counts=counts,
                path=str(target),
                meta={"data_config": config.model_dump(mode="json")},
            )
            s.add(version)
    return version


def load_split(version: DatasetVersion, split: str) -> list[dict[str, Any]]:
    """The canonical records of one split of a stored dataset version."""
    path = Path(version.path) / f"{split}.jsonl"
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def get_dataset(workspace: Workspace, dataset_id: str) -> DatasetVersion:
    """Look a dataset version up by id.

    Raises:
        DataError: when there is none.
    """
    with session(workspace.engine) as s:
        version = s.get(DatasetVersion, dataset_id)
    if version is None:
        raise DataError(f"no dataset version {dataset_id!r}; `tunesmith data list` shows the stored ones")
    return version


def list_datasets(workspace: Workspace) -> list[DatasetVersion]:
    """Every stored dataset version, newest first."""
    with session(workspace.engine) as s:
        return list(s.scalars(select(DatasetVersion).order_by(DatasetVersion.created_at.desc())))


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    with path.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
