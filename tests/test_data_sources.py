import gzip
import json

import pytest

from tunesmith.config import DataConfig, load_config
from tunesmith.data import check_rows, prepare_dataset
from tunesmith.data.sources import SourceError, read_source
from tunesmith.workspace import open_workspace


def test_jsonl_lines_and_bad_lines(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"a": 1}\n\n{oops\n[1]\n{"a": 2}\n', encoding="utf-8")
    result = read_source(str(path))
    assert [r.location for r in result.rows] == [f"{path}:1", f"{path}:5"]
    assert [(r.location, r.reason.split(":")[0]) for r in result.rejected] == [
        (f"{path}:3", "not valid JSON"),
        (f"{path}:4", "expected a JSON object per line"),
    ]


def test_gzip_json_list_and_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "a.jsonl.gz").write_bytes(gzip.compress(b'{"text": "x"}\n'))
    (tmp_path / "b.json").write_text(json.dumps({"data": [{"text": "y"}, 3]}), encoding="utf-8")
    pq.write_table(pa.Table.from_pylist([{"text": "z"}]), tmp_path / "c.parquet")
    result = read_source(str(tmp_path))
    assert [r.row["text"] for r in result.rows] == ["x", "y", "z"]
    assert result.rejected[0].location == f"{tmp_path / 'b.json'}#1"
    assert read_source(str(tmp_path / "*.json*")).files == [
        str(tmp_path / "a.jsonl.gz"),
        str(tmp_path / "b.json"),
    ]


def test_csv_delimiter_is_sniffed_and_bad_rows_are_located(tmp_path):
    path = tmp_path / "rows.csv"
    path.write_text('text;label\n"a, b";pos\nshort\n"multi\nline";neg\n', encoding="utf-8")
    result = read_source(str(path))
    assert [r.row for r in result.rows] == [
        {"text": "a, b", "label": "pos"},
        {"text": "multi\nline", "label": "neg"},
    ]
    assert result.rows[1].location == f"{path}:4"
    assert result.rejected[0].location == f"{path}:3" and "expected 2 columns" in result.rejected[0].reason
    assert any("delimiter sniffed as ';'" in note for note in result.notes)


def test_tsv_and_non_utf8_is_read_and_noted(tmp_path):
    path = tmp_path / "rows.tsv"
    path.write_bytes("text\tlabel\ncaf\xe9 cr\xe8me\tpos\n".encode("latin-1"))
    result = read_source(str(path))
    assert result.rows[0].row["text"] == "café crème"
    assert "not UTF-8" in result.notes[0]


def test_conll_and_plain_text(tmp_path):
    (tmp_path / "ner.txt").write_text(
        "-DOCSTART- -X- O O\n\nEU NNP B-NP B-ORG\nrejects VBZ B-VP O\n\nPeter NNP B-NP B-PER\n",
        encoding="utf-8",
    )
    result = read_source(str(tmp_path / "ner.txt"))
    assert [r.row for r in result.rows] == [
        {"tokens": ["EU", "rejects"], "tags": ["B-ORG", "O"]},
        {"tokens": ["Peter"], "tags": ["B-PER"]},
    ]
    (tmp_path / "doc.txt").write_text("First paragraph\nstill first.\n\n\nSecond.\n", encoding="utf-8")
    rows = read_source(str(tmp_path / "doc.txt")).rows
    assert [r.row["text"] for r in rows] == ["First paragraph\nstill first.", "Second."]
    assert rows[1].location.endswith("doc.txt:5")


def test_saved_hf_dataset_keeps_its_splits(tmp_path):
    from datasets import Dataset, DatasetDict

    DatasetDict(
        {
            "train": Dataset.from_list([{"text": "a", "label": "x"}]),
            "validation": Dataset.from_list([{"text": "b", "label": "y"}]),
        }
    ).save_to_disk(tmp_path / "hf")
    rows = read_source(str(tmp_path / "hf")).rows
    assert {r.row["text"]: r.row["split"] for r in rows} == {"a": "train", "b": "validation"}


def test_hub_id_offline_fails_with_what_to_do(monkeypatch):
    import datasets.config
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    # both libraries read these once, at import: after another test imported them, only this counts
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)
    with pytest.raises(SourceError, match="save_to_disk"):
        read_source("tunesmith-tests/no-such-dataset")


def test_missing_and_unsupported_sources(tmp_path):
    with pytest.raises(SourceError, match="no such file"):
        read_source(str(tmp_path / "nope.jsonl"))
    (tmp_path / "x.xlsx").write_text("x")
    with pytest.raises(SourceError, match=r"cannot read \.xlsx"):
        read_source(str(tmp_path / "x.xlsx"))


def test_inputs_that_used_to_crash_give_a_clear_error_or_a_rejected_row(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(SourceError, match="the file is empty"):
        read_source(str(empty))

    good = gzip.compress(b'{"text": "a", "label": "x"}\n' * 50)
    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(good[: len(good) // 2])
    with pytest.raises(SourceError, match=r"not a readable gzip file.*download it again"):
        read_source(str(cut))
    garbage = tmp_path / "garbage.csv.gz"
    garbage.write_bytes(b"\x1f\x8b\x08\x00not gzip at all")
    with pytest.raises(SourceError, match="not a readable gzip file"):
        read_source(str(garbage))

    big = tmp_path / "big.csv"
    huge = "word " * 60_000  # 300 KB in one field: over the csv module's default limit, within ours
    big.write_text(f'text,label\n"{huge}",pos\nshort,neg\n', encoding="utf-8")
    result = read_source(str(big))
    assert [len(r.row["text"]) for r in result.rows] == [len(huge), 5] and not result.rejected

    ranked = tmp_path / "ranked.jsonl"
    ranked.write_text(
        '{"prompt": "p", "responses": ["a", "b"], "ranks": ["first", "second"]}\n'
        '{"prompt": "q", "responses": ["a", "b"], "ranks": [1, "2"]}\n'
        '{"prompt": "r", "responses": ["a", "b"], "ranks": [2, 1]}\n'
    )
    prepared = check_rows(DataConfig(format="ranking"), str(ranked))
    reasons = [r.reason for r in prepared.rejected]
    assert len(reasons) == 2 and all("ranks: expected one distinct number per response" in r for r in reasons)

    mixed = tmp_path / "mixed.jsonl"
    tickets = [i if i % 2 else str(i) for i in range(10)]
    mixed.write_text(
        "".join(
            json.dumps({"text": f"row {i} text", "label": "a", "ticket": t}) + "\n"
            for i, t in enumerate(tickets)
        )
    )

    workspace = open_workspace(load_config(None, [f"workspace={tmp_path / 'ws'}"]))
    version, _ = prepare_dataset(workspace, DataConfig(path=str(mixed), split={"val": 0.0, "test": 0.0}))
    assert version.counts["train"] == 10  # an id that is a number here and a string there loses no row
