"""`tunesmith improve`: production requests and their feedback → a new dataset → a gated candidate in shadow.

1. Select the served version's requests by time, score conditions and feedback kind.
2. Corrections become SFT rows (the request's conversation, the corrected answer); preferences,
   corrections (corrected over original) and good-vs-bad answers to the same prompt become DPO
   pairs, stored as a preference dataset version for preference training.
3. Both go through the data stage — dedup, PII scrub, and decontamination against the
   test split production is judged on — into a dataset version whose lineage names the requests.
4. An incremental fine-tune starts from the production version (`train.init_from`).
5. The new version is evaluated against production on production's test split, with `eval.gates`.
6. Only a passing gate report moves the `shadow` alias to it; never production.
"""

from __future__ import annotations

import dataclasses
import json
import re
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import select

from tunesmith.config import ProjectConfig
from tunesmith.registry.versions import move_alias, resolve_name
from tunesmith.store import DatasetVersion, Feedback, ModelVersion, RequestLog, RequestScore, session
from tunesmith.workspace import Workspace

CONDITION = re.compile(r"^([a-z0-9_]+)\s*(<=|>=|<|>)\s*(-?\d+(?:\.\d+)?)$")


class ImproveError(ValueError):
    """Nothing to improve from, or a filter that cannot be read: the message says which."""


@dataclass
class Selection:
    """Which requests `improve` learns from."""

    model: str  # family@alias, family, or a version
    since: timedelta | None = None
    where: list[str] = field(default_factory=list)  # score conditions such as "relevance<0.3"
    feedback: tuple[str, ...] = ("correction", "preference", "rating")
    limit: int | None = None
    drift_cluster: bool = False  # only the cluster of requests least like the training data


@dataclass
class ImproveOutcome:
    folder: Path
    production: ModelVersion
    requests: list[str]
    sft_rows: int
    dpo_rows: int
    dataset: DatasetVersion | None = None
    preference_dataset: DatasetVersion | None = None
    version: ModelVersion | None = None
    report: dict[str, Any] | None = None
    shadow: bool = False
    notes: list[str] = field(default_factory=list)


def parse_condition(text: str) -> tuple[str, str, float]:
    match = CONDITION.match(text.replace(" ", ""))
    if match is None:
        raise ImproveError(f"--where {text!r}: write SCORE<VALUE, e.g. relevance<0.3 or refusal>=1")
    return match.group(1), match.group(2), float(match.group(3))


def select_requests(workspace: Workspace, production: ModelVersion, selection: Selection) -> list[RequestLog]:
    """The version's answered requests (not shadow ones) that pass the selection's time, score and
    drift filters, oldest first."""
    from tunesmith.monitor.alerts import OPS

    conditions = [parse_condition(c) for c in selection.where]
    with session(workspace.engine) as s:
        query = select(RequestLog).where(
            RequestLog.version_id == production.id, RequestLog.status == 200, RequestLog.route != "shadow"
        )
        if selection.since is not None:
            query = query.where(RequestLog.at >= datetime.now(UTC) - selection.since)
        requests = {r.id: r for r in s.scalars(query.order_by(RequestLog.at))}
        scores: dict[str, dict[str, float]] = {}
        if conditions:
            for score in s.scalars(select(RequestScore).where(RequestScore.request_id.in_(requests))):
                scores.setdefault(score.request_id, {})[score.name] = score.value
    if selection.drift_cluster:
        requests = _least_like_training(workspace, production, requests)
    if conditions:
        requests = {
            rid: r
            for rid, r in requests.items()
            if all(
                name in scores.get(rid, {}) and OPS[op](scores[rid][name], value)
                for name, op, value in conditions
            )
        }
    chosen = list(requests.values())
    return chosen[-selection.limit :] if selection.limit else chosen


def select_examples(
    workspace: Workspace, production: ModelVersion, selection: Selection
) -> tuple[list[str], list[dict[str, Any]], list[dict[str, Any]]]:
    """(request ids used, SFT rows, DPO rows) from the version's logged requests and their feedback."""
    unlimited = dataclasses.replace(selection, limit=None)  # the limit counts rows, not requests
    requests = {r.id: r for r in select_requests(workspace, production, unlimited)}
    with session(workspace.engine) as s:
        feedback = list(
            s.scalars(select(Feedback).where(Feedback.request_id.in_(requests)).order_by(Feedback.id))
        )
    sft: list[dict[str, Any]] = []
    dpo: list[dict[str, Any]] = []
    rated: dict[str, list[tuple[float, str, str]]] = {}  # prompt key -> (goodness, answer, request id)
    used: list[str] = []
    for item in feedback:
        request = requests.get(item.request_id)
        if request is None or not request.output:
            continue
        _learn(item, request, selection.feedback, sft, dpo, rated)
        if request.id not in used:
            used.append(request.id)
    for key, answers in rated.items():  # good-vs-bad answers to the same conversation
        goods = [a for a in answers if a[0] == 1.0]
        bads = [a for a in answers if a[0] == 0.0]
        for (_, chosen, chosen_id), (_, rejected, rejected_id) in zip(goods, bads, strict=False):
            if chosen != rejected:
                dpo.append(
                    {
                        "prompt": json.loads(key),
                        "chosen": chosen,
                        "rejected": rejected,
                        "origin": {"request_ids": [chosen_id, rejected_id]},
                    }
                )
    if selection.limit is not None:
        sft, dpo = sft[: selection.limit], dpo[: selection.limit]
    return used, sft, dpo


def _least_like_training(
    workspace: Workspace, production: ModelVersion, requests: dict[str, RequestLog]
) -> dict[str, RequestLog]:
    """The requests in the k-means cluster of prompts least like the version's training prompts."""
    from tunesmith.monitor.drift import drift_clusters, reference_texts
    from tunesmith.monitor.scorers import prompt_of

    if len(requests) < 3:
        return requests
    _, reference, _ = reference_texts(workspace, production)
    ids = list(requests)
    labels, similarity = drift_clusters(reference, [prompt_of({"prompt": requests[i].prompt}) for i in ids])
    drifted = int(np.argmin(similarity))
    return {i: requests[i] for i, label in zip(ids, labels, strict=True) if label == drifted}


def _learn(
    item: Feedback,
    request: RequestLog,
    kinds: tuple[str, ...],
    sft: list[dict[str, Any]],
    dpo: list[dict[str, Any]],
    rated: dict[str, list[tuple[float, str, str]]],
) -> None:
    """Add what one piece of feedback teaches: an SFT row, DPO pairs, or a rated answer."""
    messages = request_messages(request.prompt)
    answer = str(request.output[min(item.choice, len(request.output) - 1)])
    origin = {"request_id": request.id, "feedback_id": item.id}
    if item.correction and "correction" in kinds:
        sft.append(
            {"messages": [*messages, {"role": "assistant", "content": item.correction}], "origin": origin}
        )
        dpo.append({"prompt": messages, "chosen": item.correction, "rejected": answer, "origin": origin})
    if item.preference and "preference" in kinds:
        dpo.append({"prompt": messages, **item.preference, "origin": origin})
    if item.rating is not None and "rating" in kinds:
        good = item.rating >= (4 if item.scale == "stars" else 0.5)
        bad = item.rating <= (2 if item.scale == "stars" else 0.5) and not good
        if good or bad:
            rated.setdefault(json.dumps(messages, sort_keys=True), []).append(
                (float(good), answer, request.id)
            )


def request_messages(prompt: Any) -> list[dict[str, str]]:
    """A logged request's prompt (chat messages, or a completion prompt) as chat messages."""
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], dict):
        return [{"role": m["role"], "content": m["content"]} for m in prompt]
    text = prompt[0] if isinstance(prompt, list) else prompt
    return [{"role": "user", "content": str(text)}]


def improve(
    config: ProjectConfig,
    workspace: Workspace,
    selection: Selection,
    *,
    train: bool = True,
    objective: str = "sft",
) -> ImproveOutcome:
    """Run the loop (see the module doc); with `train=False` stop after writing the datasets.

    `objective` `sft` fine-tunes on the corrections; `dpo` optimises on the preference pairs
    (train.preference decides the loss), both starting from the production version.
    """
    if objective not in ("sft", "dpo"):
        raise ImproveError(f"objective {objective!r}: improve trains sft (on corrections) or dpo (on pairs)")
    from tunesmith.data import prepare_data

    production = resolve_name(workspace, selection.model)
    used, sft, dpo = select_examples(workspace, production, selection)
    folder, lineage = _write_examples(workspace, production, selection, used, sft, dpo)
    outcome = ImproveOutcome(folder, production, used, len(sft), len(dpo))
    eval_dataset = production.dataset_version_id
    contamination = [*config.data.contamination, *_held_out_split(workspace, config, eval_dataset, folder)]
    pairs = _derived(config, folder / "preferences.jsonl", "preference", contamination)
    if dpo:
        origins = [r["origin"] for r in dpo]
        pairs.train = pairs.train.model_copy(update={"init_from": production.name, "objective": "dpo"})
        outcome.preference_dataset = prepare_data(pairs, workspace, lineage={**lineage, "rows": origins})
    improved = _derived(config, folder / "sft.jsonl", "chat", contamination)
    improved.train = improved.train.model_copy(update={"init_from": production.name})
    if sft:
        outcome.dataset = prepare_data(improved, workspace, lineage=lineage)
    if objective == "dpo":
        if not dpo:
            outcome.notes.append("no preference pairs among the selected requests: nothing to optimise on")
            return outcome
        improved = pairs
    elif not sft:
        outcome.notes.append(
            "no corrections among the selected requests, so no SFT rows: nothing to fine-tune on"
            + (f"; train on the {len(dpo)} preference pair(s) with --objective dpo" if dpo else "")
        )
        return outcome
    if not train:
        return outcome
    return _train_and_shadow(improved, workspace, production, eval_dataset, outcome)


def _write_examples(
    workspace: Workspace,
    production: ModelVersion,
    selection: Selection,
    used: list[str],
    sft: list[dict[str, Any]],
    dpo: list[dict[str, Any]],
) -> tuple[Path, dict[str, Any]]:
    """A new `improve/imp-…` folder with the SFT rows, the preference pairs and their lineage."""
    folder = workspace.root / "improve" / f"imp-{datetime.now(UTC):%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"
    folder.mkdir(parents=True)
    _write_jsonl(folder / "sft.jsonl", [{"messages": r["messages"]} for r in sft])
    _write_jsonl(folder / "preferences.jsonl", [{k: v for k, v in r.items() if k != "origin"} for r in dpo])
    lineage = {
        "source": "production",
        "version": production.name,
        "requests": used,
        "rows": [r["origin"] for r in sft],
        "selection": {
            "model": selection.model,
            "since": str(selection.since or ""),
            "where": selection.where,
            "drift_cluster": selection.drift_cluster,
        },
    }
    (folder / "lineage.json").write_text(
        json.dumps({**lineage, "preference_rows": [r["origin"] for r in dpo]}, indent=2)
    )
    return folder, lineage


def _held_out_split(
    workspace: Workspace, config: ProjectConfig, dataset_id: str | None, folder: Path
) -> list[str]:
    """The split production was judged on, written out so the new rows are decontaminated against it."""
    from tunesmith.data.prepare import load_split

    if dataset_id is None:
        return []
    with session(workspace.engine) as s:
        judged_on = s.get(DatasetVersion, dataset_id)
    if judged_on is None:
        return []
    _write_jsonl(folder / "eval_split.jsonl", load_split(judged_on, config.eval.split))
    return [str(folder / "eval_split.jsonl")]


def _train_and_shadow(
    improved: ProjectConfig,
    workspace: Workspace,
    production: ModelVersion,
    eval_dataset: str | None,
    outcome: ImproveOutcome,
) -> ImproveOutcome:
    """Train the candidate, judge it against production on production's split, and shadow it if the
    gates pass."""
    from tunesmith.evaluate.runner import run_eval
    from tunesmith.train.run import train as train_version

    trained = train_version(improved, workspace)
    outcome.version = trained.version
    evaluated = run_eval(
        improved, trained.version.name, workspace, compare=["base", production.name], dataset=eval_dataset
    )
    outcome.report = evaluated.report
    if evaluated.report.get("gate_passed"):
        move_alias(
            workspace,
            production.family,
            "shadow",
            trained.version,
            reason=f"improve from {production.name} feedback",
            gate_report_id=evaluated.report["id"],
            action="promote",
        )
        outcome.shadow = True
        return outcome
    outcome.notes.append(
        "the gates did not pass (or none are set under eval.gates), so shadow was not moved: "
        + "; ".join(
            f"{g.get('gate')}: {g.get('detail')}"
            for g in evaluated.report.get("gates", [])
            if not g.get("passed")
        )
    )
    return outcome


def _derived(config: ProjectConfig, path: Path, fmt: str, contamination: list[str]) -> ProjectConfig:
    """The project config with `data` pointed at production-derived rows: all train, decontaminated."""
    derived = config.model_copy(deep=True)
    derived.data = derived.data.model_copy(
        update={
            "path": str(path),
            "format": fmt,
            "contamination": contamination,
            "split": derived.data.split.model_copy(update={"val": 0.0, "test": 0.0}),
        }
    )
    return derived.with_base_dir(config.base_dir)


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    partial = path.with_name(f".{path.name}.tmp")
    partial.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    partial.replace(path)
