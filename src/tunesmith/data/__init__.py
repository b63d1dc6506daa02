"""Data: read rows in any common format, validate, clean, dedupe, split without leakage, version."""

from tunesmith.data.prepare import (
    DataError,
    Prepared,
    check_rows,
    get_dataset,
    list_datasets,
    load_split,
    prepare_dataset,
    split_rows,
)

__all__ = [
    "DataError",
    "Prepared",
    "check_rows",
    "get_dataset",
    "list_datasets",
    "load_split",
    "prepare_dataset",
    "split_rows",
]
