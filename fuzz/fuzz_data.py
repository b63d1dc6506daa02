"""Coverage-guided fuzzing (atheris, libFuzzer) of what reads user data: every file reader by suffix
(plain, gzip, and gzip cut short or with a flipped byte), format detection and row conversion.

    .venv/bin/python fuzz/fuzz_data.py [-runs=20000] [-max_len=2048] [corpus folder]

A crash is any exception other than the readers' own `SourceError` / `RowError` (which carry a
message for the user): libFuzzer then stops and writes the input to `crash-…`. At the end the
script prints the inputs tried and the distinct outcomes. The seed corpus is `tests/data/`.
"""

from __future__ import annotations

import json
import sys
import tempfile
from collections import Counter
from pathlib import Path

import atheris

with atheris.instrument_imports():
    from tunesmith.data.formats import FORMATS, RowError, convert, detect_format
    from tunesmith.data.sources import SUFFIXES, SourceError, read_file

FOLDER = Path(tempfile.mkdtemp(prefix="tunesmith-fuzz-"))
FORMAT_NAMES = sorted(FORMATS)
OUTCOMES: Counter[str] = Counter()
RUNS = [0]


def one_input(data: bytes) -> None:
    OUTCOMES["inputs"] += 1
    _one(data)  # an exception here is a crash: libFuzzer stops and keeps the input
    if OUTCOMES["inputs"] == RUNS[0]:
        _report()  # libFuzzer ends the process itself after the last run, past any Python exit hook


def _one(data: bytes) -> None:
    provider = atheris.FuzzedDataProvider(data)
    suffix = SUFFIXES[provider.ConsumeIntInRange(0, len(SUFFIXES) - 1)]
    packed = provider.ConsumeBool()
    damage = provider.ConsumeIntInRange(0, 2)  # packed: 0 whole, 1 cut short, 2 one byte flipped
    where = provider.ConsumeIntInRange(0, 1 << 16)
    body = provider.ConsumeBytes(provider.remaining_bytes())
    path = FOLDER / f"input{suffix}{'.gz' if packed else ''}"
    if packed:
        import gzip

        body = gzip.compress(body)
        if damage == 1:
            body = body[: where % len(body)]
        elif damage == 2:
            spot = where % len(body)
            body = body[:spot] + bytes([body[spot] ^ 0x5A]) + body[spot + 1 :]
    path.write_bytes(body)
    try:
        result = read_file(path)
    except SourceError:
        OUTCOMES["refused (SourceError)"] += 1
        return
    OUTCOMES[f"read {suffix}"] += 1
    for rejected in result.rejected:
        assert rejected.reason and rejected.location, rejected
    rows = [r.row for r in result.rows][:50]
    if not rows:
        return
    try:
        detection = detect_format(rows)
    except RowError:
        OUTCOMES["no format (RowError)"] += 1
        return
    for fmt in {detection.format, FORMAT_NAMES[len(body) % len(FORMAT_NAMES)]}:
        for row in rows:
            try:
                json.dumps(convert(row, fmt), default=str)
            except RowError:
                OUTCOMES["row refused (RowError)"] += 1


def main() -> None:
    argv = list(sys.argv)
    if not any(a.startswith("-runs=") for a in argv):
        argv.append("-runs=20000")
    RUNS[0] = int(next(a for a in argv if a.startswith("-runs=")).split("=")[1])
    root = Path(__file__).resolve().parents[1]
    if not any(not a.startswith("-") for a in argv[1:]):  # no corpus given: seed one from our own data
        corpus = FOLDER / "corpus"
        corpus.mkdir()
        seeds = [*(root / "tests" / "data").rglob("*"), *(root / "src" / "tunesmith" / "demo").glob("*")]
        for n, file in enumerate(p for p in seeds if p.is_file()):
            kind = SUFFIXES.index(file.suffix) if file.suffix in SUFFIXES else 0
            (corpus / f"seed-{n}").write_bytes(bytes([kind, 0]) + file.read_bytes()[:4000])
        argv.append(str(corpus))
    atheris.Setup(argv, one_input)
    atheris.Fuzz()


def _report() -> None:
    print(f"\n{OUTCOMES['inputs']:,} inputs (seeds included), no crash; their outcomes:", file=sys.stderr)
    for outcome, count in OUTCOMES.most_common()[1:]:
        print(f"  {outcome}: {count:,}", file=sys.stderr)


if __name__ == "__main__":
    main()
