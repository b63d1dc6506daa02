"""The data stage on real public datasets from ../shared/datasets (skipped where that folder is absent)."""

from collections import Counter

from conftest import write_jsonl
from shared_data import shared_dataset
from tunesmith.config import DataConfig
from tunesmith.data import check_rows, split_rows
from tunesmith.data.clean import NearDuplicateIndex, prompt_text


def dataset(*parts: str) -> str:
    return str(shared_dataset(*parts))


def cfg(**data):
    return DataConfig.model_validate(data)


def test_banking77_duplicates_and_stratified_label_shares():
    path = dataset("banking77", "train.csv")
    config = cfg(columns={"label": "category"}, split={"strategy": "stratified"})
    prepared = split_rows(check_rows(config, path), config)
    assert prepared.kind == "classification" and prepared.detection.confidence == 1.0
    steps = {s.name: s for s in prepared.steps}
    assert steps["read"].details["rows"] == 10003
    # No byte-identical texts (pandas drop_duplicates finds none), but 4 that differ only in case or
    # spacing; those that differ in punctuation too are left to near dedup, with the near duplicates.
    assert steps["dedup_exact"].removed == 4
    assert steps["dedup_near"].removed == 51
    assert steps["conflicts"].details["groups"] == 0
    total = Counter(i.record["label"] for i in prepared.items)
    for split in ("train", "val", "test"):
        items = prepared.split_items(split)
        shares = Counter(i.record["label"] for i in items)
        for label, count in total.items():
            assert abs(shares[label] / len(items) - count / len(prepared.items)) < 0.01, (split, label)


def test_banking77_no_test_row_has_a_near_twin_in_train_after_the_leakage_check():
    path = dataset("banking77", "train.csv")
    config = cfg(columns={"label": "category"}, clean={"near_dedup": False, "near_threshold": 0.8})
    prepared = split_rows(check_rows(config, path), config)
    leakage = next(s for s in prepared.steps if s.name == "leakage")
    assert leakage.removed > 0  # without near-dup cleaning, some twins straddle the random split
    index = NearDuplicateIndex(threshold=0.8)
    train = prepared.split_items("train")
    for item, minhash in zip(train, index.minhashes([prompt_text(i.record) for i in train]), strict=True):
        index.add(item.location, minhash)
    held_out = prepared.split_items("test") + prepared.split_items("val")
    for item, minhash in zip(
        held_out, index.minhashes([prompt_text(i.record) for i in held_out]), strict=True
    ):
        assert index.query(minhash) == [], item.location


def test_mmlu_redux_mixed_delimiters_and_a_non_utf8_file():
    path = dataset("mmlu_redux", "csv")
    prepared = check_rows(
        cfg(columns={"prompt": "question", "completion": "answer"}, clean={"near_dedup": False}), path
    )
    assert sum("delimiter sniffed as ';'" in note for note in prepared.notes) == 9
    assert [n for n in prepared.notes if "not UTF-8" in n] == [
        f"{path}/mmlu_moral_scenarios.csv: not UTF-8 (first bad byte on line 54); read as cp1252"
    ]
    steps = {s.name: s for s in prepared.steps}
    assert steps["read"].details["rows"] == 5700 and steps["read"].removed == 0


def test_conll2003_is_read_as_tagging():
    path = dataset("conll2003", "valid.txt")
    every = check_rows(cfg(clean={"near_dedup": False, "dedup": False, "conflicts": "keep_all"}), path)
    assert every.kind == "tagging" and len(every.items) == 3250
    # one real annotation conflict: the same dateline tagged B-LOC twice and B-ORG once
    prepared = check_rows(cfg(clean={"near_dedup": False, "dedup": False}), path)
    (group,) = prepared.conflicts
    assert {tuple(r["record"]["tags"]) for r in group["rows"]} == {
        ("B-LOC", "O", "B-LOC", "O"),
        ("B-ORG", "O", "B-LOC", "O"),
    }
    assert len(prepared.items) == 3247  # tagging drops a conflict by default, on record
    assert {t for i in prepared.items for t in i.record["tags"]} >= {"B-PER", "I-ORG", "B-LOC", "O"}


def test_hh_rlhf_pairs_get_their_shared_prompt():
    path = dataset("hh_rlhf_harmless_base", "test.jsonl.gz")
    prepared = check_rows(cfg(clean={"near_dedup": False}), path)
    assert prepared.kind == "preference"
    assert prepared.steps[0].details["rows"] == 2312
    assert all(i.record["prompt"].rstrip().endswith("Assistant:") for i in prepared.items)
    assert all(not i.record["chosen"].startswith("\n\nHuman:") for i in prepared.items)


def test_alpaca_libre_rows_with_empty_outputs_are_rejected_not_dropped():
    path = dataset("alpaca_libre", "alpaca_libre_tasks_v1.jsonl")
    prepared = check_rows(cfg(clean={"near_dedup": False}), path)
    empty = [r for r in prepared.rejected if r.reason.startswith("output: expected a non-empty string")]
    assert len(empty) == 237
    assert all(r.location.startswith(f"{path}:") for r in empty)


def test_indented_code_in_real_rows_survives_prepare_byte_for_byte(tmp_path):
    """alpaca_libre answers with indented code (Python, SQL, shell): after `data prepare` with the
    default cleaning, every answer is the original but for blank lines before and whitespace after it."""
    import json
    import re

    from tunesmith.config import load_config
    from tunesmith.data import load_split, prepare_dataset
    from tunesmith.data.clean import scrub_pii
    from tunesmith.workspace import open_workspace

    indented = re.compile(r"\n[ \t]+\S")
    rows, seen = [], set()
    for name in ("alpaca_libre_tasks_v2.jsonl", "alpaca_libre_tasks_v3.jsonl"):
        for line in shared_dataset("alpaca_libre", name).read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            output = row["output"]
            if indented.search(output) and output not in seen and scrub_pii(output, Counter()) == output:
                seen.add(output)
                rows.append({k: row[k] for k in ("instruction", "input", "output")})
    assert len(rows) >= 10  # every answer with indented lines in the set (code, outlines, SQL)
    data = tmp_path / "code.jsonl"
    write_jsonl(data, rows)
    workspace = open_workspace(load_config(None, [f"workspace={tmp_path / 'ws'}"]))
    config = DataConfig(path=str(data), split={"val": 0.0, "test": 0.0}, clean={"near_dedup": False})
    version, _ = prepare_dataset(workspace, config)
    answers = {r["messages"][-1]["content"] for r in load_split(version, "train")}
    expected = {re.sub(r"\A(?:[ \t]*\n)+", "", r["output"]).rstrip() for r in rows}
    kept = expected & answers
    assert len(kept) == len(answers) and len(kept) >= 0.95 * len(expected), (len(kept), len(expected))
