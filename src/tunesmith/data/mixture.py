"""Multi-task mixtures: several instruction datasets, each with a weight and an instruction template,
mixed into one stored dataset version whose train split is the run's whole row stream, in order.

With `schedule: linear` each task's share moves from its `start_weight` to its `weight` over the
run (progressive learning: start mostly on general data, end mostly on the new task). The stream
is fixed when the mixture is stored, so a resumed run sees exactly the rows it would have seen.
Small tasks are repeated (each pass in a fresh order) when their share asks for more rows than
they have.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from typing import Any

from tunesmith.config import ProjectConfig, TaskConfig
from tunesmith.data.prepare import DataError, TargetModel, get_dataset, load_split, prepare_for_project
from tunesmith.data.versions import find_derived, store_derived
from tunesmith.store import DatasetVersion
from tunesmith.workspace import Workspace

PHASES = 10  # a linear schedule changes the shares in this many steps over the run
SPLITS = ("train", "val", "test")


def task_weights(tasks: list[TaskConfig], schedule: str, progress: float) -> list[float]:
    """Each task's share at `progress` (0 = start of the run, 1 = end), summing to 1."""
    raw = []
    for task in tasks:
        start = task.weight if task.start_weight is None or schedule == "constant" else task.start_weight
        raw.append(start + (task.weight - start) * progress)
    total = sum(raw)
    if total <= 0:
        raise DataError("train.tasks: every task has weight 0 at some point of the schedule")
    return [w / total for w in raw]


def apply_template(record: dict[str, Any], task: TaskConfig) -> dict[str, Any]:
    """The record with the task's template around its last user message and the task's system prompt."""
    messages = [dict(m) for m in record["messages"]]
    if task.template is not None:
        last_user = max(i for i, m in enumerate(messages) if m["role"] == "user")
        messages[last_user]["content"] = task.template.replace("{prompt}", messages[last_user]["content"])
    if task.system_prompt is not None:
        if messages[0]["role"] == "system":
            messages[0]["content"] = task.system_prompt
        else:
            messages.insert(0, {"role": "system", "content": task.system_prompt})
    return {**record, "messages": messages, "task": task.name}


def mixture_stream(
    rows: dict[str, list[dict[str, Any]]],
    tasks: list[TaskConfig],
    schedule: str,
    total: int,
    seed: int,
) -> list[dict[str, Any]]:
    """`total` rows drawn from the tasks by their (scheduled) shares, in training order."""
    rng = random.Random(seed)
    pools: dict[str, list[dict[str, Any]]] = {t.name: [] for t in tasks}

    def draw(name: str) -> dict[str, Any]:
        if not pools[name]:  # a new pass over the task's rows, in a fresh order
            pools[name] = rng.sample(rows[name], len(rows[name]))
        return pools[name].pop()

    stream: list[dict[str, Any]] = []
    phases = PHASES if schedule == "linear" else 1
    for phase in range(phases):
        size = total * (phase + 1) // phases - total * phase // phases
        shares = task_weights(tasks, schedule, phase / (phases - 1) if phases > 1 else 1.0)
        counts = _apportion(size, shares)
        chunk = [draw(task.name) for task, n in zip(tasks, counts, strict=True) for _ in range(n)]
        rng.shuffle(chunk)
        stream += chunk
    return stream


def _apportion(size: int, shares: list[float]) -> list[int]:
    """Whole row counts for the shares that add up to `size` (largest remainders)."""
    exact = [size * s for s in shares]
    counts = [math.floor(x) for x in exact]
    for i in sorted(range(len(shares)), key=lambda i: exact[i] - counts[i], reverse=True)[
        : size - sum(counts)
    ]:
        counts[i] += 1
    return counts


def prepare_mixture(config: ProjectConfig, workspace: Workspace, model: TargetModel) -> DatasetVersion:
    """Prepare (or look up) every task's dataset version (rows measured for `model`) and store the
    mixture as a dataset version.

    Raises:
        DataError: for a task whose rows are not instruction (chat) rows, or that has no train rows.
    """
    train = config.train
    sources: dict[str, DatasetVersion] = {}
    for task in train.tasks:
        if task.data is not None:
            try:
                version = prepare_for_project(config, workspace, task.data, model, name=task.name)
            except DataError as exc:
                raise DataError(f"train.tasks, task {task.name!r}: {exc}") from None
        else:
            assert task.dataset is not None
            version = get_dataset(workspace, task.dataset)
        kind = version.meta.get("kind", "sft")
        if kind != "sft":
            raise DataError(
                f"train.tasks, task {task.name!r}: dataset {version.id} holds {kind} rows; "
                "a multitask mixture takes instruction/chat rows (the data stage's sft kind)"
            )
        sources[task.name] = version
    splits = {
        split: {
            t.name: [apply_template(r, t) for r in load_split(sources[t.name], split)] for t in train.tasks
        }
        for split in SPLITS
    }
    per_epoch = train.mixture_rows or sum(len(rows) for rows in splits["train"].values())
    total = max(1, round(per_epoch * train.num_train_epochs))
    recipe: dict[str, Any] = {
        "tasks": [
            {**t.model_dump(mode="json", exclude={"data"}), "dataset": sources[t.name].id}
            for t in train.tasks
        ],
        "schedule": train.schedule,
        "rows_per_epoch": per_epoch,
        "epochs": train.num_train_epochs,
        "rows": total,
        "seed": train.seed,
    }
    digest = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()
    existing = find_derived(workspace, digest)
    if existing is not None:
        return existing
    stream = mixture_stream(splits["train"], train.tasks, train.schedule, total, train.seed)
    held_out = {split: [r for t in train.tasks for r in splits[split][t.name]] for split in ("val", "test")}
    recipe["rows_per_task"] = {t.name: sum(1 for r in stream if r["task"] == t.name) for t in train.tasks}
    return store_derived(
        workspace,
        digest,
        {"train": stream, **held_out},
        name=f"{config.project}-mixture",
        source="mixture of " + ", ".join(f"{n} ({v.id})" for n, v in sources.items()),
        format="chat",
        meta={"kind": "sft", "mixture": recipe, "order": "sequential"},
    )
