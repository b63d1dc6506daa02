"""The `tunesmith` command: parse arguments, call one stage function, print the result."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from tunesmith.config import CONFIG_FILENAME, ConfigError, ProjectConfig, load_config

if TYPE_CHECKING:
    from tunesmith.data.prepare import Prepared
    from tunesmith.store import DatasetVersion
    from tunesmith.synth import SynthResult

app = typer.Typer(
    help="tunesmith: fine-tune an open LLM on your data, prove it got better, ship it, watch it.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
)
models_app = typer.Typer(
    help="The model catalogue: list models, show where one loads from.", no_args_is_help=True
)
data_app = typer.Typer(help="Prepare and inspect dataset versions.", no_args_is_help=True)
registry_app = typer.Typer(help="Registered model versions and their lineage.", no_args_is_help=True)
app.add_typer(models_app, name="models", rich_help_panel="Project")
app.add_typer(data_app, name="data", rich_help_panel="Lifecycle")
review_app = typer.Typer(help="Blind human A/B review of an eval report's answers.", no_args_is_help=True)
app.add_typer(registry_app, name="registry", rich_help_panel="Lifecycle")
app.add_typer(review_app, name="review", rich_help_panel="Lifecycle")

out = Console()
err = Console(stderr=True)

ConfigArg = Annotated[Path | None, typer.Argument(help=f"Project config (default: ./{CONFIG_FILENAME}).")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", help="Override a field: section.field=value.")]


def _config(path: Path | None, overrides: list[str] | None) -> ProjectConfig:
    try:
        return load_config(path, overrides)
    except ConfigError as exc:
        err.print("[red]error:[/red]", str(exc), soft_wrap=True, highlight=False)
        raise typer.Exit(2) from None


def _table(*columns: str) -> Table:
    """A table whose ids and names never wrap, so they can be copied from the terminal."""
    table = Table(box=box.SIMPLE_HEAD, padding=(0, 1))
    for column in columns:
        keep_whole = column in ("id", "name")
        table.add_column(
            column,
            no_wrap=keep_whole,
            overflow="ellipsis" if keep_whole else "fold",
            min_width=10 if column in ("aliases", "created") else None,
        )
    return table


def _fail(message: str, code: int = 1) -> typer.Exit:
    err.print("[red]error:[/red]", escape(message), soft_wrap=True, highlight=False)
    return typer.Exit(code)


@app.command(rich_help_panel="Project")
def init(
    directory: Annotated[Path, typer.Argument(help="Project folder.")] = Path(),
    force: Annotated[bool, typer.Option(help="Overwrite an existing tunesmith.yaml.")] = False,
) -> None:
    """Create a project: a commented tunesmith.yaml and the .tunesmith/ workspace with its store."""
    from tunesmith.workspace import init_project

    try:
        path = init_project(directory, force=force)
    except FileExistsError as exc:
        raise _fail(str(exc)) from None
    out.print(
        f"Wrote {path} and the workspace {directory / '.tunesmith'}. Next: set data.path, then "
        "`tunesmith validate` and `tunesmith train`."
    )


@app.command(rich_help_panel="Project")
def validate(config: ConfigArg = None, set_: SetOpt = None) -> None:
    """Check a project config; print every problem with its field path and line, exit 2 if any."""
    cfg = _config(config, set_)
    out.print(
        f"[green]ok[/green] {config or CONFIG_FILENAME}: project {cfg.project!r}, model {cfg.model.id}, "
        f"{cfg.train.method} {cfg.train.objective}"
    )


@models_app.command("list")
def models_list() -> None:
    """The catalogue: bundled models that work offline; any hub id or local folder works too."""
    from tunesmith.models import list_models

    table = _table("id", "kind", "params", "context", "licence", "cached")
    for info in list_models():
        table.add_row(
            info.id,
            info.kind,
            f"{info.parameters / 1e6:.0f}M" if info.parameters else "?",
            str(info.context_window or "?"),
            info.licence or "?",
            "yes" if info.cached else "no",
        )
    out.print(table)
    out.print("Any Hugging Face hub id (owner/name) or local model folder also works as model.id;")
    out.print("`tunesmith models show ID` tells where a model loads from.")


@models_app.command("show")
def models_show(
    model_id: Annotated[str, typer.Argument(help="Catalogue id, hub id or local folder.")],
    source: Annotated[str, typer.Option(help="auto | bundled | hub")] = "auto",
) -> None:
    """Parameters, context window, licence, where it loads from, and whether it is cached."""
    from tunesmith.models import ModelNotFoundError, model_info

    try:
        info = model_info(model_id, source=source)
    except ModelNotFoundError as exc:
        raise _fail(str(exc)) from None
    for label, value in (
        ("id", info.id),
        ("kind", info.kind),
        ("hub id", info.hub_id or "-"),
        ("parameters", f"{info.parameters:,}" if info.parameters else "unknown"),
        ("context window", f"{info.context_window:,} tokens" if info.context_window else "unknown"),
        ("licence", info.licence or "unknown"),
        ("description", info.description),
        ("loads from", info.loads_from),
        ("cached", "yes" if info.cached else "no"),
    ):
        out.print(f"[bold]{label:>15}[/bold]  {value}")


MapOpt = Annotated[
    str | None, typer.Option("--map", help="Column mapping, canonical=source: text=content,label=sentiment.")
]
StrictOpt = Annotated[bool, typer.Option("--strict", help="Fail if any row is rejected.")]


def _data_overrides(set_: list[str] | None, mapping: str | None, strict: bool) -> list[str]:
    overrides = list(set_ or [])
    for pair in filter(None, (part.strip() for part in (mapping or "").split(","))):
        canonical, sep, source = pair.partition("=")
        if not sep or not canonical.strip() or not source.strip():
            raise _fail(f"--map {pair!r}: expected canonical=source, e.g. text=content", 2)
        overrides.append(f"data.columns.{canonical.strip()}={source.strip()}")
    if strict:
        overrides.append("data.strict=true")
    return overrides


def _print_steps(prepared: Prepared) -> None:
    if prepared.detection is not None:
        out.print(f"Format: {prepared.detection.describe()} → {prepared.kind} records")
    for note in prepared.notes:
        out.print(f"[yellow]note:[/yellow] {note}", soft_wrap=True)
    table = _table("step", "changed", "removed", "details")
    for step in prepared.steps:
        details = ", ".join(f"{k}={v}" for k, v in step.details.items() if k not in ("clusters", "twins"))
        table.add_row(step.name, str(step.changed), str(step.removed), details)
    out.print(table)
    if prepared.rejected:
        reasons = _table("rejected because", "rows")
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
    lineage = version.meta.get("lineage")
    if lineage:
        shown = {
            k: v for k, v in lineage.items() if v not in (None, [], {}) and k not in ("filters", "classes")
        }
        out.print("Lineage: " + ", ".join(f"{k}={_brief(v)}" for k, v in shown.items()), soft_wrap=True)
    table = _table("step", "changed", "removed")
    for step in report.get("steps", []):
        table.add_row(step["name"], str(step["changed"]), str(step["removed"]))
    out.print(table)
    splits = _table("split", "rows", "p50", "p95", "max", "total tokens", "truncated", "labels")
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

    cfg = _config(config, _data_overrides(set_, map_, strict))
    try:
        prepared, rejected_path = validate_data(cfg)
    except (DataError, ModelNotFoundError) as exc:
        raise _fail(str(exc)) from None
    _print_steps(prepared)
    out.print(f"{len(prepared.items)} rows usable, {len(prepared.rejected)} rejected → {rejected_path}")
    if cfg.data.strict and prepared.rejected:
        raise _fail(f"{len(prepared.rejected)} row(s) rejected and --strict is set")


@data_app.command("prepare")
def data_prepare(
    config: ConfigArg = None, set_: SetOpt = None, map_: MapOpt = None, strict: StrictOpt = False
) -> None:
    """Validate, clean, split and store data.path as an immutable, content-hashed dataset version."""
    from tunesmith.data import DataError, prepare_data
    from tunesmith.models import ModelNotFoundError

    cfg = _config(config, _data_overrides(set_, map_, strict))
    try:
        version = prepare_data(cfg)
    except (DataError, ModelNotFoundError) as exc:
        raise _fail(str(exc)) from None
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
    config: Annotated[Path | None, typer.Option(help="Project config.")] = None,
) -> None:
    """A dataset version's counts, format, cleaning steps, token statistics and report path."""
    from tunesmith.data import DataError, get_dataset
    from tunesmith.workspace import open_workspace

    try:
        version = get_dataset(open_workspace(_config(config, None)), dataset)
    except DataError as exc:
        raise _fail(str(exc)) from None
    _print_version(version)


@data_app.command("diff")
def data_diff(
    a: Annotated[str, typer.Argument(help="First dataset version.")],
    b: Annotated[str, typer.Argument(help="Second dataset version.")],
    config: Annotated[Path | None, typer.Option(help="Project config.")] = None,
) -> None:
    """Rows added and removed per split, label shifts, and the options that differ."""
    from tunesmith.data import DataError, get_dataset
    from tunesmith.data.versions import diff_versions
    from tunesmith.workspace import open_workspace

    workspace = open_workspace(_config(config, None))
    try:
        diff = diff_versions(get_dataset(workspace, a), get_dataset(workspace, b))
    except DataError as exc:
        raise _fail(str(exc)) from None
    table = _table("split", f"rows {diff['a']}", f"rows {diff['b']}", "added", "removed", "kept")
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

    cfg = _config(config, set_)
    try:
        dataset, _, estimate = dry_run(cfg, steps=max(2, steps))
    except (DataError, ModelNotFoundError, TrainConfigError) as exc:
        raise _fail(str(exc)) from None
    if estimate is None:
        raise _fail(
            f"{cfg.train.method} {cfg.train.objective} does not fit here: see `tunesmith train --dry-run`"
        )
    out.print(f"{cfg.train.method} {cfg.train.objective} of {cfg.model.id} on dataset {dataset.id}")
    out.print(estimate.describe())


@data_app.command("list")
def data_list(config: ConfigArg = None) -> None:
    """Stored dataset versions, newest first."""
    from tunesmith.data import list_datasets
    from tunesmith.workspace import open_workspace

    table = _table("id", "name", "format", "train/val/test", "rejected", "created")
    for v in list_datasets(open_workspace(_config(config, None))):
        table.add_row(
            v.id,
            v.name,
            v.format,
            "/".join(str(v.counts.get(k, 0)) for k in ("train", "val", "test")),
            str(v.counts.get("rejected", 0)),
            f"{v.created_at:%Y-%m-%d %H:%M}",
        )
    out.print(table)


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
    table = _table("filter", "removed", "changed", "details")
    for step in result.steps:
        details = ", ".join(f"{k}={v}" for k, v in step.details.items() if k != "classes")
        table.add_row(step.name, str(step.removed), str(step.changed), details)
    out.print(table)
    if result.classes:
        classes = _table("label", "before", "added", "after", "target")
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
    cfg = _config(config, overrides)
    try:
        result = synthesize(cfg, open_workspace(cfg), source, into=into)
    except (DataError, ModelNotFoundError, TeacherError, PromptError) as exc:
        raise _fail(str(exc)) from None
    _print_synth(result)


@data_app.command("augment")
def data_augment(
    dataset: Annotated[
        str | None, typer.Argument(help="Dataset version to augment (default: prepare data.path).")
    ] = None,
    config: Annotated[Path | None, typer.Option(help="Project config.")] = None,
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
    from tunesmith.synth import TeacherError, augment
    from tunesmith.workspace import open_workspace

    cfg = _config(config, _teacher_overrides(set_, teacher_endpoint, teacher_model))
    workspace = open_workspace(cfg)
    try:
        parent = get_dataset(workspace, dataset) if dataset else prepare_data(cfg, workspace)
        result = augment(
            cfg,
            workspace,
            parent,
            paraphrases=paraphrases,
            balance=balance or target is not None,
            target=target,
            max_rows=max_rows,
        )
    except (DataError, ModelNotFoundError, TeacherError) as exc:
        raise _fail(str(exc)) from None
    out.print(f"Augmenting {parent.id} ({parent.counts.get('train', 0)} train rows)")
    _print_synth(result)


@app.command("train", rich_help_panel="Lifecycle")
def train_cmd(
    config: ConfigArg = None,
    set_: SetOpt = None,
    resume: Annotated[
        str | None, typer.Option(help="Continue this stopped run from its last checkpoint.")
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Check data, memory fit and time per epoch; train nothing.")
    ] = False,
    num_processes: Annotated[
        int, typer.Option("--num-processes", min=1, help="Processes (GPUs) to train with; >1 runs DDP.")
    ] = 1,
    launcher: Annotated[
        str, typer.Option(help="accelerate (multi-GPU, DeepSpeed, FSDP) or torchrun.")
    ] = "accelerate",
    accelerate_config: Annotated[
        Path | None, typer.Option(help="An Accelerate config file (DeepSpeed ZeRO, FSDP), passed through.")
    ] = None,
) -> None:
    """Fine-tune the base model on data.path and register the result as a new version."""
    from tunesmith.data import DataError
    from tunesmith.models import ModelNotFoundError
    from tunesmith.registry import RegistryError
    from tunesmith.train import DiskFullError, TrainConfigError
    from tunesmith.train.fit import DoesNotFitError
    from tunesmith.train.methods import MethodError
    from tunesmith.train.objectives import get_objective
    from tunesmith.train.run import resume_run, train

    cfg = _config(config, set_)
    errors = (
        DataError,
        ModelNotFoundError,
        TrainConfigError,
        MethodError,
        RegistryError,
        DoesNotFitError,
        DiskFullError,
    )
    if dry_run:
        _dry_run(cfg, errors)
        return
    if num_processes > 1:
        from tunesmith.train.run import TrainLaunchError, launch_distributed

        try:
            version = launch_distributed(
                cfg,
                config or Path(CONFIG_FILENAME),
                list(set_ or []),
                num_processes,
                launcher,
                accelerate_config,
            )
        except (*errors, TrainLaunchError) as exc:
            raise _fail(str(exc)) from None
        out.print(
            f"Registered [bold]{version.name}[/bold] from run {version.run_id} on {num_processes} "
            f"processes. Next: `tunesmith eval {version.name}`"
        )
        return
    try:
        outcome = resume_run(cfg, resume) if resume else train(cfg)
    except errors as exc:
        raise _fail(str(exc)) from None
    m = outcome.version.metrics
    out.print(
        f"Registered [bold]{outcome.version.name}[/bold] from run {outcome.run_id}: train loss "
        f"{m['train_loss']:.3f}"
        + (f", validation loss {m['eval_loss']:.3f}" if "eval_loss" in m else "")
        + f", {m['tokens_per_second']:.0f} tokens/s. Artifacts: {outcome.run_dir}"
    )
    out.print(
        f"Next: `tunesmith eval {outcome.version.name}` ("
        + ("majority class" if get_objective(cfg.train.objective).labelled else "base")
        + " vs this version on the held-out split), "
        f"`tunesmith registry show {outcome.version.name}`"
    )


def _dry_run(cfg: ProjectConfig, errors: tuple[type[Exception], ...]) -> None:
    from tunesmith.train.run import dry_run

    try:
        dataset, estimate, timing = dry_run(cfg)
    except errors as exc:
        raise _fail(str(exc)) from None
    out.print(f"Dry run: {cfg.train.method} {cfg.train.objective} of {cfg.model.id} on dataset {dataset.id}")
    table = _table("memory", "estimate")
    for label, value in estimate.rows():
        table.add_row(label, value)
    out.print(table)
    if not estimate.fits:
        raise _fail(estimate.refusal())
    if timing is not None:
        out.print(timing.describe())
    out.print("It fits. Run the same command without --dry-run to train.")


@app.command("eval", rich_help_panel="Lifecycle")
def eval_cmd(
    version: Annotated[
        str | None, typer.Argument(help="Version name or id (e.g. my-project-v2), or an alias (candidate).")
    ] = None,
    compare: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated systems to compare with: base, aliases (production, staging...), versions. "
            "Default: eval.compare (base, production)."
        ),
    ] = None,
    few_shot: Annotated[
        int | None,
        typer.Option("--few-shot", help="Also score the base model prompted with K train examples."),
    ] = None,
    probe: Annotated[
        bool | None,
        typer.Option("--probe/--no-probe", help="Run the forgetting probe (base vs the version)."),
    ] = None,
    judge: Annotated[
        bool | None, typer.Option("--judge/--no-judge", help="Score answers with the LLM judge (eval.judge).")
    ] = None,
    reward_model: Annotated[
        str | None,
        typer.Option(
            "--reward-model",
            help="Score every system's answers with this reward-model version (eval.reward_model), "
            "with the version's win rate against each.",
        ),
    ] = None,
    gate: Annotated[
        bool, typer.Option("--gate", help="Check eval.gates; exit 3 when one fails (for CI).")
    ] = False,
    cv: Annotated[
        int | None, typer.Option("--cv", help="Cross-validate: train and score on K folds (no VERSION).")
    ] = None,
    config: Annotated[Path | None, typer.Option(help="Project config.")] = None,
    set_: SetOpt = None,
    list_metrics: Annotated[
        bool, typer.Option("--list-metrics", help="List the registered metrics by task kind.")
    ] = False,
) -> None:
    """Score a version beside the base model, production and a few-shot prompt, with intervals and tests."""
    if list_metrics:
        _print_metrics()
        return
    from tunesmith.data import DataError
    from tunesmith.evaluate.runner import run_eval
    from tunesmith.registry import RegistryError

    cfg = _config(config, set_)
    if cv is not None:
        _cross_validate(cfg, cv)
        return
    refs = [r.strip() for r in compare.split(",") if r.strip()] if compare is not None else None
    if version is None and refs and [r for r in refs if r != "base"]:
        # `--compare base,candidate,production`: the version judged is `candidate` (else the last)
        version = "candidate" if "candidate" in refs else [r for r in refs if r != "base"][-1]
        refs = [r for r in refs if r != version]
    if version is None:
        raise _fail(
            "name a version to evaluate (see `tunesmith registry list`), "
            "or --compare base,candidate,production, or --cv K",
            2,
        )
    if gate and not cfg.eval.gates:
        raise _fail("--gate: no gates are configured; add them under eval.gates in tunesmith.yaml", 2)
    try:
        outcome = run_eval(
            cfg, version, compare=refs, few_shot=few_shot, probe=probe, judge=judge, reward_model=reward_model
        )
    except (DataError, RegistryError, KeyError) as exc:
        raise _fail(str(exc).strip("\"'")) from None
    _print_report(outcome.report)
    out.print(f"\nReport {outcome.report_id}: {outcome.directory / 'report.html'}")
    if gate and not outcome.gate_passed:
        raise typer.Exit(3)


def _cross_validate(cfg: Any, folds: int) -> None:
    from tunesmith.data import DataError
    from tunesmith.evaluate.cv import cross_validate

    try:
        report = cross_validate(cfg, folds)
    except DataError as exc:
        raise _fail(str(exc)) from None
    table = _table("metric", *[f"fold {f['fold']}" for f in report["per_fold"]], "mean ± std")
    table.title = f"{folds}-fold cross-validation of {report['dataset_version']}"
    for name, stats in report["summary"].items():
        table.add_row(
            name, *[f"{v:.4g}" for v in stats["values"]], f"{stats['mean']:.4g} ± {stats['std']:.2g}"
        )
    out.print(table)
    out.print(f"Report {report['id']}: {report['path']}")


def _print_metrics() -> None:
    from tunesmith.evaluate import get_metric, metric_names

    table = _table("metric", "task", "better", "what it measures")
    for name in metric_names():
        metric = get_metric(name)
        table.add_row(name, metric.kind, "higher" if metric.higher_is_better else "lower", metric.description)
    out.print(table)


def _print_report(report: dict[str, Any]) -> None:
    systems = report["systems"]
    table = _table("metric", *[s["label"] for s in systems])
    table.title = (
        f"{report['task']}: {report['items']} items of {report['dataset_version']} ({report['split']})"
    )
    for metric in report["metrics"]:
        cells = []
        for s in systems:
            score = s["scores"].get(metric["name"])
            cells.append(
                f"{score['value']:.3g} [dim][{score['low']:.3g}, {score['high']:.3g}][/dim]" if score else "-"
            )
        table.add_row(metric["name"] + ("" if metric["higher_is_better"] else " (lower is better)"), *cells)
    out.print(table)
    for note in report["notes"]:
        out.print(f"[dim]note: {note}[/dim]")
    for line in report["verdicts"]:
        colour = "green" if " better " in line else "red" if " worse " in line else "white"
        out.print(f"[{colour}]{line}[/{colour}]", highlight=False)
    probe = report.get("probe")
    if probe and probe["change"]:
        for name, change in probe["change"].items():
            delta = change["delta"]
            out.print(
                f"forgetting probe {name}: {delta['value']:+.4g} [{delta['low']:+.3g}, {delta['high']:+.3g}] "
                f"vs base (p={change['p_value']:.3f})",
                highlight=False,
            )
    judged = report.get("judge")
    if judged:
        cal = judged["calibration"]
        if cal:
            state = "calibrated" if cal["calibrated"] else "NOT calibrated: its scores cannot gate"
            out.print(
                f"judge calibration: Spearman {cal['spearman']:.2f}, Kendall {cal['kendall']:.2f} "
                f"on {cal['scored']} human-labelled rows ({state})",
                highlight=False,
            )
        for pair in judged["pairwise"]:
            rate = pair["win_rate"]
            out.print(
                f"judge pairwise {pair['candidate']} vs {pair['other']}: {pair['win']} wins, "
                f"{pair['tie']} ties, {pair['loss']} losses; "
                f"win rate {rate['value']:.2f} [{rate['low']:.2f}, {rate['high']:.2f}]",
                highlight=False,
            )
    rewarded = report.get("reward_model") or {}
    for pair in rewarded.get("pairwise", []):
        rate = pair["win_rate"]
        out.print(
            f"reward model {rewarded['model']}: {pair['candidate']} vs {pair['other']}: {pair['win']} wins, "
            f"{pair['tie']} ties, {pair['loss']} losses; "
            f"win rate {rate['value']:.2f} [{rate['low']:.2f}, {rate['high']:.2f}]",
            highlight=False,
        )
    for row in report["gates"]:
        mark = "[green]pass[/green]" if row["passed"] else "[red]FAIL[/red]"
        out.print(f"gate {row['kind']} {mark}: {row['detail']}", highlight=False)


def _report_dir(config: Path | None, report_id: str) -> Path:
    from tunesmith.store import EvalReport, session
    from tunesmith.workspace import open_workspace

    with session(open_workspace(_config(config, None)).engine) as s:
        row = s.get(EvalReport, report_id)
    if row is None:
        raise _fail(
            f"no eval report {report_id!r}; `tunesmith eval VERSION` prints the id of the one it writes"
        )
    return Path(row.path)


@review_app.command("export")
def review_export(
    report: Annotated[str, typer.Argument(help="Eval report id (er-...).")],
    against: Annotated[
        str | None, typer.Option(help="The system to pair the version with (default: the report's first).")
    ] = None,
    limit: Annotated[int | None, typer.Option(help="At most this many pairs (a random sample).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the pair order and the sides.")] = 0,
    config: Annotated[Path | None, typer.Option(help="Project config.")] = None,
) -> None:
    """Write a blind A/B sheet (HTML page and CSV) with random sides and no model names."""
    from tunesmith.data import DataError
    from tunesmith.evaluate.review import export_sheet

    try:
        target = export_sheet(_report_dir(config, report), against=against, limit=limit, seed=seed)
    except DataError as exc:
        raise _fail(str(exc)) from None
    out.print(f"Sheet for raters: {target / 'sheet.html'} (or {target / 'sheet.csv'})")
    out.print(f"Keep {target / 'key.json'} to yourself: it says which side is which.")
    out.print(f"Then: tunesmith review import {report} FILLED.csv [MORE.csv ...]")


@review_app.command("import")
def review_import(
    report: Annotated[str, typer.Argument(help="Eval report id (er-...).")],
    files: Annotated[list[Path], typer.Argument(help="Filled sheets, one per rater or with a rater column.")],
    against: Annotated[
        str | None, typer.Option(help="Which exported review (default: the only one).")
    ] = None,
    config: Annotated[Path | None, typer.Option(help="Project config.")] = None,
) -> None:
    """Read filled sheets: win/tie/loss rates with intervals and inter-rater agreement."""
    from tunesmith.data import DataError
    from tunesmith.evaluate.review import import_sheets

    directory = _report_dir(config, report)
    reviews = sorted(directory.glob("review-*")) if against is None else [directory / f"review-{against}"]
    if len(reviews) != 1 or not (reviews[0] / "key.json").exists():
        found = (
            ", ".join(p.name.removeprefix("review-") for p in sorted(directory.glob("review-*"))) or "none"
        )
        raise _fail(f"name the review with --against (exported: {found})")
    try:
        result = import_sheets(reviews[0], files)
    except DataError as exc:
        raise _fail(str(exc)) from None
    rates = result["rates"]
    out.print(
        f"{result['candidate']} vs {result['other']}: {result['ratings']} ratings of {result['pairs']} pairs "
        f"by {len(result['raters'])} rater(s)"
    )
    for name in ("win", "tie", "loss", "win_rate_ties_half"):
        r = rates[name]
        out.print(f"  {name:<19} {r['value']:.2f} [{r['low']:.2f}, {r['high']:.2f}]", highlight=False)
    agreement = result.get("agreement")
    if agreement:
        alpha = agreement["krippendorff_alpha"]
        out.print(
            f"  agreement: Krippendorff's alpha {alpha:.2f}"
            if alpha is not None
            else "  agreement: undefined",
            highlight=False,
        )
        if agreement.get("cohen_kappa") is not None:
            out.print(f"  Cohen's kappa {agreement['cohen_kappa']:.2f}", highlight=False)
    out.print(f"Saved {reviews[0] / 'result.json'}")


@registry_app.command("list")
def registry_list(
    family: Annotated[str | None, typer.Option(help="Only this family.")] = None,
    config: Annotated[Path | None, typer.Option(help="Project config.")] = None,
) -> None:
    """Registered versions, newest first."""
    from tunesmith.registry import list_versions
    from tunesmith.registry.aliases import aliases_of
    from tunesmith.workspace import open_workspace

    cfg = _config(config, None)
    workspace = open_workspace(cfg)
    versions = list_versions(workspace, family)
    pointed: dict[str, list[str]] = {}
    for name in {v.family for v in versions}:
        for alias, target in aliases_of(workspace, name, cfg.registry).items():
            if target is not None:
                pointed.setdefault(target.id, []).append(alias)
    table = _table("name", "aliases", "created", "method", "dataset", "val loss")
    for v in versions:
        loss = v.metrics.get("eval_loss")
        table.add_row(
            v.name,
            ", ".join(pointed.get(v.id, [])) or "-",
            f"{v.created_at:%m-%d %H:%M}",
            v.method,
            v.dataset_version_id or "-",
            f"{loss:.3f}" if isinstance(loss, float) else "-",
        )
    out.print(table)


@registry_app.command("show")
def registry_show(
    version: Annotated[str, typer.Argument(help="Version name or id.")],
    config: Annotated[Path | None, typer.Option(help="Project config.")] = None,
) -> None:
    """Everything recorded about one version: lineage, config, metrics, artifacts."""
    import yaml

    from tunesmith.registry import RegistryError, get_version
    from tunesmith.registry.aliases import aliases_of, approvals, eval_reports
    from tunesmith.workspace import open_workspace

    cfg = _config(config, None)
    workspace = open_workspace(cfg)
    try:
        v = get_version(workspace, version)
    except RegistryError as exc:
        raise _fail(str(exc)) from None
    record = {
        "name": v.name,
        "id": v.id,
        "family": v.family,
        "run": v.run_id,
        "parent": v.parent_id,
        "base_model": v.base_model,
        "base_revision": v.base_revision,
        "method": v.method,
        "weights_sha256": v.weights_sha256,
        "dataset_version": v.dataset_version_id,
        "seed": v.seed,
        "artifacts": v.path,
        "created_by": v.created_by,
        "created_at": v.created_at.isoformat(),
        "aliases": [
            a
            for a, target in aliases_of(workspace, v.family, cfg.registry).items()
            if target and target.id == v.id
        ],
        "metrics": v.metrics,
        "eval_reports": [
            {
                "id": r.id,
                "gates": {None: "none", True: "passed", False: "failed"}[r.gate_passed],
                "compared": [system["label"] for system in r.systems],
                "at": r.created_at.isoformat(),
                "path": r.path,
            }
            for r in eval_reports(workspace, v)
        ],
        "approvals": [
            {"by": a.approver, "note": a.note, "at": a.at.isoformat()} for a in approvals(workspace, v)
        ],
        "lineage": v.lineage,
        "config": v.config,
    }
    out.print(
        yaml.safe_dump(record, sort_keys=False, allow_unicode=True),
        markup=False,
        highlight=False,
        soft_wrap=True,
    )


@registry_app.command("history")
def registry_history(
    family: Annotated[str | None, typer.Argument(help="Model family (default: the project's).")] = None,
    alias: Annotated[str | None, typer.Option(help="Only this alias.")] = None,
    config: Annotated[Path | None, typer.Option(help="Project config.")] = None,
) -> None:
    """Every alias move of a family, newest first: from, to, who, when, why, gate report."""
    from tunesmith.registry import list_versions
    from tunesmith.registry.aliases import aliases_of, describe, history
    from tunesmith.workspace import open_workspace

    cfg = _config(config, None)
    workspace = open_workspace(cfg)
    family = family or cfg.project
    names = {v.id: v.name for v in list_versions(workspace, family)}
    now = aliases_of(workspace, family, cfg.registry)
    for alias_name, target in now.items():
        out.print(f"{alias_name} → {target.name if target else '-'}", highlight=False)
    events = history(workspace, family, alias)
    out.print(f"\n{len(events)} moves, newest first:" if events else "\nNo alias has been moved yet.")
    for event in events:
        row = describe(event, names)
        gate = f", gate report {row['gate_report']}" if row["gate_report"] != "-" else ""
        why = f": {row['why']}" if row["why"] else ""
        out.print(
            f"{row['at']}  {row['alias']}  {row['from']} → {row['to']}  "
            f"{row['action']} by {row['by']}{gate}{why}",
            highlight=False,
            soft_wrap=True,
        )


@registry_app.command("promote")
def registry_promote(
    version: Annotated[str, typer.Argument(help="Version name or id.")],
    to: Annotated[str, typer.Option("--to", help="The alias to move (production, staging, ...).")],
    force: Annotated[bool, typer.Option(help="Skip the gate and approval checks (needs --reason).")] = False,
    reason: Annotated[str, typer.Option(help="Why: recorded in the alias history.")] = "",
    config: Annotated[Path | None, typer.Option(help="Project config.")] = None,
) -> None:
    """Move an alias to a version; production needs a passing gate report against the current one."""
    from tunesmith.registry import RegistryError, get_version
    from tunesmith.registry.aliases import promote
    from tunesmith.workspace import open_workspace

    cfg = _config(config, None)
    workspace = open_workspace(cfg)
    try:
        target = get_version(workspace, version)
        event = promote(workspace, cfg.registry, target, to, force=force, reason=reason)
    except RegistryError as exc:
        raise _fail(str(exc)) from None
    how = (
        " (forced)"
        if event.forced
        else f" (gate report {event.gate_report_id})"
        if event.gate_report_id
        else ""
    )
    out.print(f"{target.family}: {to} → {target.name}{how}", highlight=False)


@registry_app.command("approve")
def registry_approve(
    version: Annotated[str, typer.Argument(help="Version name or id.")],
    by: Annotated[str, typer.Option("--by", help="Who approves (not the one who trained it).")],
    note: Annotated[str, typer.Option(help="What was checked.")] = "",
    config: Annotated[Path | None, typer.Option(help="Project config.")] = None,
) -> None:
    """Record an approval of a version for production (required when registry.require_approval is on)."""
    from tunesmith.registry import RegistryError, get_version
    from tunesmith.registry.aliases import approve
    from tunesmith.workspace import open_workspace

    workspace = open_workspace(_config(config, None))
    try:
        target = get_version(workspace, version)
        approve(workspace, target, by, note)
    except RegistryError as exc:
        raise _fail(str(exc)) from None
    out.print(f"{by} approved {target.name}.", highlight=False)


@registry_app.command("rollback")
def registry_rollback(
    family: Annotated[str | None, typer.Argument(help="Model family (default: the project's).")] = None,
    alias: Annotated[str, typer.Option(help="The alias to move back.")] = "production",
    reason: Annotated[str, typer.Option(help="Why: recorded in the alias history.")] = "",
    config: Annotated[Path | None, typer.Option(help="Project config.")] = None,
) -> None:
    """Point production back at the version it replaced, in one command."""
    from tunesmith.registry import RegistryError, get_version
    from tunesmith.registry.aliases import rollback
    from tunesmith.workspace import open_workspace

    cfg = _config(config, None)
    workspace = open_workspace(cfg)
    family = family or cfg.project
    try:
        event = rollback(workspace, family, alias=alias, reason=reason)
        assert event.to_version_id is not None and event.from_version_id is not None
        now, before = (
            get_version(workspace, event.to_version_id),
            get_version(workspace, event.from_version_id),
        )
    except RegistryError as exc:
        raise _fail(str(exc)) from None
    out.print(f"{family}: {alias} → {now.name} (was {before.name})", highlight=False)


@registry_app.command("diff")
def registry_diff(
    a: Annotated[str, typer.Argument(help="The older version.")],
    b: Annotated[str, typer.Argument(help="The newer version.")],
    config: Annotated[Path | None, typer.Option(help="Project config.")] = None,
) -> None:
    """Two versions side by side: config keys that differ, data changes, metric deltas with intervals."""
    from tunesmith.registry import RegistryError, get_version
    from tunesmith.registry.lifecycle import diff
    from tunesmith.workspace import open_workspace

    workspace = open_workspace(_config(config, None))
    try:
        result = diff(workspace, get_version(workspace, a), get_version(workspace, b))
    except RegistryError as exc:
        raise _fail(str(exc)) from None
    out.print(f"[bold]{result['a']} → {result['b']}[/bold]")
    for field, (x, y) in result.get("record", {}).items():
        out.print(f"  {field}: {x} → {y}", highlight=False)
    out.print("Config:" if result["config"] else "Config: identical")
    for key, (x, y) in result["config"].items():
        out.print(f"  {key}: {x!r} → {y!r}", highlight=False, markup=False)
    data = result.get("data", {})
    if "same" in data:
        out.print(f"Data: the same dataset version ({data['same']})")
    else:
        out.print(f"Data: {data['a']} → {data['b']}")
        for split, entry in data["splits"].items():
            out.print(f"  {split}: +{entry['added']} −{entry['removed']} rows ({entry['kept']} kept)")
    metrics = result["metrics"]
    if metrics["report"]:
        out.print(f"Metrics (report {metrics['report']}, {metrics['items']} items, b − a):")
        for row in metrics["deltas"]:
            interval = f"[{row['low']:+.3g}, {row['high']:+.3g}]"
            out.print(
                f"  {row['metric']}: {row['delta']:+.4g} {interval} p={row['p_value']:.3f}", highlight=False
            )
    else:
        out.print(f"Metrics (as recorded; {metrics['note']}):", soft_wrap=True)
        for row in metrics["deltas"]:
            out.print(
                f"  {row['metric']}: {row['a']:.4g} → {row['b']:.4g} ({row['delta']:+.4g})", highlight=False
            )


@registry_app.command("card")
def registry_card(
    version: Annotated[str, typer.Argument(help="Version name or id.")],
    output: Annotated[Path | None, typer.Option(help="Write the card here (default: print it).")] = None,
    config: Annotated[Path | None, typer.Option(help="Project config.")] = None,
) -> None:
    """A Markdown model card: base and licence, data, method, metrics with intervals, forgetting, lineage."""
    from tunesmith.registry import RegistryError, get_version
    from tunesmith.registry.lifecycle import model_card
    from tunesmith.workspace import open_workspace

    workspace = open_workspace(_config(config, None))
    try:
        card = model_card(workspace, get_version(workspace, version))
    except RegistryError as exc:
        raise _fail(str(exc)) from None
    if output is None:
        out.print(card, markup=False, highlight=False, soft_wrap=True)
    else:
        output.write_text(card, encoding="utf-8")
        out.print(f"Wrote {output}")


@registry_app.command("reproduce")
def registry_reproduce(
    version: Annotated[str, typer.Argument(help="Version name or id.")],
    tolerance: Annotated[float, typer.Option(help="Largest relative difference that still matches.")] = 0.02,
    config: Annotated[Path | None, typer.Option(help="Project config.")] = None,
) -> None:
    """Train again from the version's record and check its metrics match; exit 1 when they do not."""
    from tunesmith.registry import RegistryError, get_version
    from tunesmith.train import TrainConfigError
    from tunesmith.train.run import reproduce
    from tunesmith.workspace import open_workspace

    cfg = _config(config, None)
    workspace = open_workspace(cfg)
    try:
        result = reproduce(workspace, get_version(workspace, version), tolerance, cfg.base_dir)
    except (RegistryError, TrainConfigError) as exc:
        raise _fail(str(exc)) from None
    table = _table("metric", "recorded", "reproduced", "difference", "match")
    for row in result["metrics"]:
        table.add_row(
            row["metric"],
            f"{row['recorded']:.6g}",
            f"{row['reproduced']:.6g}",
            f"{row['relative_difference']:.2%}",
            "yes" if row["match"] else "[red]no[/red]",
        )
    out.print(table)
    verdict = "matches" if result["matches"] else "does NOT match"
    out.print(f"Run {result['run']} {verdict} {version} within {tolerance:.0%}.")
    if not result["matches"]:
        raise typer.Exit(1)


@registry_app.command("export")
def registry_export(
    version: Annotated[str, typer.Argument(help="Version name or id.")],
    format_: Annotated[
        str,
        typer.Option("--format", help="adapter (PEFT), merged (safetensors) or gguf (llama.cpp, Ollama)."),
    ] = "merged",
    quant: Annotated[str, typer.Option(help="gguf: f16 or q8_0.")] = "q8_0",
    output: Annotated[
        Path | None, typer.Option(help="Folder to write (default: exports/ in the workspace).")
    ] = None,
    config: Annotated[Path | None, typer.Option(help="Project config.")] = None,
) -> None:
    """Export a version as an adapter, a merged model or GGUF, with a parity check against the version."""
    from tunesmith.registry import RegistryError, get_version
    from tunesmith.registry.export import export_version
    from tunesmith.workspace import open_workspace

    if format_ not in ("adapter", "merged", "gguf"):
        raise _fail(f"--format {format_!r}: use adapter, merged or gguf", 2)
    if quant not in ("f16", "q8_0"):
        raise _fail(f"--quant {quant!r}: use f16 or q8_0", 2)
    workspace = open_workspace(_config(config, None))
    try:
        target, report = export_version(
            workspace,
            get_version(workspace, version),
            format_,  # type: ignore[arg-type]
            output,
            quant=quant,
        )
    except RegistryError as exc:
        raise _fail(str(exc)) from None
    out.print(f"Exported {version} ({format_}) to {target}")
    out.print(
        f"Parity: {report['identical_tokens']}/{report['prompts']} prompts gave identical tokens "
        f"(token agreement {report['token_agreement']:.1%}), "
        f"{report['answers_ending_at_a_stop_token']} ended at a stop token {report['stop_tokens']}, "
        f"chat template round-trips: {report['chat_template_round_trips']}",
        highlight=False,
    )


@registry_app.command("push")
def registry_push(
    version: Annotated[str, typer.Argument(help="Version name or id.")],
    to: Annotated[
        str, typer.Option("--to", help="hf (the Hugging Face Hub) or mlflow (an MLflow registry).")
    ],
    repo: Annotated[str | None, typer.Option(help="hf: the repository, owner/name.")] = None,
    tracking_uri: Annotated[str | None, typer.Option(help="mlflow: the tracking server URI.")] = None,
    format_: Annotated[
        str | None, typer.Option("--format", help="adapter or merged (default: adapter for LoRA versions).")
    ] = None,
    public: Annotated[bool, typer.Option(help="hf: make a new repository public.")] = False,
    config: Annotated[Path | None, typer.Option(help="Project config.")] = None,
) -> None:
    """Push a version (exported, with its model card) to the Hugging Face Hub or an MLflow registry."""
    from tunesmith.registry import RegistryError, get_version
    from tunesmith.registry.sync import log_to_mlflow, push_to_hub
    from tunesmith.workspace import open_workspace

    if to not in ("hf", "mlflow"):
        raise _fail(f"--to {to!r}: use hf or mlflow", 2)
    if to == "hf" and not repo:
        raise _fail("--to hf needs --repo OWNER/NAME", 2)
    workspace = open_workspace(_config(config, None))
    try:
        target = get_version(workspace, version)
        if to == "hf":
            assert repo is not None
            url = push_to_hub(workspace, target, repo, private=not public, fmt=format_)
            out.print(f"Pushed {target.name} to {url}")
        else:
            logged = log_to_mlflow(workspace, target, tracking_uri, fmt=format_)
            out.print(
                f"Logged {target.name} as MLflow run {logged['run_id']}, "
                f"model {logged['model']} version {logged['model_version']}"
            )
    except RegistryError as exc:
        raise _fail(str(exc)) from None


serve_app = typer.Typer(invoke_without_command=True)
keys_app = typer.Typer(
    help="API keys of the server: create (shown once), list, revoke.", no_args_is_help=True
)
rollout_app = typer.Typer(
    help="Move a version through a route's rollout plan, one gated step at a time.", no_args_is_help=True
)
app.add_typer(serve_app, name="serve", rich_help_panel="Lifecycle")
serve_app.add_typer(keys_app, name="keys")
serve_app.add_typer(rollout_app, name="rollout")
ConfigOpt = Annotated[Path | None, typer.Option(help="Project config.")]


@serve_app.callback()
def serve(
    ctx: typer.Context,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    host: Annotated[str | None, typer.Option(help="Address to listen on (default serve.host).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default serve.port).")] = None,
    model: Annotated[
        list[str] | None, typer.Option("--model", help="Load this version or alias at start (repeatable).")
    ] = None,
    backend: Annotated[str | None, typer.Option(help="transformers, llamacpp or vllm.")] = None,
    list_backends: Annotated[
        bool, typer.Option("--list-backends", help="List the serving backends.")
    ] = False,
) -> None:
    """OpenAI-compatible server over the registry: models by version or alias, canary, shadow, hot swap."""
    if ctx.invoked_subcommand is not None:
        return
    from tunesmith.registry import RegistryError
    from tunesmith.serve import run_server
    from tunesmith.serve.backends import BackendError, backend_names

    if list_backends:
        for name in backend_names():
            out.print(name)
        return
    overrides = list(set_ or [])
    if model:
        overrides.append(f"serve.models=[{', '.join(model)}]")
    if backend:
        overrides.append(f"serve.backend={backend}")
    cfg = _config(config, overrides)
    try:
        run_server(cfg, host=host, port=port)
    except ConfigError as exc:  # the runtime config file
        raise _fail(str(exc), 2) from None
    except (RegistryError, BackendError, ValueError) as exc:
        raise _fail(str(exc)) from None


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Argument(help="Who or what the key is for.")],
    admin: Annotated[bool, typer.Option(help="Also allow alias moves, config reloads and rollouts.")] = False,
    group: Annotated[
        str | None, typer.Option(help="User group for targeting rules (internal, beta...).")
    ] = None,
    config: ConfigOpt = None,
) -> None:
    """Create a key; the secret is printed once and only its SHA-256 is stored."""
    from tunesmith.serve.keys import create_key
    from tunesmith.workspace import open_workspace

    key, secret = create_key(open_workspace(_config(config, None)), name, admin=admin, group=group)
    err.print(
        f"{key.id} ({', '.join(key.scopes)}{', group ' + group if group else ''}); "
        "store it now, it is not shown again:"
    )
    out.print(secret, highlight=False)


@keys_app.command("list")
def keys_list(config: ConfigOpt = None) -> None:
    """Keys with their scopes, group and state (never the secret)."""
    from tunesmith.serve.keys import list_keys
    from tunesmith.workspace import open_workspace

    table = _table("id", "name", "prefix", "scopes", "group", "created", "revoked")
    for key in list_keys(open_workspace(_config(config, None))):
        table.add_row(
            key.id,
            key.name,
            key.prefix + "…",
            ", ".join(key.scopes),
            key.user_group or "",
            key.created_at.strftime("%Y-%m-%d %H:%M"),
            key.revoked_at.strftime("%Y-%m-%d %H:%M") if key.revoked_at else "",
        )
    out.print(table)


@keys_app.command("revoke")
def keys_revoke(
    key: Annotated[str, typer.Argument(help="Key id or name.")],
    config: ConfigOpt = None,
) -> None:
    """Revoke a key; a running server refuses it from its next poll (serve.poll_seconds)."""
    from tunesmith.registry import RegistryError
    from tunesmith.serve.keys import revoke_key
    from tunesmith.workspace import open_workspace

    try:
        revoked = revoke_key(open_workspace(_config(config, None)), key)
    except RegistryError as exc:
        raise _fail(str(exc)) from None
    out.print(f"revoked {revoked.id} ({revoked.name})", highlight=False)


@rollout_app.command("start")
def rollout_start(
    version: Annotated[str, typer.Argument(help="The version to roll out.")],
    route: Annotated[str, typer.Option(help="The route (serve.routes[].model), e.g. support@production.")],
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Start a rollout; the server advances it while the step's gates hold and rolls it back when not."""
    from tunesmith.registry import RegistryError, get_version
    from tunesmith.serve.rollout import describe, start_rollout
    from tunesmith.workspace import open_workspace

    cfg = _config(config, set_)
    workspace = open_workspace(cfg)
    try:
        target = get_version(workspace, version)
        row = start_rollout(workspace, cfg.serve, route, target)
    except RegistryError as exc:
        raise _fail(str(exc)) from None
    info = describe(row, {target.id: target.name})
    out.print(f"{info['id']}: {target.name} on {row.route}, step {info['step']}", highlight=False)


@rollout_app.command("status")
def rollout_status(config: ConfigOpt = None) -> None:
    """Rollouts, newest first: version, route, step, status, and the last event's reasons."""
    from tunesmith.registry.versions import version_names
    from tunesmith.serve.rollout import describe, list_rollouts
    from tunesmith.workspace import open_workspace

    workspace = open_workspace(_config(config, None))
    names = version_names(workspace)
    table = _table("id", "version", "route", "step", "status", "since", "last event")
    for row in list_rollouts(workspace):
        info = describe(row, names)
        last = info["history"][-1]
        table.add_row(
            info["id"],
            info["version"],
            info["route"],
            info["step"],
            info["status"],
            info["since"],
            f"{last['event']}: {'; '.join(last.get('reasons', []))}".rstrip(": "),
        )
    out.print(table)


@rollout_app.command("abort")
def rollout_abort(
    rollout: Annotated[str, typer.Argument(help="Rollout id, or the route it runs on.")],
    reason: Annotated[str, typer.Option(help="Why: recorded in its history.")] = "",
    config: ConfigOpt = None,
) -> None:
    """Stop a running rollout; traffic returns to the route's primary at the server's next poll."""
    from tunesmith.registry import RegistryError
    from tunesmith.serve.rollout import abort_rollout
    from tunesmith.workspace import open_workspace

    try:
        row = abort_rollout(open_workspace(_config(config, None)), rollout, reason)
    except RegistryError as exc:
        raise _fail(str(exc)) from None
    out.print(f"{row.id} aborted", highlight=False)


sweep_app = typer.Typer(invoke_without_command=True)
app.add_typer(sweep_app, name="sweep", rich_help_panel="Lifecycle")
StorageOpt = Annotated[
    str | None,
    typer.Option(help="Optuna storage URL shared by workers (default: beside the project's store)."),
]


@sweep_app.callback()
def sweep(
    ctx: typer.Context,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    trials: Annotated[int | None, typer.Option(help="Budget: trials run by this worker.")] = None,
    timeout_minutes: Annotated[float | None, typer.Option(help="Budget: wall time.")] = None,
    max_tokens: Annotated[int | None, typer.Option(help="Budget: training tokens over all trials.")] = None,
    strategy: Annotated[str | None, typer.Option(help="tpe, random or grid.")] = None,
    objective: Annotated[
        str | None, typer.Option(help="Validation metric to optimise: eval_loss, accuracy, rouge_l, ...")
    ] = None,
    storage: StorageOpt = None,
    study: Annotated[str | None, typer.Option(help="Study name (default <project>-sweep).")] = None,
    learning_curve: Annotated[
        bool, typer.Option("--learning-curve", help="Train on growing shares of the data instead.")
    ] = False,
    register: Annotated[bool, typer.Option(help="Register the best trial as the candidate.")] = True,
) -> None:
    """Hyperparameter search judged on a validation metric, or a learning curve (--learning-curve)."""
    if ctx.invoked_subcommand is not None:
        return
    from tunesmith.data import DataError
    from tunesmith.sweep import SweepError, run_sweep
    from tunesmith.sweep import learning_curve as run_curve
    from tunesmith.workspace import open_workspace

    overrides = list(set_ or [])
    for name, value in (
        ("trials", trials),
        ("timeout_minutes", timeout_minutes),
        ("max_tokens", max_tokens),
        ("strategy", strategy),
        ("objective", objective),
        ("study", study),
    ):
        if value is not None:
            overrides.append(f"sweep.{name}={value}")
    cfg = _config(config, overrides)
    try:
        if learning_curve:
            curve = run_curve(cfg, open_workspace(cfg))
            _print_curve(curve)
            return
        result = run_sweep(config, overrides, storage=storage, register_best=register)
    except (SweepError, DataError) as exc:
        raise _fail(str(exc)) from None
    _print_study(result.study, cfg, storage)
    if result.version is not None:
        out.print(
            f"Best trial's run {result.best_run} registered as [bold]{result.version.name}[/bold] "
            f"(candidate); compare it with `tunesmith eval {result.version.name}`"
        )


@sweep_app.command("show")
def sweep_show(
    config: ConfigOpt = None,
    storage: StorageOpt = None,
    study: Annotated[str | None, typer.Option(help="Study name (default <project>-sweep).")] = None,
) -> None:
    """A study's trials, best first, and its plots: history, parameter importance, parallel coordinates."""
    cfg = _config(config, [f"sweep.study={study}"] if study else None)
    from tunesmith.sweep import open_study

    try:
        found = open_study(cfg, storage, create=False)
    except KeyError:
        raise _fail(
            f"no study {cfg.sweep.study or cfg.project + '-sweep'!r} in that storage; run `tunesmith sweep`"
        ) from None
    _print_study(found, cfg, storage)


def _print_study(study: Any, cfg: ProjectConfig, storage: str | None) -> None:
    from tunesmith.sweep.report import trial_rows, write_plots
    from tunesmith.workspace import open_workspace

    rows = trial_rows(study)
    params = sorted({k for r in rows for k in r["params"]})
    headers = [k.removeprefix("train.") for k in params]
    table = _table("trial", "state", cfg.sweep.objective, *headers, "tokens", "run")
    for column in table.columns:  # numbers whole; the run id may fold
        column.no_wrap, column.overflow = column.header != "run", "fold"
    for r in rows:
        table.add_row(
            str(r["trial"]),
            r["state"],
            f"{r['value']:.4f}" if r["value"] is not None else "",
            *(_short_value(r["params"].get(k)) for k in params),
            f"{r['tokens']:,}" if r["tokens"] else "",
            r["run"] or "",
        )
    out.print(
        f"Study [bold]{study.study_name}[/bold]: {study.direction.name.lower()} {cfg.sweep.objective} "
        "on the validation split",
        highlight=False,
    )
    out.print(table)
    folder = open_workspace(cfg).root / "sweeps" / study.study_name
    written = write_plots(study, folder)
    if written:
        out.print("Plots: " + ", ".join(str(p) for p in written), soft_wrap=True)


def _short_value(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else "" if value is None else str(value)


def _print_curve(curve: Any) -> None:
    table = _table("share", "train rows", f"test {curve.metric}")
    for fraction, rows, value in curve.means():
        table.add_row(f"{fraction:.0%}", str(rows), f"{value:.4f}")
    out.print(table)
    if curve.fit is not None:
        fit = curve.fit
        out.print(
            f"Power-law fit: {curve.metric} = {fit['a']:.4g} {fit['b']:+.4g} * rows^-{fit['c']:.3g}; "
            f"doubling the data ({curve.full_rows} → {2 * curve.full_rows} rows) is expected to "
            f"{'improve' if (curve.doubling_gain or 0) > 0 else 'change'} {curve.metric} by "
            f"{curve.doubling_gain:+.4f}",
            soft_wrap=True,
            highlight=False,
        )
    for note in curve.notes:
        out.print(f"[yellow]note:[/yellow] {note}")
    out.print(f"Plot: {curve.folder / 'learning_curve.png'}; points: {curve.folder / 'curve.json'}")


monitor_app = typer.Typer(
    help="Production monitoring: alerts, drift of served prompts, reports over time.", no_args_is_help=True
)
app.add_typer(monitor_app, name="monitor", rich_help_panel="Lifecycle")


@monitor_app.command("alerts")
def monitor_alerts(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    check: Annotated[
        bool, typer.Option(help="Evaluate the rules now (a running server does every minute).")
    ] = True,
) -> None:
    """Evaluate monitor.alerts now (send, roll back) and list the alerts that fired, newest first."""
    from tunesmith.monitor.alerts import check_alerts, recent_alerts
    from tunesmith.registry.versions import version_names
    from tunesmith.workspace import open_workspace

    cfg = _config(config, set_)
    workspace = open_workspace(cfg)
    if check:
        if not cfg.monitor.alerts:
            err.print("no rules under monitor.alerts; nothing to check")
        fired = check_alerts(workspace, cfg.monitor, cfg.registry)
        out.print(f"{len(fired)} alert(s) fired now", highlight=False)
    names = version_names(workspace)
    table = _table("at", "rule", "version", "message", "sent", "action")
    for alert in recent_alerts(workspace):
        table.add_row(
            alert.at.strftime("%Y-%m-%d %H:%M:%S"),
            alert.rule,
            names.get(alert.version_id or "", "-"),
            alert.message,
            ", ".join(f"{k}: {v}" for k, v in alert.channels.items()),
            alert.action or "",
        )
    out.print(table)


@monitor_app.command("report")
def monitor_report(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    since: Annotated[str, typer.Option(help="How far back: 30m, 24h, 7d.")] = "24h",
    output: Annotated[
        Path | None, typer.Option(help="The HTML file (default: reports/monitor-TIME.html).")
    ] = None,
    drift: Annotated[bool, typer.Option(help="Also measure each version's drift (loads MiniLM).")] = False,
) -> None:
    """An HTML page per served version over time: traffic, latency, scores, feedback, drift, alerts."""
    from datetime import UTC, datetime

    from tunesmith.monitor.report import parse_since, write_report
    from tunesmith.workspace import open_workspace

    cfg = _config(config, set_)
    workspace = open_workspace(cfg)
    try:
        window = parse_since(since)
    except ValueError as exc:
        raise _fail(str(exc), 2) from None
    target = output or workspace.root / "reports" / f"monitor-{datetime.now(UTC):%Y%m%d-%H%M%S}.html"
    path = write_report(workspace, cfg.monitor, target, since=window, drift=drift)
    out.print(f"wrote {path}", highlight=False, soft_wrap=True)


@monitor_app.command("drift")
def monitor_drift(
    model: Annotated[str, typer.Argument(help="A version, family@alias or family (its production alias).")],
    config: ConfigOpt = None,
    set_: SetOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Recent prompts of a served version against its training data: MMD, classifier AUC, PSI, words."""
    import json

    from tunesmith.monitor.drift import DriftError, drift_for_version
    from tunesmith.registry import RegistryError
    from tunesmith.registry.versions import resolve_name
    from tunesmith.workspace import open_workspace

    cfg = _config(config, set_)
    workspace = open_workspace(cfg)
    try:
        version = resolve_name(workspace, model)
        report = drift_for_version(workspace, version, cfg.monitor.drift)
    except (RegistryError, DriftError) as exc:
        raise _fail(str(exc)) from None
    if as_json:
        out.print(json.dumps(report.as_dict(), indent=2, ensure_ascii=False), soft_wrap=True, highlight=False)
        raise typer.Exit(3 if report.drifted else 0)
    limits = cfg.monitor.drift
    out.print(
        f"{report.version}: {report.current} recent prompts against {report.reference} training prompts "
        f"of {report.dataset}",
        highlight=False,
    )
    table = _table("check", "value", "threshold", "verdict")
    table.add_row(
        "embedding MMD p-value",
        f"{report.mmd_p:.3f} (MMD {report.mmd:.4f})",
        f"< {limits.alpha}",
        "drift" if report.mmd_p < limits.alpha else "ok",
    )
    table.add_row(
        "classifier AUC",
        f"{report.auc:.2f}",
        f"> {limits.max_auc}",
        "drift" if report.auc > limits.max_auc else "ok",
    )
    for name, value in report.psi.items():
        table.add_row(
            f"PSI {name}", f"{value:.2f}", f"> {limits.max_psi}", "drift" if value > limits.max_psi else "ok"
        )
    out.print(table)
    out.print(
        "more frequent now: " + ", ".join(w for w, _ in report.words_current), highlight=False, soft_wrap=True
    )
    out.print(
        "more frequent in training: " + ", ".join(w for w, _ in report.words_reference),
        highlight=False,
        soft_wrap=True,
    )
    out.print("least like the training data:", highlight=False)
    for text in report.examples:
        out.print(f"  - {text[:160]}", highlight=False, soft_wrap=True)
    out.print(
        "DRIFT: " + "; ".join(report.reasons) if report.drifted else "no drift",
        highlight=False,
        soft_wrap=True,
    )
    raise typer.Exit(3 if report.drifted else 0)


@app.command("improve", rich_help_panel="Lifecycle")
def improve_cmd(
    model: Annotated[
        str | None, typer.Argument(help="The served version (default: the project's production).")
    ] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    since: Annotated[str | None, typer.Option(help="Only requests this recent: 30m, 24h, 7d.")] = None,
    where: Annotated[
        list[str] | None, typer.Option("--where", help="A score condition, e.g. relevance<0.3 (repeatable).")
    ] = None,
    feedback: Annotated[
        str, typer.Option(help="Feedback kinds to learn from.")
    ] = "correction,preference,rating",
    limit: Annotated[int | None, typer.Option(help="At most this many rows of each kind.")] = None,
    drift_cluster: Annotated[
        bool, typer.Option(help="Only the cluster of requests least like the training data.")
    ] = False,
    train: Annotated[
        bool, typer.Option(help="Fine-tune, evaluate and gate (--no-train: datasets only).")
    ] = True,
    objective: Annotated[
        str, typer.Option(help="sft: fine-tune on the corrections; dpo: optimise on the preference pairs.")
    ] = "sft",
) -> None:
    """Production feedback to a dataset, an incremental fine-tune, an eval against production, and shadow."""
    from tunesmith.data import DataError
    from tunesmith.monitor.improve import ImproveError, Selection, improve
    from tunesmith.monitor.report import parse_since
    from tunesmith.registry import RegistryError
    from tunesmith.workspace import open_workspace

    cfg = _config(config, set_)
    workspace = open_workspace(cfg)
    try:
        selection = Selection(
            model=model or f"{cfg.project}@production",
            since=parse_since(since) if since else None,
            where=list(where or []),
            feedback=tuple(k.strip() for k in feedback.split(",") if k.strip()),
            limit=limit,
            drift_cluster=drift_cluster,
        )
        result = improve(cfg, workspace, selection, train=train, objective=objective)
    except (ImproveError, RegistryError, DataError, ValueError) as exc:
        raise _fail(str(exc)) from None
    out.print(
        f"{result.production.name}: {len(result.requests)} request(s) with feedback → "
        f"{result.sft_rows} SFT row(s), {result.dpo_rows} preference pair(s) in {result.folder}",
        highlight=False,
        soft_wrap=True,
    )
    for label, dataset in (("SFT", result.dataset), ("preference", result.preference_dataset)):
        if dataset is not None:
            out.print(f"{label} dataset {dataset.id}: {dataset.counts}", highlight=False, soft_wrap=True)
    if result.version is not None:
        out.print(f"trained {result.version.name} from {result.production.name}", highlight=False)
    if result.report is not None:
        _print_report(result.report)
    if result.shadow and result.version is not None:
        out.print(
            f"shadow → {result.version.name} (gate report {result.report['id'] if result.report else ''})",
            highlight=False,
        )
    for note in result.notes:
        err.print(note, highlight=False, soft_wrap=True)


feedback_app = typer.Typer(
    help="Human feedback: reviewers rank a version's sampled answers; rankings become preference data.",
    no_args_is_help=True,
)
app.add_typer(feedback_app, name="feedback", rich_help_panel="Lifecycle")
ReviewerOpt = Annotated[
    str | None, typer.Option(help="Who is reviewing (default: TUNESMITH_USER, else the login name).")
]


@feedback_app.command("collect")
def feedback_collect(
    version: Annotated[
        str, typer.Argument(help="The version to sample answers from (name, id, family@alias).")
    ],
    prompts: Annotated[
        Path | None, typer.Option(help="Prompts: JSONL chat or {prompt} rows, or a .txt with one per line.")
    ] = None,
    dataset: Annotated[str | None, typer.Option(help="Or the prompts of a dataset version's split.")] = None,
    split: Annotated[str, typer.Option(help="The split of --dataset.")] = "test",
    from_production: Annotated[
        bool,
        typer.Option(
            "--from-production", help="Or the version's served requests; the served answer is a candidate."
        ),
    ] = False,
    since: Annotated[str | None, typer.Option(help="--from-production: only requests this recent.")] = None,
    where: Annotated[
        list[str] | None,
        typer.Option("--where", help="--from-production: a score condition such as relevance<0.3."),
    ] = None,
    k: Annotated[int, typer.Option("--k", help="Answers sampled per prompt.")] = 4,
    limit: Annotated[int | None, typer.Option(help="At most this many prompts.")] = None,
    temperature: Annotated[float, typer.Option(help="Sampling temperature.")] = 0.9,
    max_new_tokens: Annotated[int, typer.Option(help="Longest answer, in tokens.")] = 128,
    seed: Annotated[int, typer.Option(help="Sampling seed.")] = 0,
    review: Annotated[
        str, typer.Option(help="terminal: review now; html: only write the review page; none: neither.")
    ] = "terminal",
    reviewer: ReviewerOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Sample K answers per prompt from a version, for reviewers to rank (in the terminal or a web page)."""
    from tunesmith.data import load_split
    from tunesmith.feedback import FeedbackError, collect, read_prompts
    from tunesmith.feedback.collect import production_prompts, prompt_of_row
    from tunesmith.monitor.report import parse_since
    from tunesmith.registry import RegistryError, get_version
    from tunesmith.store import DatasetVersion, session
    from tunesmith.workspace import open_workspace

    if sum(x is not None and x is not False for x in (prompts, dataset, from_production or None)) != 1:
        raise _fail(
            "give exactly one source of prompts: --prompts FILE, --dataset ID or --from-production", 2
        )
    if review not in ("terminal", "html", "none"):
        raise _fail("--review: terminal, html or none", 2)
    cfg = _config(config, set_)
    workspace = open_workspace(cfg)
    try:
        if prompts is not None:
            rows, source = read_prompts(prompts), f"file {prompts}"
        elif dataset is not None:
            with session(workspace.engine) as s:
                data = s.get(DatasetVersion, dataset)
            if data is None:
                raise FeedbackError(f"no dataset version {dataset!r}; see `tunesmith data list`")
            rows = [
                {"prompt": p, "source": {"dataset": data.id, "split": split, "row": n}}
                for n, r in enumerate(load_split(data, split))
                if (p := prompt_of_row(r)) is not None
            ]
            source = f"dataset {data.id} ({split})"
        else:
            since_delta = parse_since(since) if since else None
            rows = production_prompts(
                workspace, get_version(workspace, version), since=since_delta, where=list(where or [])
            )
            source = "production"
        rows = rows[:limit] if limit else rows
        result = collect(
            cfg,
            workspace,
            version,
            rows,
            k=k,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            seed=seed,
            source=source,
        )
    except (FeedbackError, RegistryError, ValueError) as exc:
        raise _fail(str(exc)) from None
    out.print(
        f"Session {result.id}: {len(result.items)} prompt(s) with answers to rank, from {source}, "
        f"in {result.folder}",
        highlight=False,
        soft_wrap=True,
    )
    out.print(f"Review page: {result.folder / 'review.html'}", highlight=False, soft_wrap=True)
    if review == "terminal":
        _review_and_write(cfg, workspace, result, reviewer)
    else:
        out.print(
            f"Next: `tunesmith feedback review {result.id}` (terminal), or send the page to reviewers "
            f"and `tunesmith feedback import {result.id} FILE...`; "
            f"then `tunesmith feedback dataset {result.id}`.",
            highlight=False,
            soft_wrap=True,
        )


def _review_and_write(cfg: ProjectConfig, workspace: Any, target: Any, reviewer: str | None) -> None:
    from tunesmith.feedback import FeedbackError, review_in_terminal, write_dataset
    from tunesmith.registry.versions import who

    name = reviewer or who()
    given = review_in_terminal(target, name, lambda text: typer.prompt(text, default="", show_default=False))
    out.print(f"{given} review(s) by {name} saved to {target.reviews_path}", highlight=False, soft_wrap=True)
    try:
        version = write_dataset(cfg, workspace, target)
    except FeedbackError as exc:
        err.print(str(exc), highlight=False, soft_wrap=True)
        return
    _print_feedback_dataset(version, target)


def _print_feedback_dataset(version: Any, target: Any) -> None:
    out.print(f"Preference dataset {version.id}: {version.counts}", highlight=False, soft_wrap=True)
    out.print(
        f"Train on it with data.path: {target.folder / 'preferences.jsonl'} and data.format: preference, "
        f"and train.objective: reward (a reward model) or dpo (the LM itself)",
        highlight=False,
        soft_wrap=True,
    )


@feedback_app.command("review")
def feedback_review(
    session_id: Annotated[str, typer.Argument(help="The session (fb-...), or latest.")] = "latest",
    reviewer: ReviewerOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Rank the answers of a session in the terminal (resumes where this reviewer stopped)."""
    from tunesmith.feedback import FeedbackError, open_session
    from tunesmith.workspace import open_workspace

    cfg = _config(config, set_)
    workspace = open_workspace(cfg)
    try:
        target = open_session(workspace, session_id)
    except FeedbackError as exc:
        raise _fail(str(exc)) from None
    _review_and_write(cfg, workspace, target, reviewer)


@feedback_app.command("import")
def feedback_import(
    session_id: Annotated[str, typer.Argument(help="The session (fb-...).")],
    files: Annotated[list[Path], typer.Argument(help="Review files downloaded from the review page.")],
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Add the reviews downloaded from a session's review page, and write the preference dataset."""
    from tunesmith.feedback import FeedbackError, import_reviews, open_session, write_dataset
    from tunesmith.workspace import open_workspace

    cfg = _config(config, set_)
    workspace = open_workspace(cfg)
    try:
        target = open_session(workspace, session_id)
        added = import_reviews(target, files)
        out.print(f"{added} new review(s) added to {target.id}", highlight=False)
        version = write_dataset(cfg, workspace, target)
    except FeedbackError as exc:
        raise _fail(str(exc)) from None
    _print_feedback_dataset(version, target)


@feedback_app.command("dataset")
def feedback_dataset(
    session_id: Annotated[str, typer.Argument(help="The session (fb-...), or latest.")] = "latest",
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Write a session's reviews so far as a preference dataset version."""
    from tunesmith.feedback import FeedbackError, open_session, write_dataset
    from tunesmith.workspace import open_workspace

    cfg = _config(config, set_)
    workspace = open_workspace(cfg)
    try:
        target = open_session(workspace, session_id)
        version = write_dataset(cfg, workspace, target)
    except FeedbackError as exc:
        raise _fail(str(exc)) from None
    _print_feedback_dataset(version, target)


@feedback_app.command("list")
def feedback_list(config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """The feedback sessions of this workspace, with how far their review is."""
    from rich.table import Table

    from tunesmith.feedback import list_sessions
    from tunesmith.workspace import open_workspace

    table = Table("session", "version", "source", "prompts", "reviewed", "created")
    for row in list_sessions(open_workspace(_config(config, set_))):
        table.add_row(
            row["id"],
            row["version"],
            row["source"],
            str(row["items"]),
            str(row["reviewed"]),
            row["created"][:16],
        )
    out.print(table)


@app.command(rich_help_panel="Lifecycle")
def ui(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    host: Annotated[
        str | None, typer.Option(help="Address to listen on (default ui.host, 127.0.0.1).")
    ] = None,
    port: Annotated[int | None, typer.Option(help="Port (default ui.port, 8600).")] = None,
) -> None:
    """The web app over the same store: datasets, runs, evals, registry, deployments, monitoring."""
    from tunesmith.ui import run_ui

    cfg = _config(config, set_)
    out.print(f"tunesmith ui on http://{host or cfg.ui.host}:{port or cfg.ui.port} (Ctrl-C stops it)")
    run_ui(cfg, config or Path(CONFIG_FILENAME), host=host, port=port)


@app.command(rich_help_panel="Start here")
def quickstart(
    directory: Annotated[Path, typer.Argument(help="Folder for the demo project.")] = Path(
        "tunesmith-quickstart"
    ),
    set_: SetOpt = None,
) -> None:
    """The main job on the bundled model: demo data, before, LoRA fine-tune, after, compare, register."""
    from tunesmith.models import ModelNotFoundError
    from tunesmith.pipeline import print_quickstart
    from tunesmith.pipeline import quickstart as run_quickstart

    try:
        result = run_quickstart(directory, set_)
    except ConfigError as exc:
        raise _fail(str(exc), 2) from None
    except ModelNotFoundError as exc:
        raise _fail(str(exc)) from None
    print_quickstart(result)


def main() -> None:
    # Raised inside TRL/PEFT on every run, about their own calls; nothing a user can act on.
    warnings.filterwarnings(
        "ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning
    )
    app()


if __name__ == "__main__":
    main()
