"""`tunesmith data`: validate, prepare, inspect, synthesise and augment dataset versions."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape

from tunesmith.cli.common import (
    app,
    err,
    fail,
    load_project,
    new_table,
    out,
    print_table,
    project_workspace,
    reported,
)
from tunesmith.cli.options import ConfigArg, ConfigOpt, SetOpt

if TYPE_CHECKING:
    from tunesmith.data.prepare import Prepared
    from tunesmith.store import DatasetVersion
    from tunesmith.synth import SynthResult

data_app = typer.Typer(help="Prepare and inspect dataset versions.", no_args_is_help=True)
app.add_typer(data_app, name="data", rich_help_panel="Lifecycle")


MapOpt = Annotated[
    str | None, typer.Option("--map", help="Column mapping, canonical=source: text=content,label=sentiment.")
]
StrictOpt = Annotated[bool, typer.Option("--strict", help="Fail if any row is rejected.")]


def _data_overrides(set_: list[str] | None, mapping: str | None, strict: bool) -> list[str]:
    overrides = list(set_ or [])
    for pair in filter(None, (part.strip() for part in (mapping or "").split(","))):
        canonical, sep, source = pair.partition("=")
        if not sep or not canonical.strip() or not source.strip():
            raise fail(f"--map {pair!r}: expected canonical=source, e.g. text=content", 2)
        overrides.append(f"data.columns.{canonical.strip()}={source.strip()}")
    if strict:
        overrides.append("data.strict=true")
    return overrides


def _print_steps(prepared: Prepared) -> None:
    if prepared.detection is not None:
        out.print(f"Format: {prepared.detection.describe()} → {prepared.kind} records")
    for note in prepared.notes:
        out.print(f"[yellow]note:[/yellow] {note}", soft_wrap=True)
    table = new_table("step", "changed", "removed", "details")
    for step in prepared.steps:
        details = ", ".join(f"{k}={v}" for k, v in step.details.items() if k not in ("clusters", "twins"))
        table.add_row(step.name, str(step.changed), str(step.removed), details)
    out.print(table)
    if prepared.rejected:
        reasons = new_table("rejected because", "rows")
        for reason, count in prepared.reasons().most_common(12):
            reasons.add_row(reason, str(count))
        out.print(reasons)
        for rejected in prepared.rejected[:5]:
            out.print(
                f"  {rejected.location}: {rejected.reason}", soft_wrap=True, highlight=False, markup=False
            )


def _brief(value: Any) -> str:
    """A lineage value in a few words: documents by path, lists by their first items."""
    if isinstance(value, list):
        items = [v.get("path", v) if isinstance(v, dict) else v for v in value]
        return ", ".join(map(str, items[:4])) + (f" (+{len(items) - 4})" if len(items) > 4 else "")
    return str(value)


def _print_version(version: DatasetVersion) -> None:
    """A dataset version's steps and per-split statistics, as `data prepare` and `data show` print them."""
    report = version.meta.get("report", {})
    out.print(
        f"[bold]{version.id}[/bold] {version.name}: {version.meta.get('kind', '?')} rows from "
        f"{version.source}",
        soft_wrap=True,
    )
    columns = (report.get("detection") or {}).get("columns")
    if columns:
        from tunesmith.data.formats import describe_columns

        out.print(f"Format: {report['detection']['format']}, {describe_columns(columns)}", soft_wrap=True)
    lineage = version.meta.get("lineage")
    if lineage:
        shown = {
            k: v for k, v in lineage.items() if v not in (None, [], {}) and k not in ("filters", "classes")
        }
        out.print("Lineage: " + ", ".join(f"{k}={_brief(v)}" for k, v in shown.items()), soft_wrap=True)
    table = new_table("step", "changed", "removed")
    for step in report.get("steps", []):
        table.add_row(step["name"], str(step["changed"]), str(step["removed"]))
    out.print(table)
    splits = new_table("split", "rows", "p50", "p95", "max", "total tokens", "truncated", "labels")
    for split, entry in report.get("stats", {}).get("splits", {}).items():
        tokens = entry.get("tokens", {})
        label_counts = entry.get("labels", {})
        labels = (
            ", ".join(f"{k} {v}" for k, v in label_counts.items())
            if len(label_counts) <= 4
            else f"{len(label_counts)} labels, {min(label_counts.values())}-{max(label_counts.values())} each"
        )
        splits.add_row(
            split,
            str(entry["rows"]),
            *(str(tokens.get(k, "")) for k in ("p50", "p95", "max", "total", "truncated")),
            labels,
        )
    out.print(splits)
    out.print(f"Files: {version.path} (train/val/test.parquet, rejected.jsonl, report.html)")


@data_app.command("validate")
def data_validate(
    config: ConfigArg = None, set_: SetOpt = None, map_: MapOpt = None, strict: StrictOpt = False
) -> None:
    """Check data.path: every problem with file:line, field and reason; rejected rows written out."""
    from tunesmith.data import DataError, validate_data
    from tunesmith.models import ModelNotFoundError

    cfg = load_project(config, _data_overrides(set_, map_, strict))
    with reported(DataError, ModelNotFoundError):
        prepared, rejected_path = validate_data(cfg)
    _print_steps(prepared)
    out.print(f"{len(prepared.items)} rows usable, {len(prepared.rejected)} rejected → {rejected_path}")
    if cfg.train.objective != "multitask":  # the rows are fine; training them as configured is not
        from tunesmith.train.objectives import objective_for_rows
        from tunesmith.train.sft import TrainConfigError

        fmt = prepared.detection.format if prepared.detection is not None else cfg.data.format
        try:
            objective_for_rows(cfg, fmt, prepared.kind, str(cfg.data.path), announce=True)
        except TrainConfigError as exc:
            err.print(f"[yellow]warning:[/yellow] {escape(str(exc))}", soft_wrap=True, highlight=False)
    if cfg.data.strict and prepared.rejected:
        raise fail(f"{len(prepared.rejected)} row(s) rejected and --strict is set", 2)


@data_app.command("prepare")
def data_prepare(
    config: ConfigArg = None, set_: SetOpt = None, map_: MapOpt = None, strict: StrictOpt = False
) -> None:
    """Validate, clean, split and store data.path as an immutable, content-hashed dataset version."""
    from tunesmith.data import DataError, prepare_data
    from tunesmith.models import ModelNotFoundError

    cfg = load_project(config, _data_overrides(set_, map_, strict))
    with reported(DataError, ModelNotFoundError):
        version = prepare_data(cfg)
    _print_version(version)
    counts = version.counts
    out.print(
        f"Dataset version [bold]{version.id}[/bold]: {counts['train']} train, {counts['val']} val, "
        f"{counts['test']} test, {counts['rejected']} rejected → {version.path}"
    )
    out.print(f"Report: {Path(version.path) / 'report.html'}; details: `tunesmith data show {version.id}`")


@data_app.command("show")
def data_show(
    dataset: Annotated[str, typer.Argument(help="Dataset version id (or a unique prefix).")],
    config: ConfigOpt = None,
) -> None:
    """A dataset version's counts, format, cleaning steps, token statistics and report path."""
    from tunesmith.data import DataError, get_dataset

    with reported(DataError):
        version = get_dataset(project_workspace(config), dataset)
    _print_version(version)


@data_app.command("diff")
def data_diff(
    a: Annotated[str, typer.Argument(help="First dataset version.")],
    b: Annotated[str, typer.Argument(help="Second dataset version.")],
    config: ConfigOpt = None,
) -> None:
    """Rows added and removed per split, label shifts, and the options that differ."""
    from tunesmith.data import DataError, get_dataset
    from tunesmith.data.versions import diff_versions

    workspace = project_workspace(config)
    with reported(DataError):
        diff = diff_versions(get_dataset(workspace, a), get_dataset(workspace, b))
    table = new_table("split", f"rows {diff['a']}", f"rows {diff['b']}", "added", "removed", "kept")
    for split, entry in diff["splits"].items():
        table.add_row(split, *(str(entry[k]) for k in ("rows_a", "rows_b", "added", "removed", "kept")))
    out.print(table)
    for split, entry in diff["splits"].items():
        for label, (before, after) in entry.get("labels", {}).items():
            out.print(f"  {split} label {label}: {before} → {after}")
    for option, (before, after) in diff["options"].items():
        out.print(f"  {option}: {before!r} → {after!r}", markup=False, highlight=False)


@data_app.command("estimate")
def data_estimate(
    config: ConfigArg = None,
    set_: SetOpt = None,
    steps: Annotated[int, typer.Option(help="Optimizer steps to measure (the first warms up).")] = 4,
) -> None:
    """Time per epoch on this machine for the configured method, from a short measured calibration."""
    from tunesmith.data import DataError
    from tunesmith.models import ModelNotFoundError
    from tunesmith.train import TrainConfigError
    from tunesmith.train.run import dry_run

    cfg = load_project(config, set_)
    with reported(DataError, ModelNotFoundError, TrainConfigError):
        cfg, dataset, _, estimate = dry_run(cfg, steps=max(2, steps))
    if estimate is None:
        raise fail(
            f"{cfg.train.method} {cfg.train.objective} does not fit here: see `tunesmith train --dry-run`"
        )
    out.print(f"{cfg.train.method} {cfg.train.objective} of {cfg.model.id} on dataset {dataset.id}")
    out.print(estimate.describe())


@data_app.command("list")
def data_list(config: ConfigArg = None) -> None:
    """Stored dataset versions, newest first."""
    from tunesmith.data import list_datasets

    table = new_table("id", "name", "format", "train/val/test", "rejected", "created")
    for v in list_datasets(project_workspace(config)):
        table.add_row(
            v.id,
            v.name,
            v.format,
            "/".join(str(v.counts.get(k, 0)) for k in ("train", "val", "test")),
            str(v.counts.get("rejected", 0)),
            f"{v.created_at:%Y-%m-%d %H:%M}",
        )
    print_table(table, "no dataset versions yet: `tunesmith data prepare` stores one")


TeacherEndpointOpt = Annotated[
    str | None, typer.Option("--teacher-endpoint", help="OpenAI-compatible base URL (…/v1) of the teacher.")
]
TeacherModelOpt = Annotated[
    str | None,
    typer.Option(
        "--teacher-model", help="The endpoint's model name; locally `base` or a registered version."
    ),
]


def _teacher_overrides(set_: list[str] | None, endpoint: str | None, model: str | None) -> list[str]:
    overrides = list(set_ or [])
    if endpoint:
        overrides.append(f"synth.teacher.endpoint={endpoint}")
    if model:
        overrides.append(f"synth.teacher.model={model}")
    return overrides


def _print_synth(result: SynthResult) -> None:
    for note in result.notes:
        out.print(f"[yellow]note:[/yellow] {note}", soft_wrap=True)
    out.print(
        f"Teacher {result.teacher}, prompt {result.prompt_version}: {result.requests} replies → "
        f"{result.candidates} candidate rows → {result.kept} kept",
        soft_wrap=True,
        highlight=False,
    )
    table = new_table("filter", "removed", "changed", "details")
    for step in result.steps:
        details = ", ".join(f"{k}={v}" for k, v in step.details.items() if k != "classes")
        table.add_row(step.name, str(step.removed), str(step.changed), details)
    out.print(table)
    if result.classes:
        classes = new_table("label", "before", "added", "after", "target")
        for label, entry in result.classes.items():
            classes.add_row(label, *(str(entry[k]) for k in ("before", "added", "after", "target")))
        out.print(classes)
    out.print(f"Run folder: {result.folder} (synthetic.jsonl, rejected.jsonl with reasons, report.json)")
    if result.version is not None:
        counts = result.version.counts
        out.print(
            f"Dataset version [bold]{result.version.id}[/bold]: {counts['train']} train, "
            f"{counts['val']} val, {counts['test']} test, {counts['rejected']} rejected by the data stage "
            f"→ {result.version.path}"
        )
        out.print(f"Train on it: tunesmith train --set data.path={result.version.id}", highlight=False)


@data_app.command("synth")
def data_synth(
    source: Annotated[
        str, typer.Option("--from", help="Documents: a file, folder or glob of .txt/.md/.html/.pdf.")
    ],
    config: ConfigArg = None,
    set_: SetOpt = None,
    into: Annotated[
        str | None, typer.Option(help="Add the synthetic rows to this dataset version (its splits kept).")
    ] = None,
    teacher_endpoint: TeacherEndpointOpt = None,
    teacher_model: TeacherModelOpt = None,
    pairs: Annotated[
        int | None, typer.Option(help="Pairs asked for per chunk (synth.pairs_per_chunk).")
    ] = None,
    max_chunks: Annotated[int | None, typer.Option(help="Use a seeded sample of this many chunks.")] = None,
    judge: Annotated[
        bool, typer.Option(help="Also have eval.judge check each answer against its passage.")
    ] = False,
) -> None:
    """Question/answer pairs grounded in domain documents, written by a teacher, filtered, versioned."""
    from tunesmith.data import DataError
    from tunesmith.models import ModelNotFoundError
    from tunesmith.synth import TeacherError, synthesize
    from tunesmith.synth.prompts import PromptError
    from tunesmith.workspace import open_workspace

    overrides = _teacher_overrides(set_, teacher_endpoint, teacher_model)
    overrides += [f"synth.pairs_per_chunk={pairs}"] if pairs else []
    overrides += [f"synth.max_chunks={max_chunks}"] if max_chunks else []
    overrides += ["synth.judge=true"] if judge else []
    cfg = load_project(config, overrides)
    with reported(DataError, ModelNotFoundError, TeacherError, PromptError):
        result = synthesize(cfg, open_workspace(cfg), source, into=into)
    _print_synth(result)


@data_app.command("augment")
def data_augment(
    dataset: Annotated[
        str | None, typer.Argument(help="Dataset version to augment (default: prepare data.path).")
    ] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    paraphrases: Annotated[
        int | None, typer.Option(help="Paraphrases per train row (synth.paraphrases).")
    ] = None,
    balance: Annotated[
        bool, typer.Option(help="Classification: top every label up to the largest label's count.")
    ] = False,
    target: Annotated[int | None, typer.Option(help="With --balance: rows wanted per label.")] = None,
    max_rows: Annotated[
        int | None, typer.Option(help="Paraphrase a seeded sample of this many rows.")
    ] = None,
    teacher_endpoint: TeacherEndpointOpt = None,
    teacher_model: TeacherModelOpt = None,
) -> None:
    """Paraphrases of a dataset version's train rows (label-preserving), optionally evening out labels."""
    from tunesmith.data import DataError, get_dataset, prepare_data
    from tunesmith.models import ModelNotFoundError
    from tunesmith.synth import Balance, TeacherError, augment
    from tunesmith.workspace import open_workspace

    overrides = _teacher_overrides(set_, teacher_endpoint, teacher_model)
    overrides += [f"synth.paraphrases={paraphrases}"] if paraphrases is not None else []
    cfg = load_project(config, overrides)
    workspace = open_workspace(cfg)
    with reported(DataError, ModelNotFoundError, TeacherError):
        parent = get_dataset(workspace, dataset) if dataset else prepare_data(cfg, workspace)
        even: Balance = target if target is not None else "largest" if balance else None
        result = augment(cfg, workspace, parent, balance=even, max_rows=max_rows)
    out.print(f"Augmenting {parent.id} ({parent.counts.get('train', 0)} train rows)")
    _print_synth(result)
