"""Comparing dataset versions."""

from __future__ import annotations

from collections import Counter
from typing import Any

from tunesmith.data.clean import dedup_key, record_text
from tunesmith.data.prepare import load_split
from tunesmith.data.split import SPLITS
from tunesmith.store import DatasetVersion


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
