"""Classification objectives on transformers' `Trainer`: `classify` (a label per text) and `tag` (a label
per word, such as named entities).

The head sits on any body: a decoder (SmolLM2, scored at its last real token) or an encoder (MiniLM).
Labels come from the data. Validation reports accuracy and macro-F1 (`classify`) or entity-level
seqeval F1 (`tag`); the test split is scored at the end of the run, beside the majority-class
baseline, and the full report is written to the run folder.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunesmith.config import ProjectConfig
from tunesmith.data import load_split
from tunesmith.models.loading import LABELS_FILE, NEW_HEADS, float32_heads
from tunesmith.progress import console
from tunesmith.store import DatasetVersion

if TYPE_CHECKING:
    from tunesmith.train.objectives import TrainerJob

    pass

_PEFT_TASKS = {"classify": "SEQ_CLS", "tag": "TOKEN_CLS"}
IGNORE = -100  # label of the sub-word pieces and special tokens that carry no label of their own


def label_names(objective: str, dataset: DatasetVersion, allowed: list[str] | None = None) -> list[str]:
    """The labels the head predicts: the configured list in its order, else every label in the data.

    Tags put `O` first and then sort by entity type, so `B-PER` sits beside `I-PER`.
    """
    if objective == "classify" and allowed:
        return list(allowed)
    seen: set[str] = set()
    for split in ("train", "val", "test"):
        for record in load_split(dataset, split):
            if objective == "classify":
                seen.add(record["label"])
            else:
                seen.update(record["tags"])
    if objective == "classify":
        return sorted(seen)
    entity = sorted(seen - {"O"}, key=lambda t: (t.partition("-")[2] or t, t))
    return ["O", *entity] if "O" in seen else entity


def encode(
    objective: str, records: list[dict[str, Any]], tokenizer: Any, label2id: dict[str, int], max_length: int
) -> list[dict[str, Any]]:
    """Token ids and label ids; for `tag`, the first piece of each word carries the word's tag."""
    if not records:  # a split the project leaves empty (data.split.val: 0)
        return []
    if objective == "classify":
        texts = [r["text"] for r in records]
        batch = tokenizer(texts, truncation=True, max_length=max_length)
        return [
            {"input_ids": ids, "attention_mask": mask, "labels": label2id[r["label"]]}
            for ids, mask, r in zip(batch["input_ids"], batch["attention_mask"], records, strict=True)
        ]
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(
            "train.objective=tag needs a fast tokenizer (it maps pieces back to words); "
            "pick a model that ships tokenizer.json, such as minilm-l6"
        )
    rows = []
    for r in records:
        encoding = tokenizer(r["tokens"], is_split_into_words=True, truncation=True, max_length=max_length)
        labels, previous = [], None
        for word in encoding.word_ids():
            labels.append(IGNORE if word is None or word == previous else label2id[r["tags"][word]])
            previous = word
        rows.append(
            {
                "input_ids": encoding["input_ids"],
                "attention_mask": encoding["attention_mask"],
                "labels": labels,
            }
        )
    return rows


def score(objective: str, references: list[Any], predictions: list[Any]) -> dict[str, float]:
    """Accuracy and F1 for `classify` (label lists); entity-level seqeval scores for `tag` (tag lists)."""
    if objective == "classify":
        from sklearn.metrics import accuracy_score, f1_score

        return {
            "accuracy": float(accuracy_score(references, predictions)),
            "macro_f1": float(f1_score(references, predictions, average="macro", zero_division=0)),
            "micro_f1": float(f1_score(references, predictions, average="micro", zero_division=0)),
        }
    from seqeval.metrics import accuracy_score, f1_score, precision_score, recall_score

    return {
        "precision": float(precision_score(references, predictions, zero_division=0)),
        "recall": float(recall_score(references, predictions, zero_division=0)),
        "f1": float(f1_score(references, predictions, zero_division=0)),
        "accuracy": float(accuracy_score(references, predictions)),
    }


def decode(objective: str, logits: Any, labels: Any, id2label: dict[int, str]) -> tuple[list, list]:
    """References and predictions as label names, dropping the positions that carry no label."""
    import numpy as np

    predicted = np.asarray(logits).argmax(-1)
    labels = np.asarray(labels)
    if objective == "classify":
        return [id2label[int(i)] for i in labels], [id2label[int(i)] for i in predicted]
    references, predictions = [], []
    for row_labels, row_predicted in zip(labels, predicted, strict=True):
        keep = row_labels != IGNORE
        references.append([id2label[int(i)] for i in row_labels[keep]])
        predictions.append([id2label[int(i)] for i in row_predicted[keep]])
    return references, predictions


def metrics_function(objective: str, id2label: dict[int, str]) -> Any:
    """`compute_metrics` for the Trainer's evaluations."""

    def compute(prediction: Any) -> dict[str, float]:
        logits = (
            prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
        )
        return score(objective, *decode(objective, logits, prediction.label_ids, id2label))

    return compute


def predict(
    objective: str,
    model: Any,
    tokenizer: Any,
    records: list[dict[str, Any]],
    max_length: int,
    batch_size: int = 32,
    label: str = "Predicting",
) -> tuple[list[Any], list[Any]]:
    """References and predictions (label names, or tag lists per sentence) for `records`, batched."""
    import torch
    from transformers import DataCollatorForTokenClassification, DataCollatorWithPadding

    from tunesmith.progress import make_progress

    id2label = {int(i): name for i, name in model.config.id2label.items()}
    rows = encode(objective, records, tokenizer, {n: i for i, n in id2label.items()}, max_length)
    collate = (
        DataCollatorWithPadding(tokenizer)
        if objective == "classify"
        else DataCollatorForTokenClassification(tokenizer)
    )
    device = next(model.parameters()).device
    references: list[Any] = []
    predictions: list[Any] = []
    was_training = model.training
    model.eval()
    with make_progress() as progress, torch.no_grad():
        task = progress.add_task(label, total=len(rows))
        for start in range(0, len(rows), batch_size):
            batch = collate(rows[start : start + batch_size])
            labels = batch.pop("labels")
            logits = model(**{k: v.to(device) for k, v in batch.items()}).logits.float().cpu()
            refs, preds = decode(objective, logits.numpy(), labels.numpy(), id2label)
            references += refs
            predictions += preds
            progress.advance(task, len(labels))
    model.train(was_training)
    return references, predictions


def test_report(
    objective: str, references: list[Any], predictions: list[Any], labels: list[str], majority: str
) -> dict[str, Any]:
    """Scores, the majority-class baseline, per-class figures and (for `classify`) the confusion matrix."""
    report: dict[str, Any] = {"rows": len(references), "scores": score(objective, references, predictions)}
    baseline = (
        [majority] * len(references)
        if objective == "classify"
        else [[majority] * len(tags) for tags in references]
    )
    report["majority_class"] = majority
    report["majority_scores"] = score(objective, references, baseline)
    if objective == "classify":
        from sklearn.metrics import classification_report, confusion_matrix

        report["per_class"] = classification_report(
            references, predictions, labels=labels, output_dict=True, zero_division=0
        )
        report["confusion_matrix"] = {
            "labels": labels,
            "matrix": confusion_matrix(references, predictions, labels=labels).tolist(),
        }
    else:
        from seqeval.metrics import classification_report

        report["per_class"] = classification_report(
            references, predictions, output_dict=True, zero_division=0
        )
    return json.loads(json.dumps(report, default=float))


def _peft_wrap(model: Any, config: ProjectConfig) -> Any:
    from peft import LoraConfig, get_peft_model

    settings = config.train.lora.model_dump()
    # The new head is trained whole (PEFT's modules_to_save), so LoRA leaves it out of its targets.
    heads = [name for name in NEW_HEADS if hasattr(model, name)]
    float32_heads(model)
    return get_peft_model(
        model,
        LoraConfig(task_type=_PEFT_TASKS[config.train.objective], exclude_modules=heads or None, **settings),
    )


def classifier_trainer(job: TrainerJob) -> Any:
    """transformers' Trainer for `classify`/`tag` on `records`, the method applied (frozen body, or LoRA).

    `base` carries the head sized for the data's labels (`id2label` in its config).
    """
    from datasets import Dataset
    from transformers import (
        DataCollatorForTokenClassification,
        DataCollatorWithPadding,
        PrinterCallback,
        Trainer,
        TrainingArguments,
    )

    from tunesmith.train.methods import apply_freeze
    from tunesmith.train.sft import trainer_kwargs

    config, base, records, run_dir, callbacks = job.config, job.base, job.records, job.run_dir, job.callbacks
    objective, train = config.train.objective, config.train
    model, tokenizer = base.model, base.tokenizer
    id2label = {int(i): name for i, name in model.config.id2label.items()}
    label2id = {name: i for i, name in id2label.items()}
    rows = {
        split: encode(objective, split_records, tokenizer, label2id, train.max_length)
        for split, split_records in records.items()
    }
    kwargs = trainer_kwargs(train, run_dir / "trainer", bool(rows.get("val")), TrainingArguments)
    kwargs.setdefault("include_num_input_tokens_seen", "non_padding")
    if train.method in ("freeze", "head"):
        apply_freeze(model, train)
    elif train.method in ("lora", "qlora"):
        model = _peft_wrap(model, config)
    collator = (
        DataCollatorWithPadding(tokenizer)
        if objective == "classify"
        else DataCollatorForTokenClassification(tokenizer)
    )
    trainer = Trainer(
        model=model,
        args=TrainingArguments(**kwargs),
        train_dataset=Dataset.from_list(rows["train"]),
        eval_dataset=Dataset.from_list(rows["val"]) if rows.get("val") else None,
        processing_class=tokenizer,
        data_collator=collator,
        compute_metrics=metrics_function(objective, id2label),
        callbacks=callbacks,
    )
    trainer.remove_callback(PrinterCallback)
    return trainer


def describe_classifier(config: ProjectConfig, trainer: Any) -> str:
    labels = len(trainer.model.config.id2label)
    return f"{config.train.objective} ({config.train.method}, {labels} labels)"


def finish_classifier(run: Any, trainer: Any, run_dir: Path, weights_dir: Path) -> dict[str, Any]:
    """labels.json beside the weights; the test split scored beside the majority-class baseline."""
    from tunesmith.train.sft import is_main_process

    objective, train = run.config.train.objective, run.config.train
    id2label = {int(i): name for i, name in run.base.model.config.id2label.items()}
    names = [id2label[i] for i in sorted(id2label)]
    main = is_main_process()  # every process scores a sharded model; the main one writes
    if main:
        (weights_dir / LABELS_FILE).write_text(
            json.dumps({"objective": objective, "labels": names}, indent=2), encoding="utf-8"
        )
    metrics: dict[str, Any] = {"labels": len(names)}
    # A sweep trial is chosen on validation: its test scores stay unseen until the final eval.
    test_records = load_split(run.dataset, "test") if run.kind != "sweep" else []
    if test_records:
        found = predict(
            objective,
            trainer.model,
            run.base.tokenizer,
            test_records,
            train.max_length,
            train.per_device_train_batch_size,
            "Scoring the test split",
        )
        report = test_report(objective, *found, names, _majority(objective, run.records["train"]))
        if not main:
            return metrics
        (run_dir / "test_report.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
        metrics.update({f"test_{k}": v for k, v in report["scores"].items()})
        metrics.update({f"majority_{k}": v for k, v in report["majority_scores"].items()})
        _print_test(objective, report)
    return metrics


def _majority(objective: str, records: list[dict[str, Any]]) -> str:
    if objective == "classify":
        return Counter(r["label"] for r in records).most_common(1)[0][0]
    return "O"


def _print_test(objective: str, report: dict[str, Any]) -> None:
    scores = report["scores"]
    if objective == "classify":
        baseline = report["majority_scores"]
        console.print(
            f"Test ({report['rows']} rows): accuracy {scores['accuracy']:.3f}, "
            f"macro-F1 {scores['macro_f1']:.3f}; "
            f"majority class {report['majority_class']!r}: accuracy {baseline['accuracy']:.3f}, "
            f"macro-F1 {baseline['macro_f1']:.3f}"
        )
    else:
        console.print(
            f"Test ({report['rows']} sentences): entity F1 {scores['f1']:.3f} "
            f"(precision {scores['precision']:.3f}, recall {scores['recall']:.3f}), "
            f"tag accuracy {scores['accuracy']:.3f}; all-'O' baseline: tag accuracy "
            f"{report['majority_scores']['accuracy']:.3f}"
        )
