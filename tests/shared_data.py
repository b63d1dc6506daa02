"""The real public datasets in ../shared/datasets beside the project; tests that need one skip without it."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"


def shared_dataset(*parts: str) -> Path:
    """The path of a file or folder under ../shared/datasets, or a skip that says it is absent."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent (real datasets live in ../shared/datasets beside the project)")
    return path
