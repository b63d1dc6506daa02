"""Splitting rows into train/val/test (random, stratified by label, grouped by a key) and k folds.

The unit that is shuffled and assigned is a group: rows that share the group field's value (a
conversation, a document, a fact with its paraphrases) always land in the same split and fold.
Rows that carry a split already keep it.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Sequence
from typing import Any, Protocol

from tunesmith.config import SplitConfig

SPLITS = ("train", "val", "test")


class Splittable(Protocol):
    """What the splitter needs of a row."""

    location: str
    record: dict[str, Any]
    split: str | None
    fold: int | None


PAIRS_OF = "_pairs_of"  # the ranking a preference pair was expanded from: its pairs stay together


def group_of(record: dict[str, Any], config: SplitConfig) -> Any:
    """What keeps a row with others in one split: the ranking it came from, or (when grouping is on,
    see `SplitConfig.groups`) its group field's value; None for a row on its own."""
    if record.get(PAIRS_OF) is not None:
        return record[PAIRS_OF]
    return record.get(config.group_field) if config.groups else None


def _units(items: Sequence[Splittable], config: SplitConfig) -> dict[str, list[Splittable]]:
    """Rows without a split, grouped by `group_of` (a row without a group is its own unit)."""
    units: dict[str, list[Splittable]] = defaultdict(list)
    for item in items:
        if item.split is None:
            group = group_of(item.record, config)
            units[f"g:{group}" if group is not None else f"r:{item.location}"].append(item)
    return units


def _strata(units: dict[str, list[Splittable]], config: SplitConfig) -> list[list[str]]:
    """Unit keys per stratum: one stratum, or one per label when stratifying."""
    if config.strategy != "stratified":
        return [sorted(units)]
    by_label: dict[str, list[str]] = defaultdict(list)
    for key, rows in units.items():
        by_label[str(rows[0].record.get("label"))].append(key)
    return [sorted(keys) for _, keys in sorted(by_label.items())]


def assign_splits(items: Sequence[Splittable], config: SplitConfig) -> None:
    """Give every row without a split one, in the configured shares, by whole groups.

    Shares are met in rows, not in groups: units are dealt in a seeded random order to test, then
    validation, then train, each until its share of the stratum's rows is reached.
    """
    units = _units(items, config)
    rng = random.Random(config.seed)
    for keys in _strata(units, config):
        rng.shuffle(keys)
        total = sum(len(units[k]) for k in keys)
        targets = {"test": round(total * config.test), "val": round(total * config.val)}
        filled = {"test": 0, "val": 0}
        for key in keys:
            size = len(units[key])
            split = "train"
            for name in ("test", "val"):
                # Take the unit if it brings the split closer to its target than leaving it out.
                if filled[name] < targets[name] and abs(filled[name] + size - targets[name]) <= abs(
                    filled[name] - targets[name]
                ):
                    split = name
                    break
            if split != "train":
                filled[split] += size
            for item in units[key]:
                item.split = split


def assign_folds(items: Sequence[Splittable], config: SplitConfig) -> None:
    """Deal the train rows into `config.folds` folds by whole groups (stratified when asked)."""
    if config.folds < 2:
        return
    train = [item for item in items if item.split == "train"]
    pending = [_Pending(item) for item in train]
    units = _units(pending, config)
    rng = random.Random(config.seed + 1)
    for keys in _strata(units, config):
        rng.shuffle(keys)
        sizes = [0] * config.folds
        for key in sorted(keys, key=lambda k: -len(units[k])) if config.strategy == "grouped" else keys:
            fold = min(range(config.folds), key=lambda f: (sizes[f], f))
            sizes[fold] += len(units[key])
            for row in units[key]:
                row.item.fold = fold  # type: ignore[attr-defined]


class _Pending:
    """A train row seen as unsplit, so folds reuse the split's grouping and strata."""

    def __init__(self, item: Splittable) -> None:
        self.item = item
        self.location = item.location
        self.record = item.record
        self.split: str | None = None
        self.fold: int | None = None
