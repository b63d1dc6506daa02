import json

import pytest

from tunesmith.config import DataConfig, load_config
from tunesmith.data import DataError, build_splits, load_split, prepare_dataset
from tunesmith.data.formats import RowError, detect_format, to_chat
from tunesmith.workspace import open_workspace


def write_jsonl(path, rows):
    path.write_text(
        "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8"
    )
    return path


def chat(q, a, **meta):
    return {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}], **meta}


@pytest.mark.parametrize(
    ("row", "fmt"),
    [
        (chat("q", "a"), "chat"),
        ({"prompt": "q", "completion": "a"}, "prompt_completion"),
        ({"instruction": "q", "input": "", "output": "a"}, "alpaca"),
    ],
)
def test_formats_are_detected_and_converted(row, fmt):
    assert detect_format(row) == fmt
    record = to_chat(row, fmt, system_prompt="sys")
    assert [m["role"] for m in record["messages"]] == ["system", "user", "assistant"]
    assert record["messages"][-1]["content"] == "a"


def test_alpaca_input_is_appended_to_the_instruction():
    record = to_chat({"instruction": "Translate", "input": "bonjour", "output": "hello"}, "alpaca")
    assert record["messages"][0]["content"] == "Translate\n\nbonjour"


def test_unknown_and_broken_rows_name_the_field():
    with pytest.raises(RowError, match="unknown row format"):
        detect_format({"text": "x"})
    with pytest.raises(RowError, match=r"messages\[1\]\.role"):
        to_chat({"messages": [{"role": "user", "content": "q"}, {"role": "bot", "content": "a"}]}, "chat")
    with pytest.raises(RowError, match="last message must be the assistant"):
        to_chat({"messages": [{"role": "user", "content": "q"}]}, "chat")


def test_bad_rows_are_rejected_with_file_and_line_not_dropped(tmp_path):
    path = write_jsonl(
        tmp_path / "rows.jsonl",
        [
            chat("q1", "a1"),
            "{not json",
            chat("q2", "a2"),
            {"text": "raw"},
            chat("q1", "a1"),
            [1, 2],
        ],
    )
    prepared = build_splits(path, DataConfig(split={"val": 0.0, "test": 0.0}))
    assert len(prepared.splits["train"]) == 2
    reasons = {r.location: r.reason for r in prepared.rejected}
    assert set(reasons) == {f"{path}:2", f"{path}:4", f"{path}:5", f"{path}:6"}
    assert "not valid JSON" in reasons[f"{path}:2"]
    assert "unknown row format" in reasons[f"{path}:4"]
    assert reasons[f"{path}:5"] == f"exact duplicate of {path}:1"


def test_group_split_keeps_groups_together_and_is_seeded(tmp_path):
    rows = [chat(f"q{g}-{i}", f"a{g}", group=f"g{g}") for g in range(20) for i in range(3)]
    path = write_jsonl(tmp_path / "rows.jsonl", rows)
    config = DataConfig(split={"val": 0.1, "test": 0.2, "seed": 1})
    prepared = build_splits(path, config)
    group_split = {}
    for split, records in prepared.splits.items():
        for record in records:
            assert group_split.setdefault(record["group"], split) == split
    assert {len(v) for v in prepared.splits.values()} == {3 * 14, 3 * 2, 3 * 4}
    assert build_splits(path, config).splits == prepared.splits


def test_preassigned_split_is_kept_and_leaked_prompts_are_rejected(tmp_path):
    path = write_jsonl(
        tmp_path / "rows.jsonl",
        [
            chat("How old?", "5", split="train"),
            chat("how  OLD?", "five", split="test"),
            chat("Where?", "here", split="test"),
            chat("Who?", "me", split="nowhere"),
        ],
    )
    prepared = build_splits(path, DataConfig())
    assert [r["messages"][0]["content"] for r in prepared.splits["test"]] == ["Where?"]
    reasons = [r.reason for r in prepared.rejected]
    assert any(reason.startswith("leakage") for reason in reasons)
    assert any("expected train, val or test" in reason for reason in reasons)


def test_no_training_rows_is_a_clear_error(tmp_path):
    path = write_jsonl(tmp_path / "rows.jsonl", ["oops"])
    with pytest.raises(DataError, match=r"(?s)no usable training rows.*rows.jsonl:1: not valid JSON"):
        build_splits(path, DataConfig())
    with pytest.raises(DataError, match="no such file"):
        build_splits(tmp_path / "missing.jsonl", DataConfig())


def test_dataset_versions_are_content_hashed_and_immutable(tmp_path):
    workspace = open_workspace(load_config(None, [f"workspace={tmp_path / 'ws'}"]))
    path = write_jsonl(tmp_path / "rows.jsonl", [chat(f"q{i}", f"a{i}") for i in range(10)] + ["bad"])
    config = DataConfig(split={"val": 0.1, "test": 0.1})
    first = prepare_dataset(workspace, path, config)
    again = prepare_dataset(workspace, path, config)
    assert first.id == again.id and first.id.startswith("ds-")
    assert first.counts == {"train": 8, "val": 1, "test": 1, "rejected": 1}
    assert len(load_split(first, "train")) == 8
    rejected = [
        json.loads(x)
        for x in (tmp_path / "ws" / "datasets" / first.id / "rejected.jsonl").read_text().splitlines()
    ]
    assert rejected[0]["location"].endswith("rows.jsonl:11")
    write_jsonl(path, [chat(f"q{i}", f"a{i}") for i in range(11)])
    assert prepare_dataset(workspace, path, config).id != first.id


def test_demo_data_holds_out_paraphrases_of_trained_facts():
    from conftest import demo_rows

    rows = demo_rows()
    by_split = {}
    for row in rows:
        by_split.setdefault(row["split"], []).append(row)
    assert 100 <= len(rows) <= 300
    train_groups = {r["group"] for r in by_split["train"]}
    assert {r["group"] for r in by_split["test"]} <= train_groups
    train_questions = {r["messages"][1]["content"] for r in by_split["train"]}
    assert not train_questions & {r["messages"][1]["content"] for r in by_split["test"]}
    for row in rows:
        assert all(fact in row["messages"][-1]["content"] for fact in row["key_facts"])
