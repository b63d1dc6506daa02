"""The default recipe, `classify` and `tag` on the bundled models and real data from ../shared/datasets.

Small subsets so the suite stays quick on a 2-core CPU; `bench/train_results.py` runs larger ones.
"""

import sys
from pathlib import Path

import pytest

from shared_data import shared_dataset
from tunesmith.config import load_config
from tunesmith.train.run import train

pytestmark = pytest.mark.slow


def dataset(*parts: str) -> Path:
    return shared_dataset(*parts)


def project(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "tunesmith.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_the_default_recipe_on_sst2_beats_prompting_the_base_model_within_its_budget(tmp_path):
    """The task suite (bench/suite.py) at reduced size: nothing set but data.path, a sample of it and
    a time budget; the tuned classifier beats the base model prompted with 3 examples, significantly.
    A minute and a half is too little for the bundled decoder to see 2,400 rows once, so MiniLM trains."""
    shared_dataset("sst2", "train.tsv")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    from suite import TASKS, run_task

    row = run_task("sst2", TASKS["sst2"], 1.5, 80, tmp_path, ["data.sample=3000"])
    assert row["objective"] == "classify (minilm-l6, full)" and row["metric"] == "accuracy", row
    assert any("ask smollm2-135m-instruct" in note for note in row["notes"]), row["notes"]
    assert row["budget_choice"] is None or "1.5-min budget" in row["budget_choice"]
    test = row["versus_3shot"]
    assert test is not None and test["p_value"] < 0.05, row
    tuned, prompted = row["scores"][row["tuned"]]["value"], row["scores"]["base 3-shot"]["value"]
    assert tuned > prompted + 0.1 and tuned > row["scores"]["majority"]["value"], row


def test_the_default_recipe_on_dialogsum_beats_prompting_the_base_model_in_64_steps(tmp_path):
    """The suite's generative task at reduced size: 64 steps of 2 rows of sft on dialogue summaries
    (LoRA on the bundled decoder, with replay, the rest of the recipe its default) beat the base model
    prompted with 3 examples on ROUGE over 20 test dialogues, significantly, and hold the forgetting
    probe.

    A step count, not a time budget: a budget buys fewer steps on a slower or busier machine (31 on
    one runner, where +0.055 came out at p=0.11), so the outcome would depend on the machine. Two rows
    a step (the recipe picks 4 for this set) train in two thirds of the time of 48 steps of 4 and did
    as well when measured on one thread: rouge_1 +0.139 over 3-shot (p=0.002), as 58 steps of 4
    (+0.132, p=0.002); 33 steps of 4 gave +0.080 (p=0.023)."""
    shared_dataset("dialogsum", "dialogsum.dev.jsonl")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    from suite import TASKS, run_task

    quick = ["eval.metrics=[rouge_1, rouge_l]", "eval.compare=[]"]  # only the 3-shot prompt to beat
    steps = ["train.max_steps=64", "train.batch_size=2"]
    row = run_task("dialogsum", TASKS["dialogsum"], 30.0, 20, tmp_path, [*quick, *steps])
    assert row["objective"] == "sft (smollm2-135m-instruct, lora)" and row["metric"].startswith("rouge"), row
    assert row["steps"] == 64, row
    test = row["versus_3shot"]
    assert test is not None and test["p_value"] < 0.05, row
    tuned, prompted = row["scores"][row["tuned"]]["value"], row["scores"]["base 3-shot"]["value"]
    assert tuned > prompted + 0.05, row
    assert row["forgetting"] is not None and row["forgetting"] < 0.05, row


def test_conll2003_tag_on_minilm_reports_seqeval_f1(tmp_path):
    path = dataset("conll2003", "train.txt")
    config_path = project(
        tmp_path,
        f"""project: ner
model:
  id: minilm-l6
data:
  path: {path}
  sample: 800
  split: {{val: 0.1, test: 0.2}}
train:
  objective: tag
  method: full
  epochs: 3
  lr: 3e-4
  batch_size: 16
  max_length: 128
  save_strategy: 'no'
""",
    )
    outcome = train(load_config(config_path))
    metrics = outcome.version.metrics
    assert outcome.model.config.id2label[0] == "O"
    assert set(outcome.model.config.id2label.values()) >= {"B-PER", "I-PER", "B-ORG", "B-LOC", "B-MISC"}
    assert metrics["test_f1"] > 0.5, metrics
    assert metrics["test_accuracy"] > metrics["majority_accuracy"], metrics
