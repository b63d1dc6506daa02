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

import hashlib
import json
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import exists, func, select

from tunesmith.chat import answer_message, numbered_call_id
from tunesmith.config import ProjectConfig
from tunesmith.monitor.feedback import is_negative, is_positive
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
    holdout: float = 0.2  # share of the corrected requests kept out of training, to measure the candidate on
    rehearse: float = 0.0  # share of production's own training rows trained on again beside the corrections


@dataclass
class ImproveOutcome:
    folder: Path
    production: ModelVersion
    requests: list[str]
    sft_rows: int
    dpo_rows: int
    matched: int = 0  # logged requests that passed the selection's filters
    feedback_rows: int = 0  # feedback rows read on them
    held_out: list[str] = field(default_factory=list)  # corrected requests kept out of training
    corrected: dict[str, Any] | None = None  # the report of the candidate vs production on them
    attempts: list[dict[str, Any]] = field(default_factory=list)  # {guard, version, report, failed}
    rehearsed: int = 0  # production's own training rows trained on again
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


CHUNK = 1000  # rows a query streams at a time: improve reads any size of log in bounded memory


def request_conditions(production: ModelVersion, selection: Selection) -> list[Any]:
    """SQL conditions on `RequestLog` for the version's answered requests (not shadow ones) that pass
    the selection's time and score filters; a score filter is an EXISTS on the request's scores, so
    no list of request ids is ever built."""
    from tunesmith.monitor.alerts import OPS

    conditions: list[Any] = [
        RequestLog.version_id == production.id,
        RequestLog.status == 200,
        RequestLog.route != "shadow",
    ]
    if selection.since is not None:
        conditions.append(RequestLog.at >= datetime.now(UTC) - selection.since)
    compare: dict[str, Callable[[Any, float], Any]] = dict(OPS)  # on a column, they build SQL
    for name, op, value in (parse_condition(c) for c in selection.where):
        conditions.append(
            exists().where(
                RequestScore.request_id == RequestLog.id,
                RequestScore.name == name,
                compare[op](RequestScore.value, value),
            )
        )
    return conditions


def select_requests(workspace: Workspace, production: ModelVersion, selection: Selection) -> list[RequestLog]:
    """The version's answered requests (not shadow ones) that pass the selection's time, score and
    drift filters, oldest first."""
    query = select(RequestLog).where(*request_conditions(production, selection)).order_by(RequestLog.at)
    with session(workspace.engine) as s:
        requests = {r.id: r for r in s.scalars(query.execution_options(yield_per=CHUNK))}
    if selection.drift_cluster:
        drifted = _least_like_training(workspace, production, {i: r.prompt for i, r in requests.items()})
        requests = {i: r for i, r in requests.items() if i in drifted}
    chosen = list(requests.values())
    return chosen[-selection.limit :] if selection.limit else chosen


@dataclass
class Examples:
    """What `select_examples` found: the rows it made and how many log rows it read for them."""

    used: list[str] = field(default_factory=list)  # request ids that taught something, in order
    sft: list[dict[str, Any]] = field(default_factory=list)
    dpo: list[dict[str, Any]] = field(default_factory=list)
    matched: int = 0  # logged requests that pass the selection's filters
    feedback: int = 0  # feedback rows read on those requests


def select_examples(workspace: Workspace, production: ModelVersion, selection: Selection) -> Examples:
    """SFT rows and DPO pairs from the feedback on the version's selected requests.

    The feedback and its requests are streamed from the store in chunks of `CHUNK` rows, joined in
    SQL: memory grows with the rows made, never with the size of the request log.
    """
    conditions = request_conditions(production, selection)
    found = Examples()
    with session(workspace.engine) as s:
        found.matched = int(s.scalar(select(func.count()).select_from(RequestLog).where(*conditions)) or 0)
    allowed = _drift_cluster_ids(workspace, production, conditions) if selection.drift_cluster else None
    # prompt key -> (goodness, answer, request id)
    rated: dict[str, list[tuple[float, dict[str, Any], str]]] = {}
    seen: set[str] = set()
    query = (
        select(Feedback, RequestLog)
        .join(RequestLog, RequestLog.id == Feedback.request_id)
        .where(*conditions)
        .order_by(Feedback.id)
        .execution_options(yield_per=CHUNK)
    )
    with session(workspace.engine) as s:
        for item, request in s.execute(query):
            found.feedback += 1
            if not request.output or (allowed is not None and request.id not in allowed):
                continue
            taught = _learn(item, request, selection.feedback, found.sft, found.dpo, rated)
            if taught and request.id not in seen:
                seen.add(request.id)
                found.used.append(request.id)
    found.dpo += _rated_pairs(rated)
    if selection.limit is not None:
        found.sft, found.dpo = found.sft[: selection.limit], found.dpo[: selection.limit]
    return found


def _rated_pairs(rated: dict[str, list[tuple[float, dict[str, Any], str]]]) -> list[dict[str, Any]]:
    """DPO pairs of a well-rated and a badly-rated answer to the same conversation."""
    pairs = []
    for key, answers in rated.items():
        goods = [a for a in answers if a[0] == 1.0]
        bads = [a for a in answers if a[0] == 0.0]
        for (_, chosen, chosen_id), (_, rejected, rejected_id) in zip(goods, bads, strict=False):
            if chosen != rejected:
                pairs.append(
                    {
                        **json.loads(key),
                        "chosen": [chosen],
                        "rejected": [rejected],
                        "origin": {"request_ids": [chosen_id, rejected_id]},
                    }
                )
    return pairs


def _drift_cluster_ids(workspace: Workspace, production: ModelVersion, conditions: list[Any]) -> set[str]:
    """The ids of the requests with feedback in the cluster of prompts least like the training data."""
    query = (
        select(RequestLog.id, RequestLog.prompt)
        .where(*conditions, exists().where(Feedback.request_id == RequestLog.id))
        .execution_options(yield_per=CHUNK)
    )
    with session(workspace.engine) as s:
        prompts = {rid: prompt for rid, prompt in s.execute(query)}
    return _least_like_training(workspace, production, prompts)


def _least_like_training(workspace: Workspace, production: ModelVersion, prompts: dict[str, Any]) -> set[str]:
    """The ids (keys of `prompts`: request id -> logged prompt) in the k-means cluster of prompts
    least like the version's training prompts."""
    from tunesmith.monitor.drift import drift_clusters, reference_texts
    from tunesmith.monitor.scorers import prompt_of

    if len(prompts) < 3:
        return set(prompts)
    _, reference, _ = reference_texts(workspace, production)
    ids = list(prompts)
    labels, similarity = drift_clusters(reference, [prompt_of({"prompt": prompts[i]}) for i in ids])
    drifted = int(np.argmin(similarity))
    return {i for i, label in zip(ids, labels, strict=True) if label == drifted}


def _learn(
    item: Feedback,
    request: RequestLog,
    kinds: tuple[str, ...],
    sft: list[dict[str, Any]],
    dpo: list[dict[str, Any]],
    rated: dict[str, list[tuple[float, dict[str, Any], str]]],
) -> bool:
    """Add what one piece of feedback teaches: an SFT row, DPO pairs, or a rated answer; False when
    it is of a kind the selection leaves out."""
    messages, tools = request_messages(request.prompt), request_tools(request)
    said = served_as(request)
    answer = said(str(request.output[min(item.choice, len(request.output) - 1)]))
    origin = {"request_id": request.id, "feedback_id": item.id}
    if item.correction and "correction" in kinds:
        corrected = said(item.correction)
        sft.append({"messages": [*messages, corrected], **tools, "origin": origin})
        pair = {"prompt": messages, "chosen": [corrected], "rejected": [answer]}
        dpo.append({**pair, **tools, "origin": origin})
    if item.preference and "preference" in kinds:
        sides = {k: [said(str(v))] if k in ("chosen", "rejected") else v for k, v in item.preference.items()}
        dpo.append({"prompt": messages, **sides, **tools, "origin": origin})
    if item.rating is not None and "rating" in kinds:
        good = is_positive(item.rating, item.scale)
        bad = is_negative(item.rating, item.scale)
        if good or bad:
            key = json.dumps({"prompt": messages, **tools}, sort_keys=True)
            rated.setdefault(key, []).append((float(good), answer, request.id))
    return bool(
        (item.correction and "correction" in kinds)
        or (item.preference and "preference" in kinds)
        or (item.rating is not None and "rating" in kinds)
    )


def request_tools(request: RequestLog) -> dict[str, Any]:
    """The tools a logged request showed the model, as a data row holds them: `{"tools": [...]}`, or
    nothing when it offered none or forbade calls (`tool_choice: none`: the server shows none)."""
    params = request.params or {}
    shown = params.get("tools") if params.get("tool_choice") != "none" else None
    return {"tools": shown} if shown else {}


def served_as(request: RequestLog) -> Callable[[str], dict[str, Any]]:
    """How an answer to a logged request reads as an assistant message: as the server sent it (a
    trace apart, the calls as tool_calls where tools were shown), with call ids that are the same
    each time, so the same answer is the same row."""
    calling = bool(request_tools(request))
    return lambda text: answer_message(text, calling, numbered_call_id)


def request_messages(prompt: Any) -> list[dict[str, Any]]:
    """A logged request's prompt (chat messages, or a completion prompt) as chat messages."""
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], dict):  # calls and traces kept
        from tunesmith.chat import MESSAGE_EXTRAS

        keep = ("role", "content", *MESSAGE_EXTRAS)
        return [{k: m[k] for k in keep if m.get(k) is not None or k == "content"} for m in prompt]
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
    found = select_examples(workspace, production, selection)
    held = hold_out(found.sft, selection.holdout)
    used, sft = found.used, found.sft
    dpo = [r for r in found.dpo if not held & set(_origin_requests(r))]  # no held-out answer leaks in
    rehearsed = rehearsal_rows(workspace, production, selection.rehearse)
    folder, lineage = _write_examples(workspace, production, selection, used, sft, dpo, held, rehearsed)
    outcome = ImproveOutcome(folder, production, used, len(sft), len(dpo), found.matched, found.feedback)
    outcome.held_out, outcome.rehearsed = sorted(held), len(rehearsed)
    if found.sft and not held:
        outcome.notes.append(
            f"{len(found.sft)} correction(s): too few to hold any out ({HOLDOUT_MIN} needed), so the "
            "candidate is not measured on corrected items it did not train on"
        )
    eval_dataset = judged_on(workspace, production)
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


HOLDOUT_MIN = 5  # corrections needed before any is held out


def judged_on(workspace: Workspace, version: ModelVersion) -> str | None:
    """The dataset version whose test split `version` is judged on: its own; or, for a version
    `improve` made (its own test split holds only the held-out corrections), its parent's, back
    to the first version trained on the project's data."""
    seen: set[str] = set()
    current: ModelVersion | None = version
    while current is not None and current.id not in seen and current.dataset_version_id is not None:
        seen.add(current.id)
        with session(workspace.engine) as s:
            dataset = s.get(DatasetVersion, current.dataset_version_id)
            parent = s.get(ModelVersion, current.parent_id) if current.parent_id else None
        if dataset is None or (dataset.meta or {}).get("lineage", {}).get("source") != "production":
            return current.dataset_version_id
        current = parent
    return version.dataset_version_id


def rehearsal_rows(workspace: Workspace, production: ModelVersion, share: float) -> list[dict[str, Any]]:
    """A seeded `share` of the rows production was trained on, to train on again beside the
    corrections (rehearsal): a fine-tune on a few corrections alone forgets what production knew."""
    import random

    from tunesmith.data.prepare import load_split

    if share <= 0 or production.dataset_version_id is None:
        return []
    with session(workspace.engine) as s:
        dataset = s.get(DatasetVersion, production.dataset_version_id)
    if dataset is None:
        return []
    rows = [{"messages": r["messages"]} for r in load_split(dataset, "train") if r.get("messages")]
    return random.Random(0).sample(rows, round(len(rows) * min(share, 1.0)))


def hold_out(sft: list[dict[str, Any]], share: float) -> set[str]:
    """The corrected requests kept out of training: a `share` of them (at least one, once there are
    `HOLDOUT_MIN`), chosen by a hash of the request id, so the same log holds out the same ones."""
    corrected = list(dict.fromkeys(r["origin"]["request_id"] for r in sft))
    if share <= 0 or len(corrected) < HOLDOUT_MIN:
        return set()
    count = min(len(corrected) - 1, max(1, round(len(corrected) * share)))
    return set(sorted(corrected, key=lambda rid: hashlib.sha256(rid.encode()).hexdigest())[:count])


def _origin_requests(row: dict[str, Any]) -> list[str]:
    origin = row["origin"]
    return list(origin.get("request_ids") or [origin["request_id"]])


def _write_examples(
    workspace: Workspace,
    production: ModelVersion,
    selection: Selection,
    used: list[str],
    sft: list[dict[str, Any]],
    dpo: list[dict[str, Any]],
    held: set[str],
    rehearsed: list[dict[str, Any]],
) -> tuple[Path, dict[str, Any]]:
    """A new `improve/imp-…` folder with the SFT rows (the held-out corrections in the test split,
    production's rehearsed rows in train), the preference pairs and their lineage."""
    folder = workspace.root / "improve" / f"imp-{datetime.now(UTC):%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"
    folder.mkdir(parents=True)
    _write_jsonl(
        folder / "sft.jsonl",
        [
            *(
                {"messages": r["messages"], "split": "test" if r["origin"]["request_id"] in held else "train"}
                for r in sft
            ),
            *({**r, "split": "train"} for r in (rehearsed if sft else [])),
        ],
    )
    _write_jsonl(folder / "preferences.jsonl", [{k: v for k, v in r.items() if k != "origin"} for r in dpo])
    lineage = {
        "source": "production",
        "version": production.name,
        "requests": used,
        "rows": [r["origin"] for r in sft],
        "held_out": sorted(held),
        "rehearsed": {"rows": len(rehearsed), "from": production.dataset_version_id},
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
    """Train the candidate, judge it against production on production's split (again with the next
    forgetting guard while the forgetting gate fails), and shadow it if the gates pass."""
    _try_guards(improved, workspace, production, eval_dataset, outcome)
    assert outcome.version is not None and outcome.report is not None
    candidate, report = outcome.version, outcome.report
    worse = _measure_on_corrections(improved, workspace, candidate, production, outcome)
    if worse:
        outcome.notes.append(
            f"on the corrected items it did not train on, {candidate.name} is worse than "
            f"{production.name} ({'; '.join(worse)}), so shadow was not moved"
        )
        return outcome
    if report.get("gate_passed"):
        move_alias(
            workspace,
            production.family,
            "shadow",
            candidate,
            reason=f"improve from {production.name} feedback",
            gate_report_id=report["id"],
            action="promote",
        )
        outcome.shadow = True
        return outcome
    outcome.notes.append(
        "the gates did not pass (or none are set under eval.gates), so shadow was not moved: "
        + "; ".join(_failed_gates(report))
    )
    return outcome


def _try_guards(
    improved: ProjectConfig,
    workspace: Workspace,
    production: ModelVersion,
    eval_dataset: str | None,
    outcome: ImproveOutcome,
) -> None:
    """Train and evaluate as configured, then with each forgetting guard (`train.forgetting
    .max_attempts` of them) while the forgetting gate fails; every attempt is listed in `attempts`
    (and `attempts.json`), and the outcome's version is the last one tried."""
    from tunesmith.evaluate.runner import run_eval
    from tunesmith.train.forgetting import remedies
    from tunesmith.train.run import train as train_version

    judged = improved.train.forgetting.model_copy(update={"auto": False})  # the gates judge here
    first = improved.model_copy(update={"train": improved.train.model_copy(update={"forgetting": judged})})
    tries = [("as configured", first), *[(r.label, r.config) for r in remedies(first)]]
    for guard, config in tries:
        trained = train_version(config, workspace)
        evaluated = run_eval(
            config, trained.version.name, workspace, compare=["base", production.name], dataset=eval_dataset
        )
        outcome.version, outcome.report = trained.version, evaluated.report
        failed = _failed_gates(evaluated.report)
        outcome.attempts.append(
            {
                "guard": guard,
                "version": trained.version.name,
                "report": evaluated.report["id"],
                "failed": failed,
            }
        )
        (outcome.folder / "attempts.json").write_text(json.dumps(outcome.attempts, indent=2))
        if not any(g.get("kind") == "forgetting" and not g.get("passed") for g in evaluated.report["gates"]):
            return


def _failed_gates(report: dict[str, Any]) -> list[str]:
    return [f"{g.get('gate')}: {g.get('detail')}" for g in report.get("gates", []) if not g.get("passed")]


def _measure_on_corrections(
    improved: ProjectConfig,
    workspace: Workspace,
    candidate: ModelVersion,
    production: ModelVersion,
    outcome: ImproveOutcome,
) -> list[str]:
    """Evaluate the candidate against production on exactly the corrected requests held out of its
    training (the test split of the improve dataset), keep the report, and return the metrics on which
    the candidate is significantly worse there."""
    from tunesmith.evaluate.runner import run_eval

    if outcome.dataset is None or not outcome.dataset.counts.get("test"):
        return []
    settings = improved.model_copy(deep=True)
    settings.eval = settings.eval.model_copy(update={"gates": [], "split": "test"})
    measured = run_eval(
        settings,
        candidate.name,
        workspace,
        compare=[production.name],
        dataset=outcome.dataset.id,
        probe=False,
        judge=False,
    )
    outcome.corrected = measured.report
    return [line for line in measured.report["verdicts"] if f"{candidate.name} is worse" in line]


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
