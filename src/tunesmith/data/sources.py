"""Reading rows from wherever they are: JSONL, JSON, CSV/TSV, Parquet, CoNLL, gzip, folders, globs,
saved Hugging Face datasets and hub ids.

Every row keeps where it came from (`file:line`, or `file#index` where a format has no lines), so
each later problem can be reported at its place, and rows that cannot be read are returned as
rejected with the reason instead of being dropped.
"""

from __future__ import annotations

import csv
import glob
import gzip
import io
import json
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunesmith.errors import InputError

SUFFIXES = (".jsonl", ".json", ".csv", ".tsv", ".parquet", ".conll", ".iob", ".bio", ".txt")
HF_MARKERS = ("dataset_info.json", "dataset_dict.json", "state.json")


class SourceError(InputError):
    """A source that cannot be read at all, with what to do about it."""


@dataclass
class Rejected:
    """A row left out, where it was, and why."""

    location: str
    reason: str
    row: Any
    step: str = "read"

    def to_json(self) -> dict[str, Any]:
        return {"location": self.location, "step": self.step, "reason": self.reason, "row": self.row}


@dataclass
class SourceRow:
    """One raw row and its place in the source."""

    location: str
    row: dict[str, Any]


@dataclass
class ReadResult:
    """The rows read from a source, the rows that could not be read, and notes on how it was read."""

    rows: list[SourceRow] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def extend(self, other: ReadResult) -> None:
        self.rows.extend(other.rows)
        self.rejected.extend(other.rejected)
        self.files.extend(other.files)
        self.notes.extend(other.notes)


def read_source(ref: str, base_dir: Path | None = None) -> ReadResult:
    """Read every row of `ref`: a file, a folder, a glob, a saved HF dataset folder, or a hub id.

    Raises:
        SourceError: when nothing can be read from `ref`, naming what was expected.
    """
    path = Path(ref).expanduser()
    if base_dir is not None and not path.is_absolute():
        path = base_dir / path
    if any(ch in ref for ch in "*?["):
        matches = sorted(Path(p) for p in glob.glob(str(path), recursive=True))  # noqa: PTH207 - absolute patterns
        files = [m for m in matches if m.is_file() and _suffix(m) in SUFFIXES]
        if not files:
            raise SourceError(f"{ref}: the pattern matches no {', '.join(SUFFIXES)} file")
        return _read_files(files)
    if path.is_dir():
        if any((path / marker).exists() for marker in HF_MARKERS):
            return read_hf_saved(path)
        files = sorted(p for p in path.iterdir() if p.is_file() and _suffix(p) in SUFFIXES)
        if not files:
            raise SourceError(
                f"{path}: the folder holds no {', '.join(SUFFIXES)} file and is not a saved dataset"
            )
        return _read_files(files)
    if path.is_file():
        return read_file(path)
    if ref.count("/") == 1 and not ref.startswith((".", "/", "~")) and not path.suffix:
        return read_hub(ref)
    raise SourceError(f"{path}: no such file or folder (data.path)")


def _read_files(files: list[Path]) -> ReadResult:
    result = ReadResult()
    for file in files:
        result.extend(read_file(file))
    return result


def _suffix(path: Path) -> str:
    suffixes = path.suffixes
    if suffixes and suffixes[-1] == ".gz":
        return suffixes[-2] if len(suffixes) > 1 else ""
    return path.suffix


def read_file(path: Path) -> ReadResult:
    """Read one file by its suffix (`.gz` is looked through).

    Raises:
        SourceError: for a suffix no reader handles.
    """
    suffix = _suffix(path)
    readers = {
        ".jsonl": _read_jsonl,
        ".json": _read_json,
        ".csv": _read_delimited,
        ".tsv": _read_delimited,
        ".parquet": _read_parquet,
        ".conll": _read_conll,
        ".iob": _read_conll,
        ".bio": _read_conll,
        ".txt": _read_txt,
    }
    if suffix not in readers:
        raise SourceError(
            f"{path}: cannot read {suffix or 'files without a suffix'}; "
            f"supported: {', '.join(SUFFIXES)} (optionally .gz)"
        )
    if path.stat().st_size == 0:
        raise SourceError(f"{path}: the file is empty")
    result = readers[suffix](path)
    result.files.insert(0, str(path))
    return result


def _read_bytes(path: Path) -> bytes:
    """The file's bytes, unpacked when it is gzip.

    Raises:
        SourceError: a gzip file that is corrupt or cut short.
    """
    data = path.read_bytes()
    if path.suffix != ".gz":
        return data
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as exc:
        raise SourceError(
            f"{path}: not a readable gzip file ({exc}); it may be cut short: download it again, or "
            "unpack it yourself and point data.path at the result"
        ) from None


def decode_text(path: Path, data: bytes, result: ReadResult) -> str:
    """UTF-8 (with or without BOM); otherwise the most likely encoding, noted in the result."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        from charset_normalizer import from_bytes

        encoding = _likely_encoding(from_bytes(data))
        line = data[: exc.start].count(b"\n") + 1
        result.notes.append(f"{path}: not UTF-8 (first bad byte on line {line}); read as {encoding}")
        return data.decode(encoding, errors="replace")


# Among encodings that explain the bytes equally well, the ones most common in Western text first.
_PREFERRED = ("cp1252", "latin_1", "mac_roman", "cp1250", "utf_16")


def _likely_encoding(matches: Any) -> str:
    ranked = list(matches)
    if not ranked:
        return "latin_1"
    best = ranked[0]
    ties = [m.encoding for m in ranked if (m.chaos, m.coherence) == (best.chaos, best.coherence)]
    return next((e for e in _PREFERRED if e in ties), best.encoding)


def _lines(text: str) -> list[str]:
    """The file's lines as an editor numbers them: split at \n only (a JSON string may hold U+2028,
    U+0085 or \x1e, which `str.splitlines` would break a row at), without the \r of CRLF."""
    return [line.removesuffix("\r") for line in text.split("\n")]


def _read_jsonl(path: Path) -> ReadResult:
    result = ReadResult()
    text = decode_text(path, _read_bytes(path), result)
    for number, line in enumerate(_lines(text), start=1):
        if not line.strip(" \t"):  # JSON's own blanks; a line of other control characters is rejected
            continue
        location = f"{path}:{number}"
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            result.rejected.append(
                Rejected(location, f"not valid JSON: {exc.msg} at column {exc.colno}", line)
            )
            continue
        if not isinstance(value, dict):
            result.rejected.append(Rejected(location, "expected a JSON object per line", value))
            continue
        result.rows.append(SourceRow(location, value))
    return result


def _read_json(path: Path) -> ReadResult:
    result = ReadResult()
    text = decode_text(path, _read_bytes(path), result)
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SourceError(
            f"{path}:{exc.lineno}: not valid JSON: {exc.msg} (a .json file holds one list of "
            "objects; use .jsonl for one object per line)"
        ) from None
    if isinstance(value, dict):
        lists = [v for v in value.values() if isinstance(v, list)]
        if len(lists) != 1:
            raise SourceError(f"{path}: expected a list of objects, or an object holding exactly one list")
        value = lists[0]
    if not isinstance(value, list):
        raise SourceError(f"{path}: expected a list of objects")
    for index, item in enumerate(value):
        location = f"{path}#{index}"
        if isinstance(item, dict):
            result.rows.append(SourceRow(location, item))
        else:
            result.rejected.append(Rejected(location, "expected an object", item))
    return result


# A CSV field may hold a long document (the csv module's default stops at 128 KiB); beyond this a
# row is rejected with its line, not the whole file.
CSV_FIELD_LIMIT = 16 * 1024 * 1024
csv.field_size_limit(CSV_FIELD_LIMIT)


def _read_delimited(path: Path) -> ReadResult:
    result = ReadResult()
    text = decode_text(path, _read_bytes(path), result)
    default = "\t" if _suffix(path) == ".tsv" else ","
    delimiter = _sniff_delimiter(text, default)
    if delimiter != default:
        result.notes.append(f"{path}: delimiter sniffed as {delimiter!r}")
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        header = next(reader)
    except StopIteration:
        return result
    header = [h.strip() for h in header]
    line = reader.line_num
    while True:
        try:
            values = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:  # a field over CSV_FIELD_LIMIT, or a broken quote
            start, line = line + 1, reader.line_num
            result.rejected.append(Rejected(f"{path}:{start}", f"unreadable CSV row: {exc}", None))
            continue
        start, line = line + 1, reader.line_num
        location = f"{path}:{start}"
        if not any(v.strip() for v in values):
            continue
        if len(values) != len(header):
            result.rejected.append(
                Rejected(
                    location,
                    f"expected {len(header)} columns ({', '.join(header)}), got {len(values)}",
                    values,
                )
            )
            continue
        result.rows.append(SourceRow(location, dict(zip(header, values, strict=True))))
    return result


def _sniff_delimiter(text: str, default: str) -> str:
    """The delimiter of a headed file: the candidate the header line uses most (names rarely hold
    one), else csv.Sniffer's guess on the first 64 KiB, else the suffix's default."""
    header = text.split("\n", 1)[0]
    counts = {d: header.count(d) for d in (",", ";", "\t", "|")}
    best = max(counts, key=lambda d: (counts[d], d == default))
    if counts[best]:
        return best
    try:
        return csv.Sniffer().sniff(text[:65536], delimiters=",;\t|").delimiter
    except csv.Error:
        return default


def _read_parquet(path: Path) -> ReadResult:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(io.BytesIO(_read_bytes(path)) if path.suffix == ".gz" else path)
    except (pa.ArrowException, OSError) as exc:  # empty, truncated or not Parquet at all
        raise SourceError(
            f"{path}: not a readable Parquet file ({exc}); write it again, or give the rows as JSON Lines"
        ) from None
    return ReadResult(rows=[SourceRow(f"{path}#{i}", row) for i, row in enumerate(table.to_pylist())])


def _read_conll(path: Path) -> ReadResult:
    """CoNLL columns: one token per line, the first column the token and the last its tag;
    sentences end at a blank line; `-DOCSTART-` lines are skipped."""
    result = ReadResult()
    text = decode_text(path, _read_bytes(path), result)
    tokens: list[str] = []
    tags: list[str] = []
    start = 0
    for number, line in enumerate([*_lines(text), ""], start=1):
        parts = line.split()
        if parts and parts[0] == "-DOCSTART-":
            continue
        if not parts:
            if tokens:
                result.rows.append(SourceRow(f"{path}:{start}", {"tokens": tokens, "tags": tags}))
            tokens, tags = [], []
            continue
        if len(parts) < 2:
            result.rejected.append(Rejected(f"{path}:{number}", "expected a token and a tag column", line))
            continue
        if not tokens:
            start = number
        tokens.append(parts[0])
        tags.append(parts[-1])
    return result


_TAG = re.compile(r"^(O|[BIESLU]-\S+)$")


def _read_txt(path: Path) -> ReadResult:
    """Plain text: CoNLL columns when the lines look like `token ... TAG`, else one row per paragraph."""
    probe = ReadResult()
    text = decode_text(path, _read_bytes(path), probe)
    lines = [
        line.split() for line in _lines(text)[:400] if line.strip() and not line.startswith("-DOCSTART-")
    ]
    tagged = sum(1 for parts in lines if len(parts) >= 2 and _TAG.match(parts[-1]))
    if lines and tagged >= 0.9 * len(lines):
        result = _read_conll(path)
        result.notes[:0] = probe.notes
        result.notes.append(f"{path}: read as CoNLL columns (token first, tag last)")
        return result
    result = ReadResult(notes=probe.notes)
    start, paragraph = 1, list[str]()
    for number, line in enumerate([*_lines(text), ""], start=1):
        if line.strip():
            if not paragraph:
                start = number
            paragraph.append(line)
        elif paragraph:
            result.rows.append(SourceRow(f"{path}:{start}", {"text": "\n".join(paragraph)}))
            paragraph = []
    return result


def read_hf_saved(path: Path) -> ReadResult:
    """A folder written by `datasets`' `save_to_disk`; a DatasetDict's split names become `split`."""
    from datasets import Dataset, DatasetDict, load_from_disk

    loaded = load_from_disk(str(path))
    result = ReadResult(files=[str(path)])
    parts: dict[str | None, Dataset] = dict(loaded) if isinstance(loaded, DatasetDict) else {None: loaded}
    if len(parts) == 1:  # one split: nothing to keep, the rows are split here
        parts = {None: next(iter(parts.values()))}
    for split, dataset in parts.items():
        for index, row in enumerate(_iter_rows(dataset)):
            location = f"{path}[{split}]#{index}" if split else f"{path}#{index}"
            result.rows.append(
                SourceRow(location, {**row, "split": split} if split and "split" not in row else row)
            )
    return result


def read_hub(dataset_id: str) -> ReadResult:
    """A dataset on the Hugging Face hub, every split of it.

    Raises:
        SourceError: when it cannot be downloaded (offline, private, or no such dataset).
    """
    from datasets import load_dataset

    try:
        loaded = load_dataset(dataset_id)
    except Exception as exc:  # datasets raises many kinds: connection, not found, offline mode
        raise SourceError(
            f"{dataset_id}: could not load it from the Hugging Face hub ({exc.__class__.__name__}: "
            f"{str(exc)[:200]}). Connect to the internet, or on a connected machine run "
            f"`datasets.load_dataset({dataset_id!r}).save_to_disk(FOLDER)` and set data.path to that folder."
        ) from None
    result = ReadResult(files=[f"hf://{dataset_id}"])
    keep_split = len(loaded) > 1  # the hub's own splits are kept; a single one is split here
    for split, dataset in loaded.items():
        for index, row in enumerate(_iter_rows(dataset)):
            location = f"hf://{dataset_id}[{split}]#{index}"
            result.rows.append(SourceRow(location, {**row, "split": split} if keep_split else row))
    return result


def _iter_rows(dataset: Any) -> Iterator[dict[str, Any]]:
    yield from dataset
