"""The `tunesmith` command: one module per command group, each parsing, calling one stage function
and printing. Importing a module registers its commands on the app."""

from __future__ import annotations

import warnings

# isort: off
# Importing a command module registers its commands, in the order `tunesmith --help` lists them.
from tunesmith.cli import project, data, train, eval, registry, artifacts, serve, sweep, monitor, feedback, ui  # noqa: F401

# isort: on
from tunesmith.cli.common import app

__all__ = ["app", "main"]


def main() -> None:
    # Raised inside TRL/PEFT on every run, about their own calls; nothing a user can act on.
    warnings.filterwarnings(
        "ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning
    )
    app()
