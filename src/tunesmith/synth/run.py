"""Synthetic rows end to end: documents or existing rows → teacher → filters → a dataset version.

`synthesize` writes question/answer (or instruction/response) pairs grounded in chunks of domain
documents; `augment` writes paraphrases of a dataset version's train rows, optionally to even out
the classes. Both tag every row `origin: synthetic` with the teacher and the prompt version, run
the quality filters, and hand the result to the data stage, so the outcome is an ordinary dataset
version (validated, scrubbed, split with synthetic rows kept to train) with lineage to the
documents or the parent version and the teacher.

Each run keeps a folder `synth/<id>/` in the workspace: the chunks, the rows, every rejected row
with its filter and reason, and `report.json`.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from tunesmith.config import ProjectConfig
from tunesmith.data.prepare import DataError, Step, get_dataset, is_synthetic, load_split
from tunesmith.data.sources import Rejected, SourceError, read_source
from tunesmith.store import DatasetVersion
from tunesmith.synth import filters
from tunesmith.synth.documents import Chunk, chunk_documents, read_documents
from tunesmith.synth.prompts import (
    PARAPHRASE_VERSION,
    PairPrompt,
    pair_prompt,
    paraphrase_prompt,
    parse_pairs,
    parse_paraphrases,
)
from tunesmith.synth.teacher import Request, Teacher, load_local_model, load_teacher
from tunesmith.workspace import Workspace, atomic_dir

Balance = Literal["largest"] | int | None  # labels topped up to the largest one's count, to N rows, or not
TAG_FIELDS = (
    "method",
    "teacher",
    "prompt_version",
    "run",
    "document",
    "chunk_id",
    "chunk",
    "source_row",
    "grounding",
    "similarity",
    "judge",
)


@dataclass
class SynthResult:
    """What a synthetic run produced, what each filter removed, and the dataset version it became."""

    id: str
    folder: Path
    method: str
    teacher: str
    prompt_version: str
    requests: int
    candidates: int  # rows parsed from the teacher's replies, before the filters
    kept: int
    steps: list[Step]
    version: DatasetVersion | None = None
    notes: list[str] = field(default_factory=list)
    classes: dict[str, dict[str, int]] | None = None  # augmentation: rows per label before and after


def _tag(method: str, teacher: Teacher, prompt_version: str, run_id: str, **values: Any) -> dict[str, Any]:
    """The `synthetic` field of a row: always the same keys, so every row has the same columns."""
    tag = dict.fromkeys(TAG_FIELDS)
    tag.update(method=method, teacher=teacher.identity, prompt_version=prompt_version, run=run_id, **values)
    return tag


def _run_id(kind: str, parts: dict[str, Any]) -> str:
    blob = json.dumps(parts, sort_keys=True, default=str)
    return f"syn-{kind[:3]}-{hashlib.sha256(blob.encode()).hexdigest()[:10]}"


def _encoder() -> Callable[[list[str]], np.ndarray]:
    from tunesmith.models.embed import Embedder

    return Embedder().encode


def existing_rows(
    workspace: Workspace, config: ProjectConfig, refs: list[str]
) -> list[tuple[str, dict[str, Any]]]:
    """Rows no synthetic row may repeat: every split of a dataset version (`ds-…`), or a file's rows.

    Raises:
        DataError: when a reference is neither a stored version nor a readable file.
    """
    from tunesmith.data.formats import RowError, convert, match_format

    out: list[tuple[str, dict[str, Any]]] = []
    for ref in refs:
        if ref.startswith("ds-"):
            version = get_dataset(workspace, ref)
            for split in ("train", "val", "test"):
                out += [(f"{version.id}/{split}:{i}", r) for i, r in enumerate(load_split(version, split))]
            continue
        try:
            read = read_source(ref, config.base_dir)
        except SourceError as exc:
            raise DataError(f"synth.against: {exc}") from None
        for row in read.rows:
            fmt = match_format(row.row)
            try:
                out.append((row.location, convert(row.row, fmt) if fmt else {"text": json.dumps(row.row)}))
            except RowError:
                continue
    return out


def _judge_run(config: ProjectConfig, workspace: Workspace) -> Any:
    """The eval judge (`eval.judge`), asked about faithfulness to the passage instead of its criteria."""
    from tunesmith.evaluate import judge as judging

    settings = config.eval.judge.model_copy(
        update={
            "criteria": filters.FAITHFULNESS,
            "steps": [
                "Read the passage and the request.",
                "Check every fact in the response against the passage.",
                "Rate lower for each fact the passage does not state; rate 1 if the response contradicts "
                "the passage or does not answer the request.",
            ],
        }
    )
    judge = judging.make_judge(settings, lambda ref: load_local_model(config, workspace, ref))
    run = judging.start(settings, judge, workspace.root / "eval_cache" / "judge")
    run.reference_label = "Passage"
    return run


# --- from documents ---------------------------------------------------------------------------


def synthesize(
    config: ProjectConfig,
    workspace: Workspace,
    source: str,
    *,
    into: str | None = None,
    teacher: Teacher | None = None,
    encode: Callable[[list[str]], np.ndarray] | None = None,
) -> SynthResult:
    """Pairs grounded in the documents under `source`, filtered, as a new dataset version.

    With `into`, the new version is that version's rows (splits kept) plus the synthetic rows.

    Raises:
        DataError: when no document can be read, the `into` version is not chat rows, or no row survives.
        PromptError, TeacherError: when the prompt template or the teacher cannot be used.
    """
    settings = config.synth
    try:
        read = read_documents(source, config.base_dir)
    except SourceError as exc:
        raise DataError(str(exc)) from None
    parent = get_dataset(workspace, into) if into else None
    if parent is not None and parent.meta.get("kind") != "sft":
        raise DataError(
            f"--into {parent.id}: it holds {parent.meta.get('kind')} rows; synthetic pairs are chat rows, so "
            "they can only join a chat (sft) dataset version"
        )
    prompt = pair_prompt(settings.style, config.resolve_path(settings.prompt) if settings.prompt else None)
    chunks, notes = _chunks(config, read)
    titles = {d.name: d.title for d in read.documents}
    teacher = teacher or load_teacher(config, workspace)
    run_id = _run_id(
        "documents",
        {
            "documents": sorted(d.sha256 for d in read.documents),
            "teacher": teacher.identity,
            "prompt": prompt.version,
            "synth": settings.model_dump(mode="json", exclude={"against"}),
            "into": parent.id if parent else None,
        },
    )
    requests = [
        (
            chunk,
            Request(
                prompt.render(chunk.text, _title(titles[chunk.document], chunk), settings.pairs_per_chunk), s
            ),
        )
        for chunk in chunks
        for s in range(settings.samples_per_chunk)
    ]
    replies = teacher.generate([r for _, r in requests], f"Teacher writing pairs from {len(chunks)} chunks")
    rejected: list[Rejected] = []
    steps: list[Step] = []
    candidates = _pair_candidates(requests, replies, prompt, teacher, run_id, rejected, steps)
    against = ([parent.id] if parent else []) + settings.against
    kept = _screen(candidates, config, workspace, against, rejected, steps)
    encode = encode or _encoder()
    kept = filters.check_grounding(kept, encode, settings, rejected, steps)
    if settings.judge and kept:
        kept = filters.check_with_judge(
            kept, _judge_run(config, workspace), settings.min_judge_score, rejected, steps
        )
    result = SynthResult(
        run_id, workspace.root / "synth" / run_id, "documents", teacher.identity, prompt.version,
        len(requests), len(candidates), len(kept), steps, notes=notes,
    )  # fmt: skip
    lineage = _documents_lineage(settings, run_id, read, chunks, teacher, prompt, parent)
    return _conclude(config, workspace, result, kept, rejected, chunks, parent, "chat", lineage)


def _documents_lineage(
    settings: Any, run_id: str, read: Any, chunks: list[Chunk], teacher: Teacher, prompt: Any, parent: Any
) -> dict[str, Any]:
    """Where synthetic pairs came from: the documents (and chunks of each), the teacher and the prompt."""
    return {
        "source": "synth",
        "method": "documents",
        "run": run_id,
        "documents": [
            {"path": d.name, "sha256": d.sha256, "chunks": sum(c.document == d.name for c in chunks)}
            for d in read.documents
        ],
        "teacher": teacher.identity,
        "prompt_version": prompt.version,
        "style": settings.style,
        "into": parent.id if parent else None,
        "against": settings.against,
    }


def _chunks(config: ProjectConfig, read: Any) -> tuple[list[Chunk], list[str]]:
    """The documents cut into chunks of `synth.chunk_tokens` (a seeded sample of `synth.max_chunks`),
    and notes on what was read and sampled."""
    from tunesmith.models import load_tokenizer

    settings = config.synth
    tokenizer = load_tokenizer(config.model.id, config.model.source, config.model.revision)
    chunks = chunk_documents(
        read.documents,
        lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"]),
        settings.chunk_tokens,
        settings.chunk_overlap,
    )
    notes = list(read.notes)
    if settings.max_chunks is not None and settings.max_chunks < len(chunks):
        picked = sorted(random.Random(settings.teacher.seed).sample(range(len(chunks)), settings.max_chunks))
        notes.append(f"a seeded sample of {settings.max_chunks} of {len(chunks)} chunks (synth.max_chunks)")
        chunks = [chunks[i] for i in picked]
    return chunks, notes


def _title(document_title: str, chunk: Chunk) -> str:
    return (
        f"{document_title}: {chunk.heading}"
        if chunk.heading and chunk.heading != document_title
        else document_title
    )


def _pair_candidates(
    requests: list[tuple[Chunk, Request]],
    replies: list[str],
    prompt: PairPrompt,
    teacher: Teacher,
    run_id: str,
    rejected: list[Rejected],
    steps: list[Step],
) -> list[filters.Candidate]:
    step = Step("format", details={"replies": len(replies)})
    out = []
    for (chunk, request), reply in zip(requests, replies, strict=True):
        location = f"{chunk.id}/s{request.sample}"
        if reply.startswith("\x00"):
            rejected.append(Rejected(location, reply[1:], {"chunk": chunk.id}, step="format"))
            step.removed += 1
            continue
        pairs = parse_pairs(reply, prompt)
        if not pairs:
            reason = (
                f"no `{prompt.first[0].title()}:` / `{prompt.second[0].title()}:` pair in the teacher's reply"
            )
            rejected.append(Rejected(location, reason, {"chunk": chunk.id, "reply": reply}, step="format"))
            step.removed += 1
            continue
        for index, (question, answer) in enumerate(pairs):
            record = {
                "messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}],
                "origin": "synthetic",
                "group": f"synth:{chunk.id}",
                "synthetic": _tag(
                    "documents",
                    teacher,
                    prompt.version,
                    run_id,
                    document=chunk.document,
                    chunk_id=chunk.id,
                    chunk=chunk.text,
                ),
            }
            out.append(filters.Candidate(f"{location}/p{index}", record, chunk.text))
    step.details["pairs"] = len(out)
    steps.append(step)
    return out


def _screen(
    candidates: list[filters.Candidate],
    config: ProjectConfig,
    workspace: Workspace,
    against: list[str],
    rejected: list[Rejected],
    steps: list[Step],
    *,
    paraphrases: bool = False,
) -> list[filters.Candidate]:
    """The filters every synthetic row goes through: length, the PII scrub, dedup against `against`."""
    kept = filters.check_lengths(candidates, config.synth, rejected, steps, paraphrases=paraphrases)
    filters.scrub(kept, config.data.clean, steps)
    existing = existing_rows(workspace, config, against)
    return filters.dedup(kept, existing, config.synth.near_threshold, rejected, steps)


def _finish(candidate: filters.Candidate) -> dict[str, Any]:
    record = dict(candidate.record)
    record["synthetic"] = {**record["synthetic"], **candidate.scores}
    return record


# --- paraphrases of existing rows ------------------------------------------------------------


def augment(
    config: ProjectConfig,
    workspace: Workspace,
    dataset: DatasetVersion,
    *,
    balance: Balance = None,
    max_rows: int | None = None,
    teacher: Teacher | None = None,
    encode: Callable[[list[str]], np.ndarray] | None = None,
) -> SynthResult:
    """`synth.paraphrases` paraphrases of each of `dataset`'s train rows as a new version: its rows
    (splits kept) plus the new ones.

    Only train rows are paraphrased (a paraphrase of a test row in train would be a leak), and only
    real ones. For classification, `balance` tops every label up to the largest label's count
    ("largest") or to that many rows, paraphrasing the rows of that label; each paraphrase keeps its
    original's label.

    Raises:
        DataError: for a dataset that is not chat or classification rows, or balancing without labels.
    """
    settings = config.synth
    kind = dataset.meta.get("kind")
    if kind not in ("sft", "classification"):
        raise DataError(
            f"{dataset.id} holds {kind} rows; augmentation paraphrases chat (sft) and classification rows"
        )
    if balance is not None and kind != "classification":
        raise DataError(f"--balance evens out labels; {dataset.id} holds {kind} rows, which have none")
    train = [r for r in load_split(dataset, "train", with_meta=True) if not is_synthetic(r)]
    notes = []
    plan = _paraphrase_plan(train, settings.paraphrases, balance)
    if max_rows is not None and max_rows < len(plan.rows):
        chosen = sorted(random.Random(settings.teacher.seed).sample(range(len(plan.rows)), max_rows))
        notes.append(f"a seeded sample of {max_rows} of {len(plan.rows)} train rows (--max-rows)")
        plan.rows = [plan.rows[i] for i in chosen]
    teacher = teacher or load_teacher(config, workspace)
    run_id = _run_id(
        "augment",
        {
            "dataset": dataset.id,
            "teacher": teacher.identity,
            "prompt": PARAPHRASE_VERSION,
            "plan": [[r["_location"], n] for r, n in plan.rows],
            "synth": settings.model_dump(mode="json", exclude={"against"}),
        },
    )
    requests = [
        Request(paraphrase_prompt(_original(row), n, row.get("label") if kind == "classification" else None))
        for row, n in plan.rows
    ]
    replies = teacher.generate(requests, f"Teacher paraphrasing {len(requests)} rows")
    rejected: list[Rejected] = []
    steps: list[Step] = []
    candidates = _paraphrase_candidates(plan.rows, replies, teacher, run_id, rejected, steps)
    against = [dataset.id, *settings.against]
    kept = _screen(candidates, config, workspace, against, rejected, steps, paraphrases=True)
    encode = encode or _encoder()
    kept = filters.check_meaning(kept, encode, settings.min_similarity, rejected, steps)
    classes = None
    if plan.targets:
        kept, classes = _balance(kept, train, plan.targets, rejected, steps)
    result = SynthResult(
        run_id, workspace.root / "synth" / run_id, "paraphrase", teacher.identity, PARAPHRASE_VERSION,
        len(requests), len(candidates), len(kept), steps, notes=notes, classes=classes,
    )  # fmt: skip
    lineage = {
        "source": "synth",
        "method": "paraphrase",
        "run": run_id,
        "parent": dataset.id,
        "teacher": teacher.identity,
        "prompt_version": PARAPHRASE_VERSION,
        "balance": bool(plan.targets),
        "classes": classes,
    }
    fmt = "chat" if kind == "sft" else "text_label"
    return _conclude(config, workspace, result, kept, rejected, [], dataset, fmt, lineage)


@dataclass
class _Plan:
    rows: list[tuple[dict[str, Any], int]]  # (train row, paraphrases to ask for)
    targets: dict[str, int]  # label -> rows wanted (balancing only)


def _paraphrase_plan(train: list[dict[str, Any]], per_row: int, balance: Balance) -> _Plan:
    """Which rows to paraphrase, and how often: every row `per_row` times, or enough to even out labels.

    Balancing asks for one paraphrase more per row than the deficit strictly needs, since filters
    remove some; the surplus is dropped afterwards.
    """
    if balance is None:
        return _Plan([(row, per_row) for row in train], {})
    by_label: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in train:
        by_label[str(row["label"])].append(row)
    goal = max(len(rows) for rows in by_label.values()) if balance == "largest" else balance
    plan = _Plan([], {})
    for label, rows in sorted(by_label.items()):
        plan.targets[label] = goal
        deficit = goal - len(rows)
        if deficit <= 0:
            continue
        each = min(math.ceil(deficit / len(rows)) + 1, 8)
        plan.rows += [(row, each) for row in rows]
    return plan


def _original(row: dict[str, Any]) -> str:
    """The text a paraphrase rewrites: a classification row's text, or a chat row's last user turn."""
    if "text" in row:
        return str(row["text"])
    return next(m["content"] for m in reversed(row["messages"]) if m["role"] == "user")


def _with_text(row: dict[str, Any], text: str) -> dict[str, Any]:
    record = {k: v for k, v in row.items() if not k.startswith("_")}
    if "text" in record:
        return {**record, "text": text}
    messages = [dict(m) for m in record["messages"]]
    last_user = max(i for i, m in enumerate(messages) if m["role"] == "user")
    messages[last_user]["content"] = text
    return {**record, "messages": messages}


def _paraphrase_candidates(
    plan: list[tuple[dict[str, Any], int]],
    replies: list[str],
    teacher: Teacher,
    run_id: str,
    rejected: list[Rejected],
    steps: list[Step],
) -> list[filters.Candidate]:
    step = Step("format", details={"replies": len(replies)})
    out = []
    for (row, n), reply in zip(plan, replies, strict=True):
        location = str(row["_location"])
        texts = [] if reply.startswith("\x00") else parse_paraphrases(reply)[:n]
        if not texts:
            reason = reply[1:] if reply.startswith("\x00") else "no `Rewrite:` line in the teacher's reply"
            rejected.append(Rejected(location, reason, {"row": location, "reply": reply}, step="format"))
            step.removed += 1
            continue
        for index, text in enumerate(texts):
            record = _with_text(row, text)
            record["origin"] = "synthetic"
            record["synthetic"] = _tag("paraphrase", teacher, PARAPHRASE_VERSION, run_id, source_row=location)
            out.append(filters.Candidate(f"{location}/para{index}", record, _original(row)))
    step.details["paraphrases"] = len(out)
    steps.append(step)
    return out


def _balance(
    kept: list[filters.Candidate],
    train: list[dict[str, Any]],
    targets: dict[str, int],
    rejected: list[Rejected],
    steps: list[Step],
) -> tuple[list[filters.Candidate], dict[str, dict[str, int]]]:
    """Up to each label's deficit of paraphrases, spread over the originals (first paraphrases first)."""
    before = Counter(str(r["label"]) for r in train)
    step = Step("balance")
    by_label: dict[str, list[filters.Candidate]] = defaultdict(list)
    for c in kept:
        by_label[str(c.record["label"])].append(c)
    chosen: list[filters.Candidate] = []
    classes = {}
    for label, goal in targets.items():
        pool = sorted(by_label.get(label, []), key=lambda c: (c.location.rsplit("/para", 1)[1], c.location))
        deficit = max(goal - before[label], 0)
        take, surplus = pool[:deficit], pool[deficit:]
        chosen += take
        for c in surplus:
            filters._reject(rejected, step, c, f"surplus: label {label!r} already has its {goal} rows")
        classes[label] = {
            "before": before[label],
            "added": len(take),
            "after": before[label] + len(take),
            "target": goal,
        }
    step.details["classes"] = classes
    short = {label: c["target"] - c["after"] for label, c in classes.items() if c["after"] < c["target"]}
    if short:
        step.details["short"] = short  # ask for more paraphrases, or use a stronger teacher
    steps.append(step)
    return chosen, classes


# --- writing ---------------------------------------------------------------------------------


def _conclude(
    config: ProjectConfig,
    workspace: Workspace,
    result: SynthResult,
    kept: list[filters.Candidate],
    rejected: list[Rejected],
    chunks: list[Chunk],
    parent: DatasetVersion | None,
    fmt: str,
    lineage: dict[str, Any],
) -> SynthResult:
    """Write the run's folder, then store the rows as a dataset version (through the data stage)."""
    rows = [_finish(c) for c in kept]
    _write_run(result, chunks, rows, rejected, lineage)
    result.version = _store(config, workspace, result, rows, parent, fmt, lineage)
    return result


def _write_run(
    result: SynthResult,
    chunks: list[Chunk],
    rows: list[dict[str, Any]],
    rejected: list[Rejected],
    lineage: dict[str, Any],
) -> None:
    """The run's folder, all at once: chunks, kept rows, rejected rows with reasons, the report."""

    def jsonl(path: Path, items: list[Any]) -> None:
        with path.open("w", encoding="utf-8") as handle:
            for item in items:
                handle.write(json.dumps(item, ensure_ascii=False, default=str) + "\n")

    with atomic_dir(result.folder) as tmp:
        jsonl(tmp / "chunks.jsonl", [c.to_json() for c in chunks])
        jsonl(tmp / "synthetic.jsonl", rows)
        jsonl(tmp / "rejected.jsonl", [r.to_json() for r in rejected])
        report = {
            **lineage,
            "requests": result.requests,
            "candidates": result.candidates,
            "kept": result.kept,
            "steps": [vars(s) for s in result.steps],
            "notes": result.notes,
            "rejected_by_step": dict(Counter(r.step for r in rejected)),
        }
        (tmp / "report.json").write_text(json.dumps(report, indent=2, default=str), encoding="utf-8")


def _store(
    config: ProjectConfig,
    workspace: Workspace,
    result: SynthResult,
    rows: list[dict[str, Any]],
    parent: DatasetVersion | None,
    fmt: str,
    lineage: dict[str, Any],
) -> DatasetVersion:
    """The parent's rows (each in its split) and the synthetic rows, through the data stage.

    The data stage's near-dedup is off here: the synthetic rows were checked against the parent and
    each other on their prompts already, and a paraphrase shares its answer with its original, which a
    whole-row comparison would call a near duplicate.
    """
    from tunesmith.data import prepare_data

    if not rows:
        raise DataError(
            f"no synthetic row passed the filters ({result.candidates} written by the teacher); "
            f"see {result.folder / 'rejected.jsonl'} for each one's reason"
        )
    split_field = config.data.split.field
    combined: list[dict[str, Any]] = []
    if parent is not None:
        for split in ("train", "val", "test"):
            combined += [{**r, split_field: split} for r in load_split(parent, split)]
    combined += rows
    path = result.folder / "rows.jsonl"
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in combined), encoding="utf-8")
    tmp.replace(path)
    data = config.data
    if parent is not None and parent.meta.get("data_config"):
        from tunesmith.config import DataConfig

        data = DataConfig.model_validate(parent.meta["data_config"])
        data.split.synthetic = config.data.split.synthetic
    derived = config.model_copy(deep=True)
    derived.data = data.model_copy(
        update={
            "path": str(path),
            "format": fmt,
            "columns": {},
            "sample": None,
            "strict": False,
            "clean": data.clean.model_copy(update={"near_dedup": False}),
        }
    )
    derived = derived.with_base_dir(config.base_dir)
    lineage = {
        **lineage,
        "synthetic_rows": len(rows),
        "filters": [{"step": s.name, "removed": s.removed, "changed": s.changed} for s in result.steps],
    }
    version = prepare_data(derived, workspace, lineage=lineage)
    held_out = version.counts.get("val", 0) + version.counts.get("test", 0)
    if parent is None and not held_out:
        result.notes.append(
            "every row is synthetic and data.split.synthetic is `train`, so val and test are empty: "
            "evaluate on real rows (merge into a dataset of real rows with --into)"
        )
    return version
