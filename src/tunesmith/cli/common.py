"""What every command module shares: the app, the consoles, the config options, tables and failures."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from typer.core import TyperGroup

from tunesmith.config import ConfigError, ProjectConfig, load_config
from tunesmith.errors import InputError

if TYPE_CHECKING:
    from tunesmith.store import ModelVersion
    from tunesmith.workspace import Workspace

out = Console()
err = Console(stderr=True)


class _Commands(TyperGroup):
    """The root command group: bad input (`InputError`), from whichever command and stage it comes,
    is printed with where and what to do, and exits 2; never a traceback."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except InputError as exc:
            raise fail(str(exc), 2) from None


app = typer.Typer(
    cls=_Commands,
    help="tunesmith: fine-tune an open LLM on your data, prove it got better, ship it, watch it.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
)


def load_project(path: Path | None, overrides: list[str] | None) -> ProjectConfig:
    """The project config, or exit 2 with every problem in it named."""
    try:
        return load_config(path, overrides)
    except ConfigError as exc:
        err.print("[red]error:[/red]", str(exc), soft_wrap=True, highlight=False)
        raise typer.Exit(2) from None


def project_workspace(path: Path | None, overrides: list[str] | None = None) -> Workspace:
    """The project's workspace (store, artifacts), or exit 2 naming what is wrong with its config."""
    from tunesmith.workspace import open_workspace

    return open_workspace(load_project(path, overrides))


def project_version(
    path: Path | None, overrides: list[str] | None, ref: str
) -> tuple[ProjectConfig, Workspace, ModelVersion]:
    """The project's config and workspace, and its version `ref` (name, id or family@alias); exit 1
    naming the versions there are when there is none."""
    from tunesmith.registry import RegistryError, get_version
    from tunesmith.workspace import open_workspace

    config = load_project(path, overrides)
    workspace = open_workspace(config)
    with reported(RegistryError):
        return config, workspace, get_version(workspace, ref)


def new_table(*columns: str) -> Table:
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


def print_table(table: Table, empty: str) -> None:
    """The table, or `empty` (what is missing and how to make one) when it has no rows."""
    out.print(table if table.row_count else empty, highlight=False)


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print the error and return the exit to raise (`raise fail(...) from None`)."""
    err.print("[red]error:[/red]", escape(message), soft_wrap=True, highlight=False)
    return typer.Exit(code)


@contextmanager
def reported(*errors: type[Exception]) -> Iterator[None]:
    """A stage's own errors as a clear message, never a traceback: `with reported(RegistryError): ...`.

    The errors named exit 1 (a refusal by the rules, a missing version, a failed run). Bad input
    (`InputError`: a data file, a row, a prompt file) passes on to the root group, which exits 2.
    """
    try:
        yield
    except InputError:
        raise
    except errors as exc:
        raise fail(str(exc)) from None
