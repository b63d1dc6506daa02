"""Cross-validation: train on K-1 folds, score on the held-out fold, K times; mean ± std per metric.

The folds come from the data stage (`data.split.folds`, grouped and stratified like the splits);
`tunesmith eval --cv K` prepares the data with K folds when the config asks for another number.
Each fold is its own content-hashed dataset version (train = the other folds, test = this fold),
so every fold's run is reproducible and resumable like any other. Fold runs are recorded as runs
of kind `cv`; they are not registered as versions.
"""

from __future__ import annotations

import gc
import hashlib
import json
import secrets
from pathlib import Path
from typing import Any

import numpy as np

from tunesmith.config import ProjectConfig
from tunesmith.data import DataError, load_split
from tunesmith.evaluate.comparison import SystemResult, score_system
from tunesmith.evaluate.defaults import default_metrics
from tunesmith.evaluate.metrics import Context
from tunesmith.evaluate.runner import eval_items, item_references, model_outputs
from tunesmith.progress import console
from tunesmith.store import DatasetVersion, EvalReport, session
from tunesmith.train.objectives import get_objective
from tunesmith.train.recipe import plan_run
from tunesmith.workspace import Workspace, atomic_dir


def fold_dataset(workspace: Workspace, parent: DatasetVersion, fold: int, folds: int) -> DatasetVersion:
    """The dataset version whose train split is every fold but `fold` and whose test split is `fold`."""
    import pyarrow.parquet as pq

    from tunesmith.data.versions import find_derived, store_derived

    digest = hashlib.sha256(f"{parent.content_hash}:cv:{folds}:{fold}".encode()).hexdigest()
    existing = find_derived(workspace, digest)
    if existing is not None:
        return existing
    rows = load_split(parent, "train", with_meta=True)
    return store_derived(
        workspace,
        digest,
        {
            "train": [r for r in rows if r.get("_fold") != fold],
            "val": load_split(parent, "val", with_meta=True),
            "test": [r for r in rows if r.get("_fold") == fold],
        },
        name=f"{parent.name}-fold{fold}of{folds}",
        source=f"fold {fold} of {folds} of {parent.id}",
        format=parent.format,
        meta={**parent.meta, "cv": {"parent": parent.id, "fold": fold, "folds": folds}},
        schema=pq.read_schema(Path(parent.path) / "train.parquet"),  # a fold may lack a column
    )


def cross_validate(config: ProjectConfig, folds: int, workspace: Workspace | None = None) -> dict[str, Any]:
    """Train and score `folds` times; return (and store) per-fold scores and their mean ± std.

    Raises:
        DataError: fewer than 2 folds, or a fold without rows to train or test on.
    """
    from tunesmith.data import prepare_data
    from tunesmith.workspace import open_workspace

    if folds < 2:
        raise DataError("--cv needs at least 2 folds")
    named = config.train.objective  # auto never picks an objective that mixes datasets
    if named != "auto" and not get_objective(named).cross_validates:
        raise DataError(
            f"--cv works on one dataset; {named} mixes several (evaluate each task's data instead)"
        )
    if config.data.split.folds != folds:
        split = config.data.split.model_copy(update={"folds": folds})
        config = config.model_copy(update={"data": config.data.model_copy(update={"split": split})})
    workspace = workspace or open_workspace(config)
    parent = prepare_data(config, workspace)
    config = plan_run(config, parent, announce=True)
    kind = get_objective(config.train.objective).task
    metrics = config.eval.metrics
    if metrics is None:  # chosen once for every fold, from the rows the folds are cut from
        chosen = default_metrics(
            kind, eval_items(load_split(parent, "train"), parent.meta.get("kind", "sft"))
        )
        metrics = chosen.metrics
        if chosen.reason:
            console.print(f"[dim]{chosen.describe()}[/dim]", highlight=False)
    metrics = [m for m in metrics if m != "judge_score"]
    per_fold = []
    for fold in range(folds):
        console.rule(f"[bold]Fold {fold + 1}/{folds}")
        per_fold.append(
            _run_fold(config, workspace, fold_dataset(workspace, parent, fold, folds), fold, metrics)
        )
    names = list(per_fold[0]["scores"])
    report: dict[str, Any] = {
        "id": f"er-{secrets.token_hex(6)}",
        "family": config.project,
        "task": kind,
        "cv": True,
        "folds": folds,
        "dataset_version": parent.id,
        "metrics": names,
        "per_fold": per_fold,
        "summary": {
            name: {
                "mean": float(np.mean([f["scores"][name] for f in per_fold])),
                "std": float(np.std([f["scores"][name] for f in per_fold], ddof=1)),
                "values": [f["scores"][name] for f in per_fold],
            }
            for name in names
        },
    }
    report["path"] = str(_store(workspace, report, parent))
    return report


def _run_fold(
    config: ProjectConfig, workspace: Workspace, dataset: DatasetVersion, fold: int, metrics: list[str]
) -> dict[str, Any]:
    """Train on the fold's train split, score on its test split; the run is recorded as kind `cv`."""
    from tunesmith.train.run import load_base, run_objective

    if not dataset.counts["train"] or not dataset.counts["test"]:
        raise DataError(f"fold {fold} ({dataset.id}) has no rows to train or test on; use fewer folds")
    base = load_base(config, dataset, workspace)
    result = run_objective(config, workspace, dataset, base, kind="cv")
    row = _fold_row(config, dataset, result, fold, metrics)
    del result, base
    gc.collect()
    return row


def _fold_row(
    config: ProjectConfig, dataset: DatasetVersion, result: Any, fold: int, metrics: list[str]
) -> dict[str, Any]:
    """The fold's report row: its model scored on the held-out fold as `eval` scores a version of its
    objective.

    A reward model's run already scored the held-out pairs (its test split is the fold).
    """
    from tunesmith.train.classify import label_names

    items = eval_items(load_split(dataset, "test"), dataset.meta.get("kind", "sft"))
    row: dict[str, Any] = {
        "fold": fold,
        "dataset": dataset.id,
        "run": result.run_id,
        "train_rows": dataset.counts["train"],
        "test_rows": len(items),
    }
    kind = get_objective(config.train.objective).task
    if kind == "reward":
        row["scores"] = {
            "pairwise_accuracy": float(result.metrics["test_pairwise_accuracy"]),
            "mean_margin": float(result.metrics["test_mean_margin"]),
        }
        return row
    if kind == "classification":
        context = Context(labels=tuple(label_names(config.train.objective, dataset, config.data.labels)))
        references: list[Any] = [str(item["label"]) for item in items]
    else:
        references, context = item_references(kind, items, None)
    outputs, nll = model_outputs(
        kind,
        result.model,
        result.tokenizer,
        items,
        config.eval,
        max_length=config.train.max_length,
        label=f"fold {fold}",
        metrics=metrics,
    )
    system = score_system(
        SystemResult(f"fold {fold}", "cv", None, outputs),
        references,
        items,
        metrics,
        context=context,
        nll=nll,
        resamples=config.eval.bootstrap_resamples,
        seed=config.eval.seed,
    )
    row["scores"] = {name: interval.value for name, interval in system.scores.items()}
    return row


def _store(workspace: Workspace, report: dict[str, Any], parent: DatasetVersion) -> Path:
    from tunesmith.registry.versions import who

    target = workspace.root / "reports" / report["id"]
    with atomic_dir(target) as tmp:
        (tmp / "report.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    with session(workspace.engine) as s:
        s.add(
            EvalReport(
                id=report["id"],
                family=report["family"],
                version_id=None,
                dataset_version_id=parent.id,
                split=f"cv{report['folds']}",
                task=report["task"],
                systems=[{"label": f"fold {f['fold']}", "scores": f["scores"]} for f in report["per_fold"]],
                gate_passed=None,
                gates=[],
                path=str(target),
                created_by=who(),
            )
        )
    return target
