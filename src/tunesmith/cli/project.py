"""Project commands: init, validate, the model catalogue, and quickstart."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tunesmith.cli.common import app, fail, load_project, new_table, out, reported
from tunesmith.cli.options import ConfigArg, SetOpt
from tunesmith.config import CONFIG_FILENAME, ConfigError

models_app = typer.Typer(
    help="The model catalogue: list models, show where one loads from.", no_args_is_help=True
)
app.add_typer(models_app, name="models", rich_help_panel="Project")


@app.command(rich_help_panel="Project")
def init(
    directory: Annotated[Path, typer.Argument(help="Project folder.")] = Path(),
    force: Annotated[bool, typer.Option(help="Overwrite an existing tunesmith.yaml.")] = False,
) -> None:
    """Create a project: a commented tunesmith.yaml and the .tunesmith/ workspace with its store."""
    from tunesmith.workspace import init_project

    with reported(FileExistsError):
        path = init_project(directory, force=force)
    out.print(
        f"Wrote {path} and the workspace {directory / '.tunesmith'}. Next: set data.path, then "
        "`tunesmith validate` and `tunesmith train`."
    )


@app.command(rich_help_panel="Project")
def validate(config: ConfigArg = None, set_: SetOpt = None) -> None:
    """Check a project config, and that data.path holds rows its objective trains on; exit 2 if not."""
    cfg = load_project(config, set_)
    if (
        cfg.data.path is not None
        and cfg.train.objective != "multitask"
        and not cfg.data.path.startswith("ds-")
    ):
        from tunesmith.data.formats import kind_of
        from tunesmith.data.prepare import data_format
        from tunesmith.errors import InputError
        from tunesmith.train.objectives import objective_for_rows
        from tunesmith.train.sft import TrainConfigError

        try:
            fmt = data_format(cfg.data, cfg.base_dir)
            cfg = objective_for_rows(cfg, fmt, kind_of(fmt), cfg.data.path, announce=True)
        except (InputError, TrainConfigError) as exc:
            raise fail(str(exc), code=2) from None
    out.print(
        f"[green]ok[/green] {config or CONFIG_FILENAME}: project {cfg.project!r}, model {cfg.model.id}, "
        f"{cfg.train.method} {cfg.train.objective}"
    )


@models_app.command("list")
def models_list() -> None:
    """The catalogue: bundled models that work offline; any hub id or local folder works too."""
    from tunesmith.models import list_models

    table = new_table("id", "kind", "params", "context", "licence", "cached")
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

    with reported(ModelNotFoundError):
        info = model_info(model_id, source=source)
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
        raise fail(str(exc), 2) from None
    except ModelNotFoundError as exc:
        raise fail(str(exc)) from None
    print_quickstart(result)
