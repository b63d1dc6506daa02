import json
from collections import Counter

import pytest
from typer.testing import CliRunner

from conftest import write_jsonl
from tunesmith.cli import app
from tunesmith.config import DataConfig, load_config
from tunesmith.data import (
    DataError,
    TargetModel,
    check_rows,
    get_dataset,
    load_split,
    prepare_dataset,
    split_rows,
)
from tunesmith.workspace import open_workspace

runner = CliRunner()


def chat(q, a, **meta):
    return {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}], **meta}


def cfg(**data):
    return DataConfig.model_validate(data)


def test_every_rejection_is_kept_with_place_step_and_reason(tmp_path):
    path = write_jsonl(
        tmp_path / "rows.jsonl",
        [
            chat("q1 about apples", "a1"),
            "{not json",
            chat("q2 about pears", "a2"),
            {"text": "raw"},
            chat("Q1  about Apples", "a1"),
            chat("q3", "a3", split="holdout"),
        ],
    )
    prepared = check_rows(cfg(), str(path))
    reasons = {r.location: (r.step, r.reason) for r in prepared.rejected}
    assert reasons[f"{path}:2"][0] == "read"
    assert reasons[f"{path}:4"] == (
        "convert",
        "a text row (text) in a sft dataset; every row must be the same kind",
    )
    assert reasons[f"{path}:5"] == ("dedup_exact", f"exact duplicate of {path}:1")  # case and spacing aside
    assert "expected train, val or test" in reasons[f"{path}:6"][1]
    assert len(prepared.items) == 2


def test_unknown_labels_are_rejected(tmp_path):
    path = write_jsonl(
        tmp_path / "rows.jsonl", [{"text": f"t{i}", "label": lab} for i, lab in enumerate("aab?")]
    )
    prepared = check_rows(cfg(labels=["a", "b"]), str(path))
    assert [r.reason for r in prepared.rejected] == ["label: unknown label '?'; allowed: a, b"]


def test_cleaning_steps_report_their_counts(tmp_path):
    path = write_jsonl(
        tmp_path / "rows.jsonl",
        [
            chat("mail me at bob@example.com", "ok"),
            chat("  spaced   out  ", "fine"),
            chat("<b>bold</b>", "x"),
        ],
    )
    prepared = check_rows(cfg(clean={"strip_html": True}), str(path))
    steps = {s.name: s for s in prepared.steps}
    assert steps["normalize"].changed == 1
    assert steps["strip_html"].changed == 1
    assert steps["pii"].changed == 1 and steps["pii"].details["by_type"] == {"EMAIL": 1}
    assert prepared.items[0].record["messages"][0]["content"] == "mail me at [EMAIL]"


def test_length_filter_counts_real_tokens(tmp_path, tiny_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    long_answer = " ".join(["Fernwick"] * 300)
    path = write_jsonl(
        tmp_path / "rows.jsonl", [chat("short question", "short answer"), chat("q", long_answer)]
    )
    prepared = check_rows(cfg(), str(path), model=TargetModel(tokenizer, context_window=256))
    rendered = tokenizer.apply_chat_template(prepared.items[0].record["messages"], tokenize=False)
    assert prepared.items[0].tokens == len(tokenizer(rendered, add_special_tokens=False)["input_ids"]) > 4
    assert prepared.rejected[0].step == "length" and "over 256" in prepared.rejected[0].reason


def test_near_duplicates_are_removed_and_clustered(tmp_path):
    base = "please tell me how i can change the delivery address of my order before it ships"
    path = write_jsonl(
        tmp_path / "rows.jsonl",
        [
            chat(base, "Go to Orders."),
            chat(base + " today", "Go to Orders."),
            chat("what is your refund policy for opened items", "30 days"),
        ],
    )
    prepared = check_rows(cfg(clean={"near_threshold": 0.7}), str(path))  # one word added: Jaccard ≈ 0.78
    step = next(s for s in prepared.steps if s.name == "dedup_near")
    assert step.removed == 1 and step.details["clusters"][0]["kept"].endswith(":1")


def test_stratified_split_keeps_label_shares(tmp_path):
    rows = [
        {"text": f"sample text number {i} of class {c}", "label": c}
        for c in "abc"
        for i in range(100 if c != "c" else 40)
    ]
    path = write_jsonl(tmp_path / "rows.jsonl", rows)
    config = cfg(split={"strategy": "stratified", "val": 0.1, "test": 0.2}, clean={"near_dedup": False})
    prepared = split_rows(check_rows(config, str(path)), config)
    for split, share in (("train", 0.7), ("val", 0.1), ("test", 0.2)):
        labels = Counter(i.record["label"] for i in prepared.split_items(split))
        assert labels == {"a": round(100 * share), "b": round(100 * share), "c": round(40 * share)}


def test_grouped_split_and_folds_never_straddle(tmp_path):
    rows = [
        chat(f"question {g} variant {v} with words", f"answer {g}", group=f"g{g}")
        for g in range(30)
        for v in range(3)
    ]
    config = cfg(
        split={"strategy": "grouped", "folds": 3},
        clean={"near_dedup": False},
    )
    config.split.leakage = "off"
    prepared = split_rows(check_rows(config, str(write_jsonl(tmp_path / "r.jsonl", rows))), config)
    where = {}
    for item in prepared.items:
        assert where.setdefault(item.record["group"], (item.split, item.fold)) == (item.split, item.fold)
    assert Counter(i.split for i in prepared.items) == {"train": 72, "val": 9, "test": 9}
    assert sorted(Counter(i.fold for i in prepared.split_items("train")).values()) == [24, 24, 24]


def test_leakage_twins_are_removed_or_reassigned(tmp_path):
    rows = [
        chat("how do i reset the password of my banking account", "Use the app.", split="train"),
        chat("how do i reset the password of my banking account please", "Tap reset.", split="test"),
        chat("where is the nearest branch office located", "Main street.", split="test"),
    ]
    path = write_jsonl(tmp_path / "rows.jsonl", rows)
    config = cfg(clean={"near_dedup": False, "near_threshold": 0.7})
    removed = split_rows(check_rows(config, str(path)), config)
    assert [i.record["messages"][0]["content"] for i in removed.split_items("test")] == [
        "where is the nearest branch office located"
    ]
    assert removed.rejected[0].step == "leakage" and "near twin" in removed.rejected[0].reason
    config.split.leakage = "reassign"
    moved = split_rows(check_rows(config, str(path)), config)
    assert len(moved.split_items("train")) == 2 and not moved.rejected


def test_synthetic_rows_stay_in_train_and_lose_to_a_held_out_twin(tmp_path):
    real = [chat(f"real question number {i} about subject {i * 3}", f"r{i}") for i in range(20)]
    synthetic = [
        chat(f"teacher question {i} on matter {i * 5} here", f"s{i}", origin="synthetic") for i in range(10)
    ]
    synthetic[0]["split"] = "test"  # a synthetic row that claims a held-out split is moved to train
    path = write_jsonl(tmp_path / "rows.jsonl", real + synthetic)
    config = cfg(split={"val": 0.2, "test": 0.2})
    prepared = split_rows(check_rows(config, str(path)), config)
    held_out = prepared.split_items("val") + prepared.split_items("test")
    assert held_out and all(i.record.get("origin") != "synthetic" for i in held_out)
    assert len(held_out) == 8  # the shares are taken of the real rows
    step = next(s for s in prepared.steps if s.name == "synthetic")
    assert step.details["rows"] == 10 and step.changed == 1

    # A synthetic train row that twins a test row goes; the real test row stays.
    test_row = prepared.split_items("test")[0].record
    twin = {**test_row, "origin": "synthetic"}
    twin["messages"] = [{**test_row["messages"][0]}, {"role": "assistant", "content": "other"}]
    labelled = [{**r, "split": "train"} for r in real[:2]]
    rows = [*labelled, {**test_row, "split": "test"}, twin]
    path = write_jsonl(tmp_path / "twins.jsonl", rows)
    checked = split_rows(check_rows(config, str(path)), config)
    assert [i.record for i in checked.split_items("test")] == [test_row]
    (lost,) = checked.rejected
    assert lost.step == "leakage" and lost.reason.startswith("leakage: synthetic train row is an exact twin")

    config.split.synthetic = "any"
    anywhere = split_rows(check_rows(config, str(tmp_path / "rows.jsonl")), config)
    assert any(i.record.get("origin") == "synthetic" for i in anywhere.split_items("test"))


def test_contamination_against_an_eval_file(tmp_path):
    bench = write_jsonl(
        tmp_path / "bench.jsonl", [{"question": "What is the capital of Norway?", "answer": "Oslo"}]
    )
    path = write_jsonl(
        tmp_path / "rows.jsonl",
        [chat("What is the capital of Norway?", "Oslo."), chat("Name a fjord in Norway", "Geiranger.")],
    )
    config = cfg(contamination=[str(bench)])
    prepared = split_rows(check_rows(config, str(path)), config)
    assert len(prepared.items) == 1
    assert prepared.rejected[0].reason == f"contamination: matches eval row {bench}:1"


def test_versions_are_content_hashed_stored_as_parquet_and_reported(tmp_path):
    workspace = open_workspace(load_config(None, [f"workspace={tmp_path / 'ws'}"]))
    path = write_jsonl(
        tmp_path / "rows.jsonl",
        [chat(f"question number {i} about topic {i * 7}", f"a{i}") for i in range(20)] + ["bad"],
    )
    config = cfg(path=str(path))
    first, _ = prepare_dataset(workspace, config)
    again, _ = prepare_dataset(workspace, config)
    assert first.id == again.id and first.id.startswith("ds-")
    assert first.counts == {"train": 16, "val": 2, "test": 2, "rejected": 1}
    folder = tmp_path / "ws" / "datasets" / first.id
    assert {p.name for p in folder.iterdir()} == {
        "train.parquet",
        "val.parquet",
        "test.parquet",
        "rejected.jsonl",
        "conflicts.jsonl",
        "report.json",
        "report.html",
    }
    assert load_split(first, "train")[0].keys() == {"messages"}
    assert "<img" in (folder / "report.html").read_text()
    other, _ = prepare_dataset(workspace, cfg(path=str(path), split={"seed": 1}))
    assert other.id != first.id  # other options, other version
    assert get_dataset(workspace, first.id[:9]).id == first.id  # a unique prefix will do
    both = ", ".join(sorted([first.id, other.id]))
    with pytest.raises(DataError, match=rf"'ds-' matches 2 dataset versions \({both}\); give more of the id"):
        get_dataset(workspace, "ds-")  # not "no dataset version": say which, and to give more of the id
    with pytest.raises(DataError, match="no dataset version 'ds-nope'"):
        get_dataset(workspace, "ds-nope")


def test_strict_fails_on_any_rejection(tmp_path):
    workspace = open_workspace(load_config(None, [f"workspace={tmp_path / 'ws'}"]))
    path = write_jsonl(tmp_path / "rows.jsonl", [chat("q", "a"), "bad"])
    with pytest.raises(DataError, match=r"1 row\(s\) rejected and data.strict is set"):
        prepare_dataset(workspace, cfg(path=str(path), strict=True))


def test_data_cli_validate_prepare_show_diff(tmp_path, tiny_model_dir):
    rows = [
        {
            "content": f"review number {i} says the film was {'good' if i % 2 else 'bad'} and {i}",
            "sentiment": "pos" if i % 2 else "neg",
        }
        for i in range(40)
    ]
    path = write_jsonl(tmp_path / "reviews.jsonl", [*rows, {"content": "x", "sentiment": "pos"}])
    config = tmp_path / "tunesmith.yaml"
    config.write_text(
        f"project: reviews\nmodel:\n  id: {tiny_model_dir}\ndata:\n  path: {path}\n", encoding="utf-8"
    )
    validate = ["data", "validate", str(config), "--map", "text=content,label=sentiment"]
    result = runner.invoke(app, validate)
    assert result.exit_code == 0, result.output
    assert "text_label (100% of 41 sampled rows)" in result.output
    assert "train.objective auto chose classify" in " ".join(result.output.split())
    named = runner.invoke(app, [*validate, "--set", "train.objective=sft"])
    assert "warning: train.objective=sft needs sft rows" in " ".join(named.output.split())
    strict = runner.invoke(
        app,
        [
            "data",
            "validate",
            str(config),
            "--map",
            "text=content,label=sentiment",
            "--set",
            "data.clean.min_tokens=3",
            "--strict",
        ],
    )
    assert strict.exit_code == 2 and "--strict" in strict.output
    typo = runner.invoke(app, ["data", "validate", str(config), "--map", "text=contents,label=sentiment"])
    said = " ".join(typo.output.split())
    assert typo.exit_code == 2 and "names 'contents' (for text), but no row has that column" in said
    assert "the columns are: content, sentiment" in said and "Traceback" not in said
    ids, summaries = [], []
    for seed in (0, 1):
        prepared = runner.invoke(
            app,
            [
                "data",
                "prepare",
                str(config),
                "--map",
                "text=content,label=sentiment",
                "--set",
                f"data.split.seed={seed}",
                "--set",
                "data.split.strategy=stratified",
            ],
        )
        assert prepared.exit_code == 0, prepared.output
        ids.append(prepared.output.split("Dataset version ")[1].split(":")[0])
        summaries.append(prepared.output.split("Dataset version ")[1].split(":")[1].split("→")[0])
    shown = runner.invoke(app, ["data", "show", ids[0], "--config", str(config)])
    assert "classification" in shown.output and "neg" in shown.output
    # without --map, the columns are read by their names, said, and give the same rows
    by_name = runner.invoke(
        app,
        [
            "data",
            "prepare",
            str(config),
            "--set",
            "data.split.seed=0",
            "--set",
            "data.split.strategy=stratified",
        ],
    )
    said = " ".join(by_name.output.split())
    assert by_name.exit_code == 0, by_name.output
    assert "columns read as text ← content, label ← sentiment: data.columns or data.format overrides" in said
    assert by_name.output.split("Dataset version ")[1].split(":")[1].split("→")[0] == summaries[0]
    diff = runner.invoke(app, ["data", "diff", ids[0], ids[1], "--config", str(config)])
    assert diff.exit_code == 0 and "data.split.seed: 0 → 1" in diff.output


def test_a_dataset_that_grew_keeps_every_old_row_in_its_split(tmp_path):
    """Production's test rows stay test rows when the data grows, wherever the new rows land in the file."""
    workspace = open_workspace(load_config(None, [f"workspace={tmp_path / 'ws'}"]))
    old = [chat(f"how do I reset gadget {i} in mode {i * 3}", f"press {i}") for i in range(90)]
    new = [chat(f"where is the manual for model {i} variant {i * 5}", f"page {i}") for i in range(40)]
    path = tmp_path / "rows.jsonl"
    write_jsonl(path, old)
    first, _ = prepare_dataset(workspace, cfg(path=str(path)))
    write_jsonl(
        path, new[:20] + old[::-1] + new[20:]
    )  # new rows before, between and after; old ones reordered
    grown, prepared = prepare_dataset(workspace, cfg(path=str(path)))
    assert grown.id != first.id and sum(grown.counts[s] for s in ("train", "val", "test")) == 130

    def prompts(version, split):
        return {r["messages"][0]["content"] for r in load_split(version, split)}

    for split in ("train", "val", "test"):
        assert prompts(first, split) <= prompts(grown, split), split
    (step,) = [s for s in prepared.steps if s.name == "stable_splits"]
    assert step.details["from"] == first.id and step.changed == 90
    assert 1 <= len(prompts(grown, "test") - prompts(first, "test")) <= 8  # new rows still fill test

    # another seed is another split: nothing is carried over from a version split differently
    _, prepared = prepare_dataset(workspace, cfg(path=str(path), split={"seed": 7}))
    assert not [s for s in prepared.steps if s.name == "stable_splits"]


def test_same_input_with_other_labels_or_answers_is_a_reported_conflict(tmp_path):
    rows = [
        {"text": "the parcel came late", "label": "negative"},
        {"text": "The parcel  came late", "label": "positive"},  # same input, other label
        {"text": "great service", "label": "positive"},
        {"text": "great service", "label": "positive"},  # a plain duplicate, not a conflict
    ]
    path = write_jsonl(tmp_path / "rows.jsonl", rows)
    dropped = check_rows(cfg(), str(path))  # classification: drop_all by default
    assert [r["text"] for r in (i.record for i in dropped.items)] == ["great service"]
    assert {r.step for r in dropped.rejected} == {"conflicts", "dedup_exact"}
    (group,) = dropped.conflicts
    assert [row["record"]["label"] for row in group["rows"]] == ["negative", "positive"]
    (step,) = [s for s in dropped.steps if s.name == "conflicts"]
    assert step.details == {"policy": "drop_all", "groups": 1, "rows": 2} and step.removed == 2

    first = check_rows(cfg(clean={"conflicts": "keep_first"}), str(path))
    assert [i.record["label"] for i in first.items] == ["negative", "positive"]
    kept = check_rows(cfg(clean={"conflicts": "keep_all"}), str(path))
    assert len(kept.items) == 3 and len(kept.conflicts) == 1

    # generation keeps other answers to the same question by default, and still reports them
    chats = write_jsonl(
        tmp_path / "chats.jsonl",
        [chat("how do I reset?", "hold the button"), chat("How do I reset?", "unplug it")],
    )
    answers = check_rows(cfg(), str(chats))
    assert len(answers.items) == 2 and len(answers.conflicts) == 1

    workspace = open_workspace(load_config(None, [f"workspace={tmp_path / 'ws'}"]))
    version, _ = prepare_dataset(workspace, cfg(path=str(path), clean={"near_dedup": False}))
    assert version.counts["conflicts"] == 1
    lines = (tmp_path / "ws" / "datasets" / version.id / "conflicts.jsonl").read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["rows"][1]["record"]["label"] == "positive"


def test_code_and_non_latin_text_come_out_of_prepare_unchanged(tmp_path):
    code = "```python\ndef area(r):\n    if r < 0:\n\traise ValueError(r)\n    return 3.14 * r ** 2\n```"
    texts = {
        "code": code,
        "yaml": "server:\n  port: 8080\n  hosts:\n    - a\n    - b",
        "japanese": "東京都は日本の首都です。\n  字下げも残ります。",
        "persian": "می\u200cخواهم کتاب بخوانم",
        "emoji": "family: \U0001f468\u200d\U0001f469\u200d\U0001f467 and \U0001f3f3\ufe0f\u200d\U0001f308",
    }
    rows = [
        chat(f"show me the {name} sample number {i}", text) for i, (name, text) in enumerate(texts.items())
    ]
    path = write_jsonl(tmp_path / "rows.jsonl", rows)
    workspace = open_workspace(load_config(None, [f"workspace={tmp_path / 'ws'}"]))
    version, _ = prepare_dataset(workspace, cfg(path=str(path), split={"val": 0.0, "test": 0.0}))
    answers = {r["messages"][-1]["content"] for r in load_split(version, "train")}
    assert answers == set(texts.values())


def test_a_group_column_groups_only_when_asked_and_leaks_move_whole_groups(tmp_path):
    rows = [
        chat(f"question {g} variant {v} about item {g * 13 + v}", f"answer {g}", group=f"g{g}")
        for g in range(30)
        for v in range(3)
    ]
    path = write_jsonl(tmp_path / "rows.jsonl", rows)

    def splits_per_group(prepared):
        seen: dict[str, set] = {}
        for item in prepared.items:
            seen.setdefault(item.record["group"], set()).add(item.split)
        return seen

    random_split = split_rows(check_rows(cfg(clean={"near_dedup": False}), str(path)), cfg())
    assert any(len(s) > 1 for s in splits_per_group(random_split).values())  # `group` is just a column here
    explicit = cfg(clean={"near_dedup": False}, split={"group_field": "group"})
    grouped = split_rows(check_rows(explicit, str(path)), explicit)
    assert all(len(s) == 1 for s in splits_per_group(grouped).values())

    # a held-out row that leaks takes its whole group to train, never just itself
    leak = [*rows, chat("question 0 variant 0 about item 0", "another answer", group="solo")]
    leaky = write_jsonl(tmp_path / "leaky.jsonl", leak)
    config = cfg(
        clean={"near_dedup": False, "dedup": False}, split={"strategy": "grouped", "leakage": "reassign"}
    )
    prepared = split_rows(check_rows(config, str(leaky)), config)
    assert all(len(s) == 1 for s in splits_per_group(prepared).values())
