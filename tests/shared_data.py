"""The real public datasets in ../shared/datasets beside the project; tests that need one skip without it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"


def shared_dataset(*parts: str) -> Path:
    """The path of a file or folder under ../shared/datasets, or a skip that says it is absent."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent (real datasets live in ../shared/datasets beside the project)")
    return path


def sst2_project(tmp_path: Path, sample: int, split: dict[str, float], **sections: dict[str, Any]) -> Path:
    """A classification project on SST-2's train file (a `sample` of it, split as `split`) in `tmp_path`;
    `sections` (model, train, sweep...) are the config's other sections."""
    path = shared_dataset("sst2", "train.tsv")
    config = {
        "project": "sentiment",
        "data": {"path": str(path), "columns": {"text": "sentence"}, "sample": sample, "split": split},
        **sections,
    }
    config_path = tmp_path / "tunesmith.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return config_path
