"""Preparing a dataset version: read, detect, convert, validate, clean, dedupe, split, check, store.

The steps run in this order and each reports what it changed or removed. Rows that cannot be
used go to `rejected.jsonl` with their `file:line`, the step and the reason: nothing is dropped
silently. A dataset version is immutable and named by the hash of its rows and options, so
preparing the same input with the same options twice gives the same id.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select

from tunesmith.chat import render_chat
from tunesmith.config import DataConfig, ProjectConfig
from tunesmith.data import clean as cleaning
from tunesmith.data.formats import (
    FORMATS,
    Detection,
    RowError,
    apply_mapping,
    convert,
    detect_format,
    expand_rankings,
    match_format,
)
from tunesmith.data.sources import ReadResult, Rejected, SourceError, read_source
from tunesmith.data.split import PAIRS_OF, SPLITS, assign_folds, assign_splits, group_of
from tunesmith.errors import InputError
from tunesmith.reasoning import ReasoningPolicy, apply_policy
from tunesmith.store import DatasetVersion, session
from tunesmith.workspace import Workspace, atomic_dir

SPLIT_ALIASES = {
    "train": "train",
    "val": "val",
    "validation": "val",
    "valid": "val",
    "dev": "val",
    "test": "test",
}


class DataError(InputError):
    """Data that cannot become a dataset version."""


@dataclass(frozen=True)
class TargetModel:
    """The model rows are prepared for: its tokenizer counts their tokens against its context window,
    and training cuts them at `truncate_at` (train.max_length)."""

    tokenizer: Any
    context_window: int | None = None
    truncate_at: int | None = None
    model_id: str | None = None


@dataclass
class Item:
    """One canonical record on its way through the steps."""

    location: str
    record: dict[str, Any]
    split: str | None = None
    fold: int | None = None
    tokens: int | None = None


@dataclass
class Step:
    """What one step did."""

    name: str
    changed: int = 0
    removed: int = 0
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class Prepared:
    """The outcome of the steps: kept rows, rejected rows, and the report of every step."""

    kind: str
    detection: Detection | None
    items: list[Item]
    rejected: list[Rejected]
    steps: list[Step]
    notes: list[str]
    files: list[str]
    conflicts: list[dict[str, Any]] = field(default_factory=list)  # same input, other labels/answers

    def split_items(self, split: str) -> list[Item]:
        return [item for item in self.items if item.split == split]

    def reasons(self) -> Counter[str]:
        """Rejections per step and short reason (the text before the first colon or parenthesis)."""
        return Counter(f"{r.step}: {_short_reason(r.reason)}" for r in self.rejected)


def _short_reason(reason: str) -> str:
    """A reason without the row-specific parts, so that equal problems count together."""
    for stop in (", got", " (", " of ", " is an ", " is a ", ": matches"):
        reason = reason.split(stop, 1)[0]
    return re.sub(r"\d+", "N", re.sub(r"\[\d+\]", "[i]", reason))[:80]


def check_rows(
    config: DataConfig, path: str, base_dir: Path | None = None, model: TargetModel | None = None
) -> Prepared:
    """Read, detect, convert, validate, clean and dedupe: everything but splitting; token lengths are
    checked only for a `model`.

    Raises:
        DataError: when the source cannot be read or no row fits any format.
    """
    try:
        read = read_source(path, base_dir)
    except SourceError as exc:
        raise DataError(str(exc)) from None
    rejected = list(read.rejected)
    steps = [Step("read", removed=len(read.rejected), details={"rows": len(read.rows) + len(read.rejected)})]
    items, kind, detection = _convert_rows(read, config, rejected, steps)
    items = _clean(items, config, rejected, steps)
    if model is not None:
        items = _filter_lengths(items, kind, config, model, rejected, steps)
    if config.clean.dedup:
        items = _dedup_exact(items, rejected, steps)
    items, conflicts = _conflicts(items, kind, config.clean.conflicts, rejected, steps)
    if config.clean.near_dedup:
        items = _dedup_near(items, config.clean.near_threshold, rejected, steps)
    if config.sample is not None and config.sample < len(items):
        import random

        kept = sorted(random.Random(config.split.seed).sample(range(len(items)), config.sample))
        steps.append(Step("sample", removed=len(items) - len(kept), details={"rows": config.sample}))
        items = [items[i] for i in kept]
    return Prepared(
        kind=kind,
        detection=detection,
        items=items,
        rejected=rejected,
        steps=steps,
        notes=list(read.notes),
        files=read.files,
        conflicts=conflicts,
    )


def _check_mapping(read: ReadResult, config: DataConfig) -> None:
    """A column that `data.columns` (`--map`) names must exist in the source.

    Raises:
        DataError: naming the missing columns and the columns the rows have.
    """
    if not config.columns or not read.rows:
        return
    seen = list(dict.fromkeys(key for row in read.rows for key in row.row))
    missing = {field: source for field, source in config.columns.items() if source not in seen}
    if missing:
        named = ", ".join(f"{source!r} (for {field})" for field, source in missing.items())
        raise DataError(
            f"{config.path}: data.columns (--map) names {named}, but no row has that column; "
            f"the columns are: {', '.join(seen)}"
        )


def data_format(config: DataConfig, base_dir: Path | None = None) -> str:
    """The row format `config.path` holds (a FORMATS name: chat, text_label, preference...), as
    configured or detected on its rows: what `tunesmith validate` checks the objective against.

    Raises:
        DataError: when the source cannot be read or no row fits any format.
    """
    if config.format != "auto":
        return config.format
    assert config.path is not None
    try:
        read = read_source(config.path, base_dir)
    except SourceError as exc:
        raise DataError(str(exc)) from None
    _check_mapping(read, config)
    try:
        detection = detect_format([apply_mapping(row.row, config.columns) for row in read.rows])
    except RowError as exc:
        raise DataError(f"{', '.join(read.files[:3])}: {exc}") from None
    return detection.format


def _detect(
    read: ReadResult, config: DataConfig, mapped: list[tuple[str, dict[str, Any]]]
) -> tuple[Detection | None, str, dict[str, Any]]:
    """The rows' format (None: `data.format` names it), its kind, and the convert step's details."""
    if config.format != "auto":
        kind = FORMATS[config.format].kind
        return None, kind, {"format": config.format, "kind": kind}
    try:
        detection = detect_format([row for _, row in mapped])
    except RowError as exc:
        raise DataError(f"{', '.join(read.files[:3])}: {exc}") from None
    kind = FORMATS[detection.format].kind
    details = {"format": detection.format, "kind": kind}
    if detection.columns:
        details["columns"] = ", ".join(f"{k}={v}" for k, v in detection.columns.items())
    return detection, kind, details


def _convert_rows(
    read: ReadResult, config: DataConfig, rejected: list[Rejected], steps: list[Step]
) -> tuple[list[Item], str, Detection | None]:
    _check_mapping(read, config)
    mapped = [(row.location, apply_mapping(row.row, config.columns)) for row in read.rows]
    detection, kind, details = _detect(read, config, mapped)
    if detection is not None and detection.columns:  # the columns read by their names
        mapped = [(location, apply_mapping(row, detection.columns)) for location, row in mapped]
    step = Step("convert", details=details)
    items: list[Item] = []
    labels = set(config.labels) if config.labels is not None else None
    for location, row in mapped:
        fmt = config.format if config.format != "auto" else (match_format(row) or detection.format)  # type: ignore[union-attr]
        try:
            if FORMATS[fmt].kind != kind:
                raise RowError(
                    f"a {fmt} row ({FORMATS[fmt].kind}) in a {kind} dataset; every row must be the same kind"
                )
            record = convert(row, fmt, config.system_prompt)
            split = record.pop(config.split.field, None)
            if split is not None and (not isinstance(split, str) or split.lower() not in SPLIT_ALIASES):
                raise RowError(f"{config.split.field}: expected train, val or test, got {split!r}")
            if labels is not None and kind == "classification" and record["label"] not in labels:
                raise RowError(
                    f"label: unknown label {record['label']!r}; allowed: {', '.join(sorted(labels))}"
                )
        except RowError as exc:
            rejected.append(Rejected(location, str(exc), row, step="convert"))
            step.removed += 1
            continue
        records = expand_rankings(record) if fmt == "ranking" else [record]
        if fmt == "ranking":  # the pairs of one ranking stay in one split
            for each in records:
                each[PAIRS_OF] = location
        step.changed += len(records) - 1
        for index, each in enumerate(records):
            items.append(
                Item(
                    f"{location}" + (f"/pair{index}" if fmt == "ranking" else ""),
                    each,
                    split=SPLIT_ALIASES[split.lower()] if isinstance(split, str) else None,
                )
            )
    steps.append(step)
    return items, kind, detection


def _text_step(name: str, items: list[Item], fn: Any) -> Step:
    """Apply `fn` to every text of every record; count the records it changed."""
    step = Step(name)
    for item in items:
        cleaned = cleaning.map_texts(item.record, fn)
        if cleaned != item.record:
            item.record, step.changed = cleaned, step.changed + 1
    return step


def _reasoning_step(items: list[Item], policy: ReasoningPolicy) -> Step:
    """Count the rows with reasoning traces; `drop` removes the traces."""
    step = Step("reasoning", details={"policy": policy, "rows_with_traces": 0, "traces": 0})
    for item in items:
        item.record, traces = apply_policy(item.record, policy)
        if traces:
            step.details["rows_with_traces"] += 1
            step.details["traces"] += traces
            step.changed += policy == "drop"
    return step


def _clean(items: list[Item], config: DataConfig, rejected: list[Rejected], steps: list[Step]) -> list[Item]:
    clean = config.clean
    traces = _reasoning_step(items, config.reasoning)
    if traces.details["rows_with_traces"]:  # a row in the report only for data that has traces
        steps.append(traces)
    if clean.normalize:
        steps.append(_text_step("normalize", items, cleaning.normalise_text))
    if clean.collapse_whitespace:
        steps.append(_text_step("collapse_whitespace", items, cleaning.collapse_whitespace))
    if clean.strip_html:
        steps.append(_text_step("strip_html", items, cleaning.strip_html))
    if clean.pii:
        counts: Counter[str] = Counter()

        def scrub(text: str) -> str:
            return cleaning.scrub_pii(text, counts, clean.pii_types, clean.pii_keep)

        step = _text_step("pii", items, scrub)
        step.details = {"by_type": dict(counts.most_common())}
        steps.append(step)
    step = Step("empty")
    kept = []
    for item in items:
        if not cleaning.record_text(item.record).strip():
            rejected.append(Rejected(item.location, "no text left after cleaning", item.record, step="empty"))
            step.removed += 1
        else:
            kept.append(item)
    steps.append(step)
    return kept


def render_for_length(record: dict[str, Any], kind: str, tokenizer: Any) -> str:
    """The text whose tokens count against the context window, as training will see it."""
    if kind == "sft":
        return render_chat(tokenizer, record["messages"], record.get("tools"))
    if kind == "preference":
        prompt = cleaning.record_text({"prompt": record["prompt"]})
        longer = max((cleaning.record_text({"text": record[k]}) for k in ("chosen", "rejected")), key=len)
        return prompt + longer
    if kind == "unpaired":
        return cleaning.record_text({"prompt": record["prompt"]}) + cleaning.record_text(
            {"text": record["completion"]}
        )
    if kind == "tagging":
        return " ".join(record["tokens"])
    return str(record["text"])


def _filter_lengths(
    items: list[Item],
    kind: str,
    config: DataConfig,
    model: TargetModel,
    rejected: list[Rejected],
    steps: list[Step],
) -> list[Item]:
    tokenizer = model.tokenizer
    texts = [render_for_length(item.record, kind, tokenizer) for item in items]
    lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]] if texts else []
    limit = config.clean.max_tokens or model.context_window
    step = Step("length", details={"min_tokens": config.clean.min_tokens, "max_tokens": limit})
    kept = []
    for item, length in zip(items, lengths, strict=True):
        item.tokens = length
        if length < config.clean.min_tokens:
            reason = f"too short: {length} tokens, below clean.min_tokens={config.clean.min_tokens}"
        elif limit is not None and length > limit:
            reason = f"too long: {length} tokens, over {limit} (the model's context or clean.max_tokens)"
        else:
            kept.append(item)
            continue
        rejected.append(Rejected(item.location, reason, item.record, step="length"))
        step.removed += 1
    steps.append(step)
    return kept


def _labels(record: dict[str, Any]) -> str:
    return json.dumps([record.get(k) for k in ("label", "labels", "tags")], sort_keys=True, default=str)


def _output_key(record: dict[str, Any]) -> str:
    """A row's whole content for exact dedup: its text with its label or tags."""
    return cleaning.dedup_key(cleaning.record_text(record) + "\n" + _labels(record))


def _dedup_exact(items: list[Item], rejected: list[Rejected], steps: list[Step]) -> list[Item]:
    step = Step("dedup_exact")
    first: dict[str, str] = {}
    kept = []
    for item in items:
        key = _output_key(item.record)
        if key in first:
            rejected.append(
                Rejected(item.location, f"exact duplicate of {first[key]}", item.record, step="dedup_exact")
            )
            step.removed += 1
            continue
        first[key] = item.location
        kept.append(item)
    steps.append(step)
    return kept


def _conflicts(
    items: list[Item], kind: str, policy: str, rejected: list[Rejected], steps: list[Step]
) -> tuple[list[Item], list[dict[str, Any]]]:
    """Rows with the same input and different labels or answers: never resolved silently.

    Every group is returned (for `conflicts.jsonl`) and counted; `policy` keeps them all, keeps the
    first row of each, or drops them all (the rejected rows say why). Preference rows may share a
    prompt by design and are not checked.
    """
    if kind in ("preference", "unpaired"):
        return items, []
    if policy == "auto":
        policy = "drop_all" if kind in ("classification", "tagging") else "keep_all"
    groups: dict[str, list[Item]] = {}
    for item in items:
        groups.setdefault(cleaning.dedup_key(cleaning.prompt_text(item.record)), []).append(item)
    conflicting = [g for g in groups.values() if len({_output_key(i.record) for i in g}) > 1]
    drop: set[int] = set()
    for group in conflicting:
        losers = group if policy == "drop_all" else group[1:] if policy == "keep_first" else []
        for item in losers:
            others = ", ".join(i.location for i in group if i is not item)
            reason = f"conflict: same input as {others} with a different label or answer ({policy})"
            rejected.append(Rejected(item.location, reason, item.record, step="conflicts"))
            drop.add(id(item))
    rows = [{"rows": [{"location": i.location, "record": i.record} for i in g]} for g in conflicting]
    details = {"policy": policy, "groups": len(conflicting), "rows": sum(len(g) for g in conflicting)}
    steps.append(Step("conflicts", removed=len(drop), details=details))
    return [item for item in items if id(item) not in drop], rows


def _dedup_near(
    items: list[Item], threshold: float, rejected: list[Rejected], steps: list[Step]
) -> list[Item]:
    index = cleaning.NearDuplicateIndex(threshold=threshold)
    hashes = index.minhashes([cleaning.record_text(item.record) for item in items], "Near duplicates")
    step = Step("dedup_near", details={"threshold": threshold, "clusters": []})
    clusters: dict[str, list[str]] = {}
    labels: dict[str, str] = {}  # a near twin with another label is a conflict, not a duplicate
    kept = []
    for item, minhash in zip(items, hashes, strict=True):
        label = _labels(item.record)
        twins = [twin for twin in index.query(minhash) if labels[twin[0]] == label]
        if twins:
            keeper, similarity = twins[0]
            rejected.append(
                Rejected(
                    item.location,
                    f"near duplicate (similarity {similarity:.2f}) of {keeper}",
                    item.record,
                    step="dedup_near",
                )
            )
            clusters.setdefault(keeper, []).append(item.location)
            step.removed += 1
            continue
        index.add(item.location, minhash)
        labels[item.location] = label
        kept.append(item)
    step.details["clusters"] = [{"kept": k, "removed": v} for k, v in list(clusters.items())[:200]]
    step.details["cluster_count"] = len(clusters)
    steps.append(step)
    return kept


def split_rows(
    prepared: Prepared,
    config: DataConfig,
    base_dir: Path | None = None,
    earlier: EarlierSplits | None = None,
) -> Prepared:
    """Assign splits and folds, then remove leakage across splits and contamination by eval files.

    With `earlier` (the splits of the previous version of the same data), a row whose prompt was
    there keeps its split: a dataset that grew keeps its old test rows in test.
    """
    if config.split.synthetic == "train":
        _synthetic_to_train(prepared)
    if earlier is not None:
        _keep_earlier_splits(prepared, config, earlier)
    assign_splits(prepared.items, config.split)
    if config.split.leakage != "off":
        _check_leakage(prepared, config)
    if config.contamination:
        _check_contamination(prepared, config, base_dir)
    assign_folds(prepared.items, config.split)
    return prepared


@dataclass
class EarlierSplits:
    """The split of every prompt (its exact-duplicate key) in an earlier version of the same data."""

    version_id: str
    by_prompt: dict[str, str]


def earlier_splits(workspace: Workspace, config: DataConfig) -> EarlierSplits | None:
    """The newest stored version prepared from the same source with the same split settings, as
    {prompt key: split}; None when there is none (its rows' splits are what a new version keeps)."""
    same = ("strategy", "val", "test", "seed", "field", "group_field")
    wanted = config.split.model_dump(mode="json")
    with session(workspace.engine) as s:
        versions = list(
            s.scalars(
                select(DatasetVersion)
                .where(DatasetVersion.source == config.path)
                .order_by(DatasetVersion.created_at.desc())
            )
        )
    for version in versions:
        recorded = (version.meta or {}).get("data_config", {}).get("split", {})
        if all(recorded.get(key) == wanted[key] for key in same) and Path(version.path).is_dir():
            by_prompt: dict[str, str] = {}
            for split in ("train", "val", "test"):  # a prompt in two splits: the held-out one wins
                for record in load_split(version, split):
                    by_prompt[cleaning.dedup_key(cleaning.prompt_text(record))] = split
            return EarlierSplits(version.id, by_prompt)
    return None


def _keep_earlier_splits(prepared: Prepared, config: DataConfig, earlier: EarlierSplits) -> None:
    """Rows (and the rest of their groups) whose prompt an earlier version held keep its split."""
    kept: dict[str, int] = {}
    by_group: dict[Any, str] = {}
    for item in prepared.items:
        previous = earlier.by_prompt.get(cleaning.dedup_key(cleaning.prompt_text(item.record)))
        if item.split is None and previous is not None:
            item.split = previous
            kept[previous] = kept.get(previous, 0) + 1
            group = group_of(item.record, config.split)
            if group is not None:
                by_group.setdefault(group, previous)
    for item in prepared.items:
        group = group_of(item.record, config.split)
        if item.split is None and group in by_group:
            item.split = by_group[group]
    prepared.steps.append(
        Step("stable_splits", changed=sum(kept.values()), details={"from": earlier.version_id, "kept": kept})
    )


def is_synthetic(record: dict[str, Any]) -> bool:
    """A row a teacher model wrote (`tunesmith data synth` / `augment`), not one people wrote."""
    return record.get("origin") == "synthetic"


def _synthetic_to_train(prepared: Prepared) -> None:
    """Synthetic rows train but are never measured on: validation and test stay real."""
    synthetic = [item for item in prepared.items if is_synthetic(item.record)]
    if not synthetic:
        return
    moved = [item for item in synthetic if item.split in ("val", "test")]
    for item in synthetic:
        item.split = "train"
    prepared.steps.append(
        Step(
            "synthetic",
            changed=len(moved),
            details={"rows": len(synthetic), "policy": "train only", "moved_from_held_out": len(moved)},
        )
    )


def _check_leakage(prepared: Prepared, config: DataConfig) -> None:
    """A val/test row whose input equals (or nearly equals) a train row's input is a leak.

    When the train twin is synthetic, the synthetic row goes instead: held-out rows are real data and
    keep the metrics honest, a teacher's copy of one is the row to lose.
    """
    train = prepared.split_items("train")
    by_location = {item.location: item for item in train}
    index = cleaning.NearDuplicateIndex(threshold=config.clean.near_threshold)
    exact: dict[str, list[str]] = {}
    for item, minhash in zip(
        train, index.minhashes([cleaning.prompt_text(i.record) for i in train]), strict=True
    ):
        exact.setdefault(cleaning.dedup_key(cleaning.prompt_text(item.record)), []).append(item.location)
        index.add(item.location, minhash)
    held_out = [item for item in prepared.items if item.split in ("val", "test")]
    members: dict[Any, list[Item]] = {}
    for item in held_out:
        group = group_of(item.record, config.split)
        if group is not None:
            members.setdefault(group, []).append(item)
    prompts = [cleaning.prompt_text(i.record) for i in held_out]
    step = Step("leakage", details={"action": config.split.leakage, "twins": []})
    leaked: set[int] = set()
    for item, prompt, minhash in zip(held_out, prompts, index.minhashes(prompts), strict=True):
        if item.split == "train":  # moved with its group when another member leaked
            continue
        twins = [(location, "an exact twin") for location in exact.get(cleaning.dedup_key(prompt), [])]
        seen = {location for location, _ in twins}
        twins += [
            (location, f"a near twin (similarity {similarity:.2f})")
            for location, similarity in index.query(minhash)
            if location not in seen
        ]
        real = [(loc, how) for loc, how in twins if not is_synthetic(by_location[loc].record)]
        for location, how in twins:
            twin = by_location[location]
            if is_synthetic(twin.record) and id(twin) not in leaked:
                leaked.add(id(twin))
                prepared.rejected.append(
                    Rejected(
                        twin.location,
                        f"leakage: synthetic train row is {how} of {item.split} row {item.location}",
                        twin.record,
                        step="leakage",
                    )
                )
                step.removed += 1
        if not real:
            continue
        twin_location, how = real[0]
        step.details["twins"].append({"row": item.location, "split": item.split, "train_row": twin_location})
        if config.split.leakage == "reassign":  # the whole group moves, never one row of it
            group = group_of(item.record, config.split)
            for member in [item] if group is None else members.get(group, [item]):
                if member.split != "train":
                    member.split = "train"
                    step.changed += 1
        else:
            leaked.add(id(item))
            prepared.rejected.append(
                Rejected(
                    item.location,
                    f"leakage: {item.split} row is {how} of train row {twin_location}",
                    item.record,
                    step="leakage",
                )
            )
            step.removed += 1
    prepared.items = [item for item in prepared.items if id(item) not in leaked]
    step.details["twins"] = step.details["twins"][:200]
    prepared.steps.append(step)


def _check_contamination(prepared: Prepared, config: DataConfig, base_dir: Path | None) -> None:
    """Rows whose input matches a row of a named eval/benchmark file are removed from every split."""
    index = cleaning.NearDuplicateIndex(threshold=config.clean.near_threshold)
    exact: dict[str, str] = {}
    for ref in config.contamination:
        try:
            read = read_source(ref, base_dir)
        except SourceError as exc:
            raise DataError(f"data.contamination: {exc}") from None
        texts = [(row.location, _loose_input(row.row)) for row in read.rows]
        texts = [(loc, text) for loc, text in texts if text.strip()]
        for (location, text), minhash in zip(texts, index.minhashes([t for _, t in texts]), strict=True):
            exact.setdefault(cleaning.dedup_key(text), location)
            if location not in index._hashes:
                index.add(location, minhash)
    step = Step("contamination", details={"files": config.contamination})
    prompts = [cleaning.prompt_text(item.record) for item in prepared.items]
    kept = []
    for item, prompt, minhash in zip(prepared.items, prompts, index.minhashes(prompts), strict=True):
        match = exact.get(cleaning.dedup_key(prompt))
        near = [] if match else index.query(minhash)
        if match or near:
            source = match or near[0][0]
            prepared.rejected.append(
                Rejected(
                    item.location,
                    f"contamination: matches eval row {source}",
                    item.record,
                    step="contamination",
                )
            )
            step.removed += 1
        else:
            kept.append(item)
    prepared.items = kept
    prepared.steps.append(step)


def _loose_input(row: dict[str, Any]) -> str:
    """The input side of an eval row in whatever format it is (question, prompt, text, ...)."""
    fmt = match_format(row)
    if fmt is not None:
        try:
            return cleaning.prompt_text(convert(row, fmt))
        except RowError:
            pass
    for key in ("question", "prompt", "instruction", "input", "text", "content", "query"):
        if isinstance(row.get(key), str):
            return str(row[key])
    return ""


def content_hash(prepared: Prepared, config: DataConfig) -> str:
    """sha256 over the options and every kept row with its split and fold: the version's identity."""
    digest = hashlib.sha256()
    options = config.model_dump(mode="json", exclude={"path"})
    digest.update(json.dumps(options, sort_keys=True).encode())
    for item in prepared.items:
        digest.update(
            json.dumps([item.split, item.fold, item.record], sort_keys=True, ensure_ascii=False).encode()
        )
        digest.update(b"\n")
    return digest.hexdigest()


def prepare_for_project(
    config: ProjectConfig, workspace: Workspace, data: DataConfig, model: TargetModel, **options: Any
) -> DatasetVersion:
    """`prepare_dataset` of `data` for the project's `model`, paths read from the config's folder;
    `options` as `prepare_dataset`'s."""
    version, _ = prepare_dataset(workspace, data, base_dir=config.base_dir, model=model, **options)
    return version


def prepare_dataset(
    workspace: Workspace,
    config: DataConfig,
    *,
    base_dir: Path | None = None,
    model: TargetModel | None = None,
    name: str | None = None,
    lineage: dict[str, Any] | None = None,
) -> tuple[DatasetVersion, Prepared]:
    """Run every step on `config.path` and store the result as an immutable dataset version.

    Returns the existing version when the same rows were prepared with the same options before.
    `lineage` (where the rows came from, e.g. the served requests behind them) goes in its meta.

    Raises:
        DataError: when the source is unusable, no training row is left, or `data.strict` is set
            and a row was rejected.
    """
    if config.path is None:
        raise DataError("data.path is not set; point it at a file, folder, glob, saved dataset or hub id")
    checked = check_rows(config, config.path, base_dir, model)
    prepared = split_rows(checked, config, base_dir, earlier_splits(workspace, config))
    _refuse_unusable(prepared, config)
    from tunesmith.data.stats import dataset_stats

    digest = content_hash(prepared, config)
    dataset_id = f"ds-{digest[:12]}"
    with session(workspace.engine) as s:
        existing = s.scalars(select(DatasetVersion).where(DatasetVersion.content_hash == digest)).first()
        if existing is not None and workspace.dataset_dir(existing.id).exists():
            return existing, prepared
    counts: dict[str, Any] = {split: len(prepared.split_items(split)) for split in SPLITS}
    counts["rejected"] = len(prepared.rejected)
    if prepared.conflicts:
        counts["conflicts"] = len(prepared.conflicts)
    report = {
        "id": dataset_id,
        "content_hash": digest,
        "source": config.path,
        "files": prepared.files,
        "kind": prepared.kind,
        "detection": _detection_json(prepared.detection),
        "counts": counts,
        "steps": [vars(step) for step in prepared.steps],
        "notes": prepared.notes,
        "rejected_by_reason": dict(prepared.reasons().most_common()),
        "model": model.model_id if model else None,
        "stats": dataset_stats(prepared, model),
        "data_config": config.model_dump(mode="json"),
    }
    target = workspace.dataset_dir(dataset_id)
    _write_version_files(target, prepared, report)
    with session(workspace.engine) as s:
        version = s.get(DatasetVersion, dataset_id)
        if version is None:
            version = DatasetVersion(
                id=dataset_id,
                name=name or Path(config.path).stem or config.path,
                content_hash=digest,
                source=config.path,
                format=_format_name(prepared, config),
                counts=counts,
                path=str(target),
                meta={
                    "kind": prepared.kind,
                    "report": {
                        k: report[k] for k in ("detection", "steps", "stats", "rejected_by_reason", "notes")
                    },
                    "data_config": config.model_dump(mode="json"),
                    **({"lineage": lineage} if lineage else {}),
                },
            )
            s.add(version)
    return version, prepared


def _refuse_unusable(prepared: Prepared, config: DataConfig) -> None:
    """Raise DataError when `data.strict` is set and a row was rejected, or no training row is left."""
    if config.strict and prepared.rejected:
        summary = ", ".join(f"{reason} ({n})" for reason, n in prepared.reasons().most_common(5))
        raise DataError(
            f"{config.path}: {len(prepared.rejected)} row(s) rejected and data.strict is set: "
            f"{summary}. First: {prepared.rejected[0].location}: {prepared.rejected[0].reason}"
        )
    if not prepared.split_items("train"):
        first = "\n".join(f"  {r.location}: {r.reason}" for r in prepared.rejected[:5])
        raise DataError(
            f"{config.path}: no usable training rows ({len(prepared.rejected)} rejected)"
            + (f":\n{first}" if first else "")
        )


def _write_version_files(target: Path, prepared: Prepared, report: dict[str, Any]) -> None:
    """The version's folder, whole or not at all: a Parquet file per split, the rejected rows with their
    reasons, and the report as JSON and HTML."""
    from tunesmith.data.report import write_html_report

    with atomic_dir(target) as tmp:
        for split in SPLITS:
            write_split(tmp / f"{split}.parquet", prepared.split_items(split))
        with (tmp / "rejected.jsonl").open("w", encoding="utf-8") as handle:
            for rejected in prepared.rejected:
                handle.write(json.dumps(rejected.to_json(), ensure_ascii=False, default=str) + "\n")
        with (tmp / "conflicts.jsonl").open("w", encoding="utf-8") as handle:
            for group in prepared.conflicts:
                handle.write(json.dumps(group, ensure_ascii=False, default=str) + "\n")
        (tmp / "report.json").write_text(json.dumps(report, indent=2, default=str), encoding="utf-8")
        write_html_report(report, prepared, tmp / "report.html")


def _format_name(prepared: Prepared, config: DataConfig) -> str:
    return prepared.detection.format if prepared.detection is not None else config.format


def _detection_json(detection: Detection | None) -> dict[str, Any] | None:
    if detection is None:
        return None
    return {
        "format": detection.format,
        "confidence": detection.confidence,
        "votes": detection.votes,
        "sampled": detection.sampled,
        "columns": detection.columns,
    }


def write_split(path: Path, items: list[Item]) -> None:
    """Write one split as Parquet: the canonical fields as columns, plus location, fold and tokens."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [
        {**item.record, "_location": item.location, "_fold": item.fold, "_tokens": item.tokens}
        for item in items
    ]
    # Column by column over every row: rows may differ in their metadata fields (a synthetic row's
    # `origin`), and a table built from the rows alone takes its columns from the first one.
    columns = list(dict.fromkeys(key for row in rows for key in row))
    pq.write_table(pa.table({key: _column(pa, [row.get(key) for row in rows]) for key in columns}), path)


def _column(pa: Any, values: list[Any]) -> Any:
    """One Parquet column; a metadata field whose values mix types across rows (an id that is a
    number in one row and a string in the next) is stored as JSON text, so no row is lost."""
    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return pa.array(
            [None if v is None else json.dumps(v, ensure_ascii=False, default=str) for v in values]
        )


def load_split(version: DatasetVersion, split: str, *, with_meta: bool = False) -> list[dict[str, Any]]:
    """The canonical records of one split of a stored dataset version."""
    import pyarrow.parquet as pq

    path = Path(version.path) / f"{split}.parquet"
    records = [_drop_nulls(row) for row in pq.read_table(path).to_pylist()]
    if not with_meta:
        records = [{k: v for k, v in r.items() if not k.startswith("_")} for r in records]
    return records


def _drop_nulls(value: Any) -> Any:
    """Parquet gives every row every column; a field a row never had comes back as None."""
    if isinstance(value, dict):
        return {k: _drop_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_nulls(v) for v in value]
    return value


def get_dataset(workspace: Workspace, dataset_id: str) -> DatasetVersion:
    """Look a dataset version up by id (or a unique prefix of it).

    Raises:
        DataError: when there is none, or the prefix starts more than one id.
    """
    with session(workspace.engine) as s:
        version = s.get(DatasetVersion, dataset_id)
        if version is not None:
            return version
        matches = list(s.scalars(select(DatasetVersion.id).where(DatasetVersion.id.startswith(dataset_id))))
        if len(matches) == 1:
            return s.get_one(DatasetVersion, matches[0])
    if matches:
        raise DataError(
            f"{dataset_id!r} matches {len(matches)} dataset versions ({', '.join(sorted(matches))}); "
            "give more of the id"
        )
    raise DataError(f"no dataset version {dataset_id!r}; `tunesmith data list` shows the stored ones")


def list_datasets(workspace: Workspace) -> list[DatasetVersion]:
    """Every stored dataset version, newest first."""
    with session(workspace.engine) as s:
        return list(s.scalars(select(DatasetVersion).order_by(DatasetVersion.created_at.desc())))
