"""Data: read rows in common formats, validate them, split without leakage, store versions."""

from tunesmith.data.prepare import (
    DataError,
    build_splits,
    get_dataset,
    list_datasets,
    load_split,
    prepare_dataset,
)

__all__ = ["DataError", "build_splits", "get_dataset", "list_datasets", "load_split", "prepare_dataset"]
