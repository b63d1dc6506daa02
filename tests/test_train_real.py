"""`classify` and `tag` on the bundled models and real public data from ../shared/datasets.

Small subsets so the suite stays quick on a 2-core CPU; `bench/train_results.py` runs larger ones.
"""

from pathlib import Path

import pytest

from shared_data import shared_dataset, sst2_project
from tunesmith.config import load_config
from tunesmith.train.run import train

pytestmark = pytest.mark.slow


def dataset(*parts: str) -> Path:
    return shared_dataset(*parts)


def project(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "tunesmith.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_sst2_classify_on_smollm2_with_lora_beats_the_majority_class_widely(tmp_path):
    train_section = {"objective": "classify", "method": "lora", "epochs": 2, "lr": 1e-3, "batch_size": 16}
    train_section |= {"max_length": 64, "activation_checkpointing": False, "save_strategy": "no"}
    config_path = sst2_project(tmp_path, 400, {"val": 0.1, "test": 0.25}, train=train_section)
    metrics = train(load_config(config_path)).version.metrics
    assert metrics["majority_accuracy"] < 0.6
    assert metrics["test_accuracy"] > metrics["majority_accuracy"] + 0.15, metrics
    assert metrics["test_macro_f1"] > 0.7, metrics


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
