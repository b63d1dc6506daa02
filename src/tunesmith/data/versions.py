"""Comparing dataset versions, and storing versions derived from others (mixtures, folds)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from sqlalchemy import select

from tunesmith.data.clean import dedup_key, record_text
from tunesmith.data.prepare import load_split
from tunesmith.data.split import SPLITS
from tunesmith.store import DatasetVersion, session
from tunesmith.workspace import Workspace, atomic_dir


def diff_versions(a: DatasetVersion, b: DatasetVersion) -> dict[str, Any]:
    """Rows added, removed and kept per split (by normalised content), label shifts, option changes."""
    out: dict[str, Any] = {"a": a.id, "b": b.id, "splits": {}, "options": {}}
    for split in SPLITS:
        rows_a, rows_b = load_split(a, split), load_split(b, split)
        keys_a = Counter(dedup_key(record_text(r)) for r in rows_a)
        keys_b = Counter(dedup_key(record_text(r)) for r in rows_b)
        entry: dict[str, Any] = {
            "rows_a": len(rows_a),
            "rows_b": len(rows_b),
            "added": sum((keys_b - keys_a).values()),
            "removed": sum((keys_a - keys_b).values()),
            "kept": sum((keys_a & keys_b).values()),
        }
        labels_a = Counter(str(r["label"]) for r in rows_a if "label" in r)
        labels_b = Counter(str(r["label"]) for r in rows_b if "label" in r)
        if labels_a or labels_b:
            entry["labels"] = {
                k: [labels_a.get(k, 0), labels_b.get(k, 0)]
                for k in sorted(labels_a | labels_b)
                if labels_a.get(k, 0) != labels_b.get(k, 0)
            }
        out["splits"][split] = entry
    out["options"] = _changed(a.meta.get("data_config", {}), b.meta.get("data_config", {}))
    return out


def _changed(a: Any, b: Any, prefix: str = "data") -> dict[str, list[Any]]:
    if isinstance(a, dict) and isinstance(b, dict):
        changes: dict[str, list[Any]] = {}
        for key in sorted(set(a) | set(b)):
            changes.update(_changed(a.get(key), b.get(key), f"{prefix}.{key}"))
        return changes
    return {} if a == b else {prefix: [a, b]}


def find_derived(workspace: Workspace, digest: str) -> DatasetVersion | None:
    """The stored version with content hash `digest`, if its files are still there."""
    with session(workspace.engine) as s:
        existing = s.scalars(select(DatasetVersion).where(DatasetVersion.content_hash == digest)).first()
    return existing if existing is not None and workspace.dataset_dir(existing.id).exists() else None


def store_derived(
    workspace: Workspace,
    digest: str,
    splits: dict[str, list[dict[str, Any]]],
    *,
    name: str,
    source: str,
    format: str,
    meta: dict[str, Any],
    schema: Any = None,
) -> DatasetVersion:
    """Write `splits` as a new dataset version `ds-<digest[:12]>` (atomically) and record it.

    `schema` (a pyarrow schema) keeps the parent's column types when a split lacks a column.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    dataset_id = f"ds-{digest[:12]}"
    counts = {split: len(rows) for split, rows in splits.items()} | {"rejected": 0}
    target = workspace.dataset_dir(dataset_id)
    with atomic_dir(target) as tmp:
        for split, rows in splits.items():
            pq.write_table(pa.Table.from_pylist(rows, schema=schema), Path(tmp) / f"{split}.parquet")
        report = {"id": dataset_id, "kind": meta.get("kind"), "counts": counts, **meta}
        (tmp / "report.json").write_text(json.dumps(report, indent=2, default=str), encoding="utf-8")
    with session(workspace.engine) as s:
        stored = s.get(DatasetVersion, dataset_id)
        if stored is None:
            stored = DatasetVersion(
                id=dataset_id,
                name=name,
                content_hash=digest,
                source=source,
                format=format,
                counts=counts,
                path=str(target),
                meta=meta,
            )
            s.add(stored)
    return stored
