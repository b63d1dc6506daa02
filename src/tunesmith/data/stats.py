"""Dataset statistics: rows, labels and token lengths per split, against the model's context window."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tunesmith.data.prepare import Prepared, TargetModel

PERCENTILES = (50, 90, 95, 99)


def percentile(sorted_values: list[int], q: float) -> int:
    """Nearest-rank percentile of an ascending list."""
    if not sorted_values:
        return 0
    rank = max(1, round(q / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def dataset_stats(prepared: Prepared, model: TargetModel | None) -> dict[str, Any]:
    """Per split: rows, label counts, token-length percentiles (counted for `model`), rows the trainer
    would truncate."""
    from tunesmith.data.split import SPLITS

    context_window = model.context_window if model else None
    truncate_at = model.truncate_at if model else None
    out: dict[str, Any] = {"context_window": context_window, "truncate_at": truncate_at, "splits": {}}
    for split in SPLITS:
        items = prepared.split_items(split)
        lengths = sorted(item.tokens for item in items if item.tokens is not None)
        entry: dict[str, Any] = {"rows": len(items)}
        if prepared.kind == "classification":
            entry["labels"] = dict(sorted(Counter(str(i.record["label"]) for i in items).items()))
        if prepared.kind == "tagging":
            entry["tags"] = dict(Counter(t for i in items for t in i.record["tags"]).most_common())
        if lengths:
            entry["tokens"] = {
                "total": sum(lengths),
                "mean": round(sum(lengths) / len(lengths), 1),
                "max": lengths[-1],
                **{f"p{q}": percentile(lengths, q) for q in PERCENTILES},
            }
            if truncate_at:
                entry["tokens"]["truncated"] = sum(1 for n in lengths if n > truncate_at)
        folds = Counter(item.fold for item in items if item.fold is not None)
        if folds:
            entry["folds"] = dict(sorted(folds.items()))
        out["splits"][split] = entry
    return out
