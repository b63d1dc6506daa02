"""Property-based tests (Hypothesis) of what reads user input: every file reader, format detection,
row conversion and the config loader. Whatever the input, each either gives a result or raises its
own error with a message; nothing else escapes, and no row is lost without a reason."""

from __future__ import annotations

import gzip
import json
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tunesmith.config import ConfigError, load_config
from tunesmith.data.formats import FORMATS, RowError, convert, detect_format
from tunesmith.data.sources import SUFFIXES, SourceError, read_file

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)
FIELDS = ["messages", "conversations", "prompt", "completion", "instruction", "input", "output", "text",
          "label", "chosen", "rejected", "tokens", "tags", "responses", "ranking", "role", "content", "from",
          "value"]  # fmt: skip
rows = st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=8), json_values, max_size=6)


def _lines_of(data: bytes) -> list[bytes]:
    return [line for line in data.split(b"\n") if line.strip(b" \t\r")]


@SETTINGS
@given(data=st.binary(max_size=600) | st.text(max_size=600).map(str.encode), suffix=st.sampled_from(SUFFIXES))
def test_every_reader_reads_or_refuses_any_bytes(data: bytes, suffix: str) -> None:
    assert_read_or_refused(data, f"input{suffix}")


def assert_read_or_refused(data: bytes, name: str) -> None:
    """The bytes as a file called `name` are read into rows and rejections with reasons, or refused
    with a SourceError that names the file."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / name
        path.write_bytes(data)
        try:
            result = read_file(path)
        except SourceError as exc:
            assert str(path) in str(exc)
            return
    assert all(r.reason and r.location for r in result.rejected)
    assert all(isinstance(r.row, dict) for r in result.rows)


@SETTINGS
@given(
    data=st.binary(max_size=400),
    suffix=st.sampled_from(SUFFIXES),
    cut=st.floats(0.0, 1.0),
    flip=st.integers(-1, 4000),
)
def test_a_damaged_gzip_file_is_refused_with_its_name(
    data: bytes, suffix: str, cut: float, flip: int
) -> None:
    import gzip

    packed = gzip.compress(data)
    packed = packed[: max(1, int(len(packed) * cut))]
    if 0 <= flip < len(packed):
        packed = packed[:flip] + bytes([packed[flip] ^ 0x5A]) + packed[flip + 1 :]
    assert_read_or_refused(packed, f"input{suffix}.gz")


@pytest.mark.slow
def test_a_short_fuzz_of_the_readers_finds_no_crash() -> None:
    """1,500 atheris inputs (seeded from tests/data) through every reader, detection and
    conversion: any exception but SourceError / RowError fails it. `make fuzz` runs a longer one."""
    import resource
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    # Linux keeps a process's peak RSS across fork and exec, so the fuzzer's count (getrusage) starts
    # at this worker's own peak: 6.6 GB after a bundled-model test, where the fuzzing takes ~200 MB.
    inherited_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    done = subprocess.run(
        [
            sys.executable,
            str(root / "fuzz" / "fuzz_data.py"),
            "-runs=1500",
            "-max_len=1024",
            f"-rss_limit_mb={inherited_mb + 2048}",  # libFuzzer's default 2 GiB, over what it inherits
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "1,500 inputs" in done.stderr or "no crash" in done.stderr, done.stderr[-2000:]


@SETTINGS
@given(
    lines=st.lists(
        json_values.map(json.dumps) | st.text(max_size=60).filter(lambda t: "\n" not in t), max_size=12
    )
)
def test_a_jsonl_file_accounts_for_every_line(lines: list[str]) -> None:
    """Each non-blank line is a row or a rejected row with file:line and a reason; gzip reads the same."""
    text = "\n".join(lines)
    with tempfile.TemporaryDirectory() as folder:
        plain, packed = Path(folder) / "rows.jsonl", Path(folder) / "rows.jsonl.gz"
        plain.write_text(text, encoding="utf-8")
        packed.write_bytes(gzip.compress(text.encode()))
        try:
            result = read_file(plain)
        except SourceError:
            return
        again = read_file(packed)
    assert len(result.rows) + len(result.rejected) == len(_lines_of(text.encode()))
    assert [r.row for r in result.rows] == [r.row for r in again.rows]
    for rejected in result.rejected:
        assert rejected.location.startswith(str(plain) + ":")


@SETTINGS
@given(sample=st.lists(rows, min_size=1, max_size=8))
def test_format_detection_names_a_format_or_says_what_it_saw(sample: list[dict[str, Any]]) -> None:
    try:
        detection = detect_format(sample)
    except RowError as exc:
        assert "fields seen" in str(exc)
        return
    assert detection.format in FORMATS and 0 < detection.confidence <= 1


@SETTINGS
@given(row=rows, fmt=st.sampled_from(sorted(FORMATS)))
def test_converting_any_row_in_any_format_gives_a_row_or_a_row_error(row: dict[str, Any], fmt: str) -> None:
    try:
        converted = convert(row, fmt)
    except RowError as exc:
        assert str(exc)
        return
    assert isinstance(converted, dict)


yaml_scalars = (
    st.none() | st.booleans() | st.integers(-5, 10**6) | st.floats(allow_nan=False) | st.text(max_size=20)
)
SECTIONS = [
    "project",
    "data",
    "model",
    "train",
    "eval",
    "registry",
    "serve",
    "monitor",
    "ui",
    "sweep",
    "synth",
]
KEYS = ["path", "id", "method", "num_train_epochs", "learning_rate", "lora", "r", "gates", "port", "routes",
        "split", "val", "test", "metrics", "aliases", "host", "page_size", "format", "columns"]  # fmt: skip
section_values = st.dictionaries(
    st.sampled_from(KEYS) | st.text(max_size=6), yaml_scalars | st.lists(yaml_scalars, max_size=3), max_size=4
)
configs = st.dictionaries(
    st.sampled_from(SECTIONS) | st.text(max_size=6), yaml_scalars | section_values, max_size=5
)


@SETTINGS
@given(document=configs.map(json.dumps) | st.text(max_size=300))
def test_any_config_file_loads_or_lists_its_problems(document: str) -> None:
    """JSON is YAML: structured configs reach validation; random text exercises the YAML parser."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "tunesmith.yaml"
        path.write_text(document, encoding="utf-8")
        try:
            config = load_config(path)
        except ConfigError as exc:
            assert str(exc).startswith(str(path))
            return
    assert config.project


@pytest.mark.parametrize(
    "override", ["train", "=1", "train.lr=", "nope.x=1", "train.lr=[1", "train.lora.r=abc"]
)
def test_malformed_overrides_are_refused_with_the_field(override: str, tmp_path: Path) -> None:
    (tmp_path / "tunesmith.yaml").write_text("project: p\n", encoding="utf-8")
    with pytest.raises(ConfigError) as refused:
        load_config(tmp_path / "tunesmith.yaml", [override])
    assert "problem" in str(refused.value)
