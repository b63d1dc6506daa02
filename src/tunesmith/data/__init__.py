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
from tunesmith.data.project import prepare_data, tokenizer_and_context, validate_data

__all__ = [
    "DataError",
    "Prepared",
    "check_rows",
    "get_dataset",
    "list_datasets",
    "load_split",
    "prepare_data",
    "prepare_dataset",
    "split_rows",
    "tokenizer_and_context",
    "validate_data",
]
