"""`tunesmith ui`: the web app over the same store."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tunesmith.cli.common import app, load_project, out
from tunesmith.cli.options import ConfigOpt, SetOpt
from tunesmith.config import CONFIG_FILENAME


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

    cfg = load_project(config, set_)
    bind, at = host or cfg.ui.host, cfg.ui.port if port is None else port
    where = f"http://{bind}:{at}" if at else f"a free port of {bind} (uvicorn names it below)"
    out.print(f"tunesmith ui on {where} (Ctrl-C stops it)", highlight=False)
    run_ui(cfg, config or Path(CONFIG_FILENAME), host=host, port=port)
