"""The forgetting probe's question files: bundled, user JSONL/CSV (any delimiter and encoding), MMLU-Redux."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunesmith.config import ProbeConfig
from tunesmith.data import DataError
from tunesmith.evaluate.probe import answer_questions, load_questions, load_text

MMLU = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "mmlu_redux"


def test_bundled_probe_is_ours_and_well_formed():
    questions = load_questions(ProbeConfig(), Path())
    assert len(questions) == 40
    assert all(0 <= q["answer"] < len(q["choices"]) == 4 for q in questions)
    assert len({q["subject"] for q in questions}) >= 5
    texts = load_text(ProbeConfig(), Path())
    assert texts and all("messages" in t for t in texts)
    sample = load_questions(ProbeConfig(limit=10), Path(), seed=1)
    assert len(sample) == 10 and sample == load_questions(ProbeConfig(limit=10), Path(), seed=1)


def test_user_csv_with_semicolons_python_lists_letters_and_a_stray_byte(tmp_path):
    folder = tmp_path / "probe"
    folder.mkdir()
    (folder / "mmlu_geology.csv").write_bytes(
        "question;choices;answer;error_type\n"
        "Which rock is igneous?;['Basalt', 'Shale', \"Lime's stone\", 'Marble'];0;ok\n"
        "Caf\xe9 rocks?;['yes', 'no'];B;ok\n"
        "A flawed one;['a', 'b'];0;Wrong Groundtruth\n".encode("latin-1")
    )
    (folder / "extra.jsonl").write_text(
        json.dumps({"question": "2+2?", "choices": "3|4|5", "answer": 1, "subject": "maths"}) + "\n"
    )
    questions = load_questions(ProbeConfig(questions=str(folder)), tmp_path)
    assert [q["subject"] for q in questions] == ["maths", "geology", "geology"]
    assert questions[1]["choices"][2] == "Lime's stone"
    assert questions[2]["question"] == "Café rocks?" and questions[2]["answer"] == 1


def test_bad_probe_rows_name_file_and_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        json.dumps({"question": "q", "choices": ["a", "b"], "answer": 0})
        + "\n"
        + json.dumps({"question": "q", "choices": ["a", "b"], "answer": 5})
        + "\n"
    )
    with pytest.raises(DataError, match=r"bad\.jsonl:2: answer 5 is not one of the 2 choices"):
        load_questions(ProbeConfig(questions=str(bad)), tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        load_questions(ProbeConfig(questions="missing.csv"), tmp_path)


@pytest.mark.skipif(not MMLU.exists(), reason="../shared/datasets/mmlu_redux is absent")
def test_mmlu_redux_loads_from_jsonl_and_from_its_inconsistent_csvs():
    merged = load_questions(ProbeConfig(questions=str(MMLU / "mmlu_redux_all.jsonl")), Path())
    per_subject = load_questions(ProbeConfig(questions=str(MMLU / "csv")), Path())
    assert len(merged) == len(per_subject) > 5000  # the rows Redux marks as erroneous are left out
    assert len({q["subject"] for q in per_subject}) == 57


def test_letter_and_choice_scoring_pick_a_choice_per_question(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    questions = load_questions(ProbeConfig(limit=6), Path())
    for scoring in ("letter", "choice"):
        chosen = answer_questions(model, tokenizer, questions, scoring)
        assert len(chosen) == 6 and all(0 <= c < 4 for c in chosen)
