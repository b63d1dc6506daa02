"""The results table every benchmark prints: text columns on the left, figures on the right."""

from __future__ import annotations

from collections.abc import Collection, Sequence

from rich.table import Table


def results_table(title: str, columns: Sequence[str], text: Collection[str] = ()) -> Table:
    """A table titled `title`; the first column and those in `text` are left-aligned, the rest right."""
    table = Table(title=title)
    for i, column in enumerate(columns):
        table.add_column(column, justify="left" if i == 0 or column in text else "right")
    return table
