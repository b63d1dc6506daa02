"""Data: read rows in any common format, validate, clean, dedupe, split without leakage, version."""

from tunesmith.data.prepare import (
    DataError,
    Prepared,
    TargetModel,
    check_rows,
    get_dataset,
    list_datasets,
    load_split,
    prepare_dataset,
    split_rows,
)
from tunesmith.data.project import prepare_data, target_model, validate_data

__all__ = [
    "DataError",
    "Prepared",
    "TargetModel",
    "check_rows",
    "get_dataset",
    "list_datasets",
    "load_split",
    "prepare_data",
    "prepare_dataset",
    "split_rows",
    "target_model",
    "validate_data",
]
