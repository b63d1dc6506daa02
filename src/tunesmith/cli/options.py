"""The options many commands take, declared once so their names and help read the same everywhere."""

from pathlib import Path
from typing import Annotated

import typer

from tunesmith.config import CONFIG_FILENAME

ConfigArg = Annotated[Path | None, typer.Argument(help=f"Project config (default: ./{CONFIG_FILENAME}).")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", help="Override a field: section.field=value.")]
ConfigOpt = Annotated[Path | None, typer.Option(help="Project config.")]
VersionArg = Annotated[str, typer.Argument(help="Version name or id.")]
