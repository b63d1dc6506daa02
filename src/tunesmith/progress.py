"""Progress bars shared by every stage (rich, to stderr so piped output stays clean)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

console = Console(stderr=True)


def make_progress(*extra: TextColumn) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        *extra,
        console=console,
        transient=False,
    )


@contextmanager
def progress_bar(label: str, total: int, show: bool = True) -> Iterator[Callable[[int], None]]:
    """Show a bar for `total` units of work; yields a function that advances it (a no-op if not `show`)."""
    if not show:
        yield lambda n: None
        return
    with make_progress() as progress:
        task = progress.add_task(label, total=total)
        yield lambda n: progress.advance(task, n)
