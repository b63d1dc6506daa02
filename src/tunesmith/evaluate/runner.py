"""`tunesmith eval`: score a version beside the base, production and a few-shot prompt, then gate it.

All systems answer the identical items of the candidate's dataset split. Models are loaded one at
a time and freed, generated answers are cached, and the outcome (every score with its interval,
the paired tests, slices, the forgetting probe and the gates) is written as `report.json`,
`report.html` and `answers.jsonl` in the workspace's `reports/ID/`, and recorded in the store.
"""

from __future__ import annotations

import gc
import json
import random
import secrets
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict, Unpack

import numpy as np

from tunesmith.chat import asked
from tunesmith.config import EvalConfig, ProjectConfig
from tunesmith.data import DataError, load_split
from tunesmith.evaluate.comparison import SystemResult, pairwise, score_system, slice_scores, verdict_lines
from tunesmith.evaluate.gates import References, check_gates
from tunesmith.evaluate.metrics import Context, TaskKind, get_metric, metric_names
from tunesmith.evaluate.stats import bootstrap_interval, paired_test
from tunesmith.models.generate import AnswerCache, answer_nll, cache_path, generate_answers, render_prompt
from tunesmith.progress import console
from tunesmith.registry.loading import check_base, load_row
from tunesmith.registry.versions import RegistryError, alias_target, all_metrics, get_version, who
from tunesmith.store import DatasetVersion, EvalReport, ModelVersion, session
from tunesmith.toolcalls import written_answer
from tunesmith.train.objectives import get_objective
from tunesmith.workspace import Workspace, atomic_dir

CACHE_FORMAT = 1


def task_kind(objective: str) -> TaskKind:
    """What a version of this training objective is scored as (the objective table's `task`).

    Raises:
        DataError: for a reward model, which scores answers rather than giving them.
    """
    task = get_objective(objective).task
    if task == "reward":
        raise DataError(f"objective {objective} trains a reward model, which scores answers")
    return task


def judged_and_compared(version: str | None, compare: str | None) -> tuple[str, list[str] | None]:
    """The version an eval judges and the systems it is compared with, from the command line.

    `--compare base,candidate,production` without a version judges `candidate` (else the last
    system that is not the base) against the others.

    Raises:
        DataError: when no version is named either way.
    """
    refs = [r.strip() for r in compare.split(",") if r.strip()] if compare is not None else None
    others = [r for r in refs or [] if r != "base"]
    if version is None and others:
        version = "candidate" if "candidate" in others else others[-1]
        refs = [r for r in refs or [] if r != version]
    if version is None:
        raise DataError(
            "name a version to evaluate (see `tunesmith registry list`), "
            "or --compare base,candidate,production, or --cv K"
        )
    return version, refs


@dataclass
class Subject:
    """A system to evaluate: the base model, a registered version, or the base prompted with examples."""

    ref: str
    label: str
    version: ModelVersion | None = None
    shots: int = 0
    prompted: bool = False  # a classifier's task asked of the base LM (`evaluate.prompted`)


@dataclass
class EvalOutcome:
    report_id: str
    directory: Path
    report: dict[str, Any]
    systems: list[SystemResult] = field(default_factory=list)

    @property
    def gate_passed(self) -> bool | None:
        return self.report["gate_passed"]


def resolve_subjects(
    workspace: Workspace,
    family: str,
    candidate: ModelVersion,
    compare: list[str],
    *,
    few_shot: int,
    explicit: bool,
    aliases: list[str],
) -> tuple[list[Subject], list[str]]:
    """The systems to score, candidate last, and notes on what was skipped.

    `compare` holds `base`, aliases and version names or ids. An alias that is not set is skipped
    with a note when it came from the config's defaults, and is an error when the user named it.
    """
    subjects: list[Subject] = []
    notes: list[str] = []
    seen = {candidate.id}
    for ref in compare:
        if ref == "base":
            subjects.append(Subject("base", "base"))
            if few_shot:
                subjects.append(Subject(f"base+{few_shot}shot", f"base {few_shot}-shot", shots=few_shot))
            continue
        if ref in aliases:
            version = alias_target(workspace, family, ref)
            if version is None:
                if explicit:
                    raise RegistryError(f"alias {ref!r} of {family!r} is not set: no version was moved to it")
                notes.append(f"{ref} is not set in {family}: not compared")
                continue
        else:
            version = get_version(workspace, ref)
        if version.id in seen:
            notes.append(f"{ref} is {version.name}, already compared")
            continue
        seen.add(version.id)
        label = f"{ref} ({version.name})" if ref in aliases else version.name
        subjects.append(Subject(ref, label, version))
    if few_shot and not any(s.shots for s in subjects):
        subjects.insert(0, Subject(f"base+{few_shot}shot", f"base {few_shot}-shot", shots=few_shot))
    subjects.append(Subject(candidate.name, candidate.name, candidate))
    return subjects, notes


@dataclass
class EvalPlan:
    """What one eval run scores: the systems, the items and metrics, and the optional parts."""

    workspace: Workspace
    candidate: ModelVersion
    family: str
    objective: str
    kind: TaskKind
    subjects: list[Subject]
    notes: list[str]
    dataset: DatasetVersion
    items: list[dict[str, Any]]
    references: list[Any]
    context: Context
    metrics: list[str]
    shots: list[dict[str, Any]]
    few_shot: int
    probe_data: tuple[list[dict[str, Any]], list[dict[str, Any]]] | None
    judge: bool
    reward_model: str | None = None
    excluded: list[dict[str, Any]] = field(default_factory=list)  # items left out: a system trained on them
    live: dict[str, dict[str, str]] = field(default_factory=dict)  # gated alias -> the version it serves
    gate_references: References = field(default_factory=dict)  # each gate's `over` -> its version
    # the language model a classifier's task is asked of (`prompted` subjects): the candidate's base,
    # or the project's model when the candidate trained an encoder
    prompted_model: dict[str, Any] | None = None


class EvalOptions(TypedDict, total=False):
    """What an eval run may set beyond the config's `eval` section (None: the section's value)."""

    compare: list[str] | None  # the systems beside the version (default eval.compare)
    few_shot: int | None
    probe: bool | None
    judge: bool | None
    dataset: str | None  # another dataset version's split than the version's own
    reward_model: str | None


def run_eval(
    config: ProjectConfig, ref: str, workspace: Workspace | None = None, **options: Unpack[EvalOptions]
) -> EvalOutcome:
    """Evaluate version (or alias) `ref` against `compare` (default `eval.compare`) and store the report.

    `dataset` evaluates on another dataset version's split than the candidate's own (an incremental
    fine-tune on production feedback is judged on the test split production was judged on).

    Raises:
        RegistryError: an unknown version, or an alias the user named that is not set.
        DataError: a version without a dataset, an empty split, or unusable probe or judge files.
    """
    plan = plan_eval(config, ref, workspace, **options)
    settings = config.eval
    systems, probe_outputs = _score_subjects(plan, config)
    judged = _run_judge(plan, config, systems) if plan.judge else None
    rewarded = _run_reward_model(plan, config, systems) if plan.reward_model else None
    metrics = [*plan.metrics, *(["judge_score"] if judged else []), *(["reward"] if rewarded else [])]
    comparisons = pairwise(
        systems, metrics, resamples=settings.bootstrap_resamples, seed=settings.seed, alpha=settings.alpha
    )
    report: dict[str, Any] = {
        **_report_header(plan, settings, metrics),
        "systems": [s.summary() for s in systems],
        "comparisons": comparisons,
        "verdicts": verdict_lines(comparisons, plan.candidate.name),
        "slices": [
            slice_scores(
                systems,
                plan.items,
                column,
                metrics,
                resamples=settings.bootstrap_resamples,
                seed=settings.seed,
            )
            for column in settings.slices
        ],
        "probe": _probe_report(probe_outputs, plan.probe_data, settings, plan.candidate.name)
        if plan.probe_data
        else None,
        "judge": judged,
        "reward_model": rewarded,
        "per_item": _per_item(plan.kind, plan.items, plan.references, systems, metrics),
        # what the version's records hold beside this eval (parity, a reward model's accuracy...): a
        # threshold gate on a metric this eval does not compute reads it here
        "recorded": {
            name: value
            for name, value in all_metrics(plan.workspace, plan.candidate).items()
            if isinstance(value, int | float) and not isinstance(value, bool)
        },
    }
    report.update(_task_details(plan.kind, plan.references, systems, plan.context))
    gates = check_gates(settings.gates, report, systems, plan.items, settings, plan.gate_references)
    report["gates"] = gates
    report["gate_passed"] = all(g["passed"] for g in gates) if gates else None
    directory = _store_report(plan, report)
    return EvalOutcome(report["id"], directory, report, systems)


def _report_header(plan: EvalPlan, settings: EvalConfig, metrics: list[str]) -> dict[str, Any]:
    """What an eval report says about itself: its id, what was judged on which items, and how."""
    return {
        "id": f"er-{secrets.token_hex(6)}",
        "family": plan.family,
        "version": {"id": plan.candidate.id, "name": plan.candidate.name},
        "candidate": plan.candidate.name,
        "task": plan.kind,
        "objective": plan.objective,
        "dataset_version": plan.dataset.id,
        "split": settings.split,
        "items": len(plan.items),
        "notes": plan.notes,
        "excluded": plan.excluded,
        "live": plan.live,
        "settings": {
            "max_new_tokens": settings.max_new_tokens,
            "decoding": "greedy",
            "seed": settings.seed,
            "few_shot": plan.few_shot,
            "bootstrap_resamples": settings.bootstrap_resamples,
            "alpha": settings.alpha,
            "significance_test": "approximate randomization (paired)",
            "interval": "95% percentile bootstrap",
        },
        "metrics": [_metric_info(name) for name in metrics],
    }


def _store_report(plan: EvalPlan, report: dict[str, Any]) -> Path:
    """Write the report's files and record it in the store; return its folder."""
    directory = _write_report(plan.workspace, report)
    with session(plan.workspace.engine) as s:
        s.add(
            EvalReport(
                id=report["id"],
                family=plan.family,
                version_id=plan.candidate.id,
                dataset_version_id=plan.dataset.id,
                split=report["split"],
                task=plan.kind,
                systems=report["systems"],
                gate_passed=report["gate_passed"],
                gates=report["gates"],
                path=str(directory),
                created_by=who(),
            )
        )
    return directory


def plan_eval(
    config: ProjectConfig,
    ref: str,
    workspace: Workspace | None = None,
    *,
    compare: list[str] | None = None,
    few_shot: int | None = None,
    probe: bool | None = None,
    judge: bool | None = None,
    dataset: str | None = None,
    reward_model: str | None = None,
) -> EvalPlan:
    """Resolve the systems, items and metrics of an eval, failing before any model is loaded."""
    from tunesmith.workspace import open_workspace

    workspace = workspace or open_workspace(config)
    settings = config.eval
    aliases = config.registry.aliases
    candidate = _candidate(workspace, config, ref)
    objective = candidate.config.get("train", {}).get("objective", "sft")
    kind = task_kind(objective)
    few_shot = (settings.few_shot if few_shot is None else few_shot) if kind in PROMPTED_KINDS else 0
    judge = (settings.judge.enabled if judge is None else judge) and kind == "generation"
    subjects, notes = resolve_subjects(
        workspace,
        candidate.family,
        candidate,
        compare if compare is not None else settings.compare,
        few_shot=few_shot,
        explicit=compare is not None,
        aliases=aliases,
    )
    subjects = _baselines(subjects, kind, few_shot)
    prompted_model = None
    if any(subject.prompted for subject in subjects):
        prompted_model, note = _prompted_model(config, candidate)
        notes += [note] if note else []
        if prompted_model is None:
            subjects = [subject for subject in subjects if not subject.prompted]
    data, items = _eval_data(workspace, candidate, dataset, settings.split)
    items, excluded = exclude_trained_on(workspace, subjects, items)
    notes += [f"{row['items']} items excluded: {row['system']} trained on them" for row in excluded]
    if settings.max_items is not None and len(items) > settings.max_items:
        import random

        notes.append(f"a seeded sample of {settings.max_items} of the {len(items)} items (eval.max_items)")
        kept = sorted(random.Random(settings.seed).sample(range(len(items)), settings.max_items))
        items = [items[i] for i in kept]
    metrics, why = _metrics_for(settings, kind, candidate.name, items)
    notes += [why] if why else []
    reward_ref = _reward_model_ref(workspace, (reward_model or settings.reward_model), kind, metrics)
    if "judge_score" in metrics:
        metrics.remove("judge_score")  # the judge adds it
        if not judge:
            raise DataError("eval.metrics lists judge_score: enable eval.judge (or pass --judge)")
    references, context = item_references(kind, items, candidate)
    return EvalPlan(
        workspace=workspace,
        candidate=candidate,
        family=candidate.family,
        objective=objective,
        kind=kind,
        subjects=subjects,
        notes=notes,
        dataset=data,
        items=items,
        references=references,
        context=context,
        metrics=metrics,
        shots=_shots(data, few_shot, settings.seed) if few_shot else [],
        few_shot=few_shot,
        probe_data=_probe_inputs(config) if (settings.probe.enabled if probe is None else probe) else None,
        judge=judge,
        reward_model=reward_ref,
        excluded=excluded,
        live=_live_versions(workspace, candidate.family, config.registry.gated),
        gate_references=_gate_references(workspace, candidate.family, settings, aliases),
        prompted_model=prompted_model,
    )


def _live_versions(workspace: Workspace, family: str, gated: list[str]) -> dict[str, dict[str, str]]:
    """The version each gated alias serves now: what a promotion through it will be measured against."""
    live = {}
    for alias in gated:
        version = alias_target(workspace, family, alias)
        if version is not None:
            live[alias] = {"id": version.id, "name": version.name}
    return live


def _gate_references(
    workspace: Workspace, family: str, settings: EvalConfig, aliases: list[str]
) -> References:
    """The version each gate's `over` names now (by id), so a gate never mistakes one system for another.

    Raises:
        RegistryError: an `over` that is neither base, an alias nor a known version.
    """
    references: References = {}
    for gate in settings.gates:
        if gate.over == "base" or gate.over in references:
            continue
        version = alias_target(workspace, family, gate.over) if gate.over in aliases else None
        if version is None and gate.over not in aliases:
            try:
                version = get_version(workspace, gate.over)
            except RegistryError:
                raise RegistryError(
                    f"eval.gates: over {gate.over!r} is neither base, an alias ({', '.join(aliases)}) "
                    "nor a registered version"
                ) from None
        references[gate.over] = {"id": version.id, "name": version.name} if version else None
    return references


def _candidate(workspace: Workspace, config: ProjectConfig, ref: str) -> ModelVersion:
    """The version `ref` names (or the version the alias points to); a reward model is refused.

    Raises:
        RegistryError: an unknown version, or an alias that is not set.
        DataError: for a reward model, which scores answers rather than giving them.
    """
    aliases = config.registry.aliases
    candidate = (
        alias_target(workspace, config.project, ref) if ref in aliases else get_version(workspace, ref)
    )
    if candidate is None:
        raise RegistryError(f"alias {ref!r} of {config.project!r} is not set")
    if get_objective(candidate.config.get("train", {}).get("objective", "sft")).task == "reward":
        accuracy = candidate.metrics.get("test_pairwise_accuracy")
        raise DataError(
            f"{candidate.name} is a reward model: its held-out pairwise accuracy is "
            + (f"{accuracy:.3f}" if accuracy is not None else "in its metrics")
            + f"; evaluate generators with it through eval.reward_model: {candidate.name}"
        )
    return candidate


def _eval_data(
    workspace: Workspace, candidate: ModelVersion, dataset: str | None, split: str
) -> tuple[DatasetVersion, list[dict[str, Any]]]:
    """The dataset version to evaluate on (the candidate's own unless `dataset`) and its split's items."""
    dataset_id = dataset or candidate.dataset_version_id
    if dataset_id is None:
        raise DataError(f"{candidate.name} records no dataset version to evaluate on")
    with session(workspace.engine) as s:
        data = s.get(DatasetVersion, dataset_id)
    if data is None:
        raise DataError(f"no dataset version {dataset_id}; see `tunesmith data list`")
    items = eval_items(load_split(data, split), data.meta.get("kind", "sft"))
    if not items:
        raise DataError(f"dataset {data.id} has no {split} rows to evaluate on")
    return data, items


def exclude_trained_on(
    workspace: Workspace, subjects: list[Subject], items: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The items no compared version trained on (same normalised prompt in the train split of its
    dataset version, or of a version it was fine-tuned from), and one row per system that had some.

    Raises:
        DataError: when every item was trained on by some system: nothing fair is left to compare on.
    """
    from tunesmith.data.clean import dedup_key, prompt_text

    keys = [dedup_key(prompt_text(item)) for item in items]
    dropped: set[int] = set()
    excluded: list[dict[str, Any]] = []
    for subject in subjects:
        if subject.version is None:
            continue
        seen = _trained_prompts(workspace, subject.version)
        hits = {i for i, key in enumerate(keys) if key in seen}
        if hits:
            excluded.append({"system": subject.label, "version_id": subject.version.id, "items": len(hits)})
            dropped |= hits
    if dropped and len(dropped) == len(items):
        names = ", ".join(str(row["system"]) for row in excluded)
        raise DataError(
            f"every one of the {len(items)} items was trained on by {names}; evaluate on a split none of "
            "the compared versions trained on (--dataset)"
        )
    return [item for i, item in enumerate(items) if i not in dropped], excluded


def _trained_prompts(workspace: Workspace, version: ModelVersion) -> set[str]:
    """The normalised prompts of every train row behind `version` (its parents' included)."""
    from tunesmith.data.clean import dedup_key, prompt_text

    prompts: set[str] = set()
    current: ModelVersion | None = version
    while current is not None:
        with session(workspace.engine) as s:
            data = s.get(DatasetVersion, current.dataset_version_id) if current.dataset_version_id else None
        if data is not None and Path(data.path).is_dir():
            kind = data.meta.get("kind", "sft")
            prompts |= {dedup_key(prompt_text(r)) for r in eval_items(load_split(data, "train"), kind)}
        current = get_version(workspace, current.parent_id) if current.parent_id else None
    return prompts


def _metrics_for(
    settings: EvalConfig, kind: TaskKind, name: str, items: list[dict[str, Any]]
) -> tuple[list[str], str | None]:
    """`eval.metrics`, or the defaults for what the items are (and why); an unknown or mismatched
    metric fails before any load."""
    from tunesmith.evaluate.defaults import default_metrics

    chosen = default_metrics(kind, items) if settings.metrics is None else None
    metrics = list(chosen.metrics if chosen is not None else settings.metrics or [])
    if kind == "generation" and chosen is not None:
        metrics.append("perplexity")
    for metric in metrics:
        metric_kind = get_metric(metric).kind
        if metric_kind != kind and not (kind == "generation" and metric_kind == "lm"):
            raise DataError(
                f"eval.metrics: {metric} is a {metric_kind} metric and {name} is a {kind} model; "
                f"its metrics: {', '.join(metric_names(kind))}"
            )
    return metrics, chosen.describe() if chosen is not None and chosen.reason else None


def _reward_model_ref(
    workspace: Workspace, ref: str | None, kind: TaskKind, metrics: list[str]
) -> str | None:
    """The reward model that scores this eval (checked before any model loads); `reward` leaves `metrics`."""
    ref = ref if kind == "generation" else None
    if ref is not None:
        reward_version = get_version(workspace, ref)  # an unknown name fails here
        if reward_version.config.get("train", {}).get("objective") != "reward":
            raise DataError(
                f"eval.reward_model: {reward_version.name} is not a reward model (objective reward)"
            )
    if "reward" in metrics:
        metrics.remove("reward")  # the reward model adds it
        if ref is None:
            raise DataError("eval.metrics lists reward: set eval.reward_model (or pass --reward-model)")
    return ref


def eval_items(records: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    """Rows as eval items: preference rows become chat rows whose reference answer is the chosen one.

    A DPO version is evaluated on its own test pairs: it answers each prompt, and the task metrics
    compare its answer with the preferred one's last message (as for a chat row, the turns before it,
    such as a call and the tool's result, are context it is given). Thumbs-up rows count the same
    way; thumbs-down are left out (there is no good answer to compare with).
    """
    if kind not in ("preference", "unpaired"):
        return records
    from tunesmith.data.formats import as_messages
    from tunesmith.train.preference import pair_messages

    items = []
    for record in records:
        meta = {k: v for k, v in record.items() if k not in ("prompt", "chosen", "rejected", "completion")}
        if kind == "unpaired":
            if not record["label"]:
                continue
            messages = as_messages(record["prompt"], "user") + as_messages(record["completion"], "assistant")
        else:
            prompt, chosen, _ = pair_messages(record)
            messages = prompt + chosen
        items.append({**meta, "messages": messages})
    return items


def _run_reward_model(plan: EvalPlan, config: ProjectConfig, systems: list[SystemResult]) -> dict[str, Any]:
    """Every system's answers scored by the reward model (metric `reward`), and the version's win rate
    against each other system: the share of items where its answer scores higher (ties count half)."""
    from tunesmith.registry.reward import RewardModel

    assert plan.reward_model is not None
    scorer = RewardModel(plan.workspace, plan.reward_model)
    prompts = [item["messages"][:-1] for item in plan.items]
    rewards: dict[str, list[float]] = {}
    metric = get_metric("reward")
    settings = config.eval
    for system in systems:
        scores = scorer.score(
            prompts, [str(a) for a in system.outputs], label=f"Reward model on {system.label}"
        )
        rewards[system.label] = scores
        system.stats["reward"] = np.array([[s, 1.0] for s in scores]).reshape(-1, 2)
        system.scores["reward"] = bootstrap_interval(
            system.stats["reward"], metric.score, resamples=settings.bootstrap_resamples, seed=settings.seed
        )
    del scorer
    gc.collect()
    pairs = []
    candidate = systems[-1]
    for other in systems[:-1]:
        outcomes = [
            "win" if c > o else "loss" if c < o else "tie"
            for c, o in zip(rewards[candidate.label], rewards[other.label], strict=True)
        ]
        pairs.append(_pairwise_summary(candidate.label, other.label, outcomes, config))
    return {"model": plan.reward_model, "pairwise": pairs, "scores": rewards}


def _score_subjects(
    plan: EvalPlan, config: ProjectConfig
) -> tuple[list[SystemResult], dict[str, dict[str, Any]]]:
    """Every subject's outputs and scores (models loaded one at a time), in the subjects' order."""
    settings = config.eval
    systems: list[SystemResult] = []
    probe_outputs: dict[str, dict[str, Any]] = {}
    for subject in _ordered_for_loading(plan.subjects):
        wants_probe = subject.ref == "base" or subject.version is plan.candidate
        result, nll, probed = _run_subject(subject, plan, config, plan.probe_data if wants_probe else None)
        score_system(
            result,
            plan.references,
            plan.items,
            plan.metrics,
            context=plan.context,
            nll=nll,
            resamples=settings.bootstrap_resamples,
            seed=settings.seed,
        )
        systems.append(result)
        if probed is not None:
            probe_outputs[result.label] = probed
    systems.sort(key=lambda r: [s.label for s in plan.subjects].index(r.label))
    return systems, probe_outputs


def _run_judge(plan: EvalPlan, config: ProjectConfig, systems: list[SystemResult]) -> dict[str, Any]:
    """G-Eval scores for every system (added as metric judge_score), pairwise outcomes, calibration."""
    from tunesmith.evaluate import judge as judging

    settings = config.eval.judge
    judge = judging.make_judge(settings, lambda ref: _load_judge_model(ref, plan, config))
    run = judging.start(settings, judge, plan.workspace.root / "eval_cache")
    count = min(len(plan.items), settings.max_items or len(plan.items))
    prompts = [asked(item["messages"]) for item in plan.items[:count]]
    references = [r if settings.use_reference else None for r in plan.references[:count]]
    report: dict[str, Any] = {
        "judge": judge.identity,
        "criteria": run.criteria,
        "steps": run.steps,
        "items": count,
    }
    if settings.calibration:
        path = Path(settings.calibration)
        path = path if path.is_absolute() else config.base_dir / path
        report["calibration"] = judging.calibrate(
            run, judging.load_calibration(path), settings.min_agreement, settings.min_calibration_rows
        )
    else:
        report["calibration"] = None
    score = get_metric("judge_score")
    for system in systems:
        scores = judging.score_all(
            run,
            [(p, str(a), r) for p, a, r in zip(prompts, system.outputs[:count], references, strict=True)],
            f"Judging {system.label}",
        )
        stats = np.array([[s, 1.0] if s is not None else [0.0, 0.0] for s in scores]).reshape(-1, 2)
        if count < len(plan.items):  # unjudged items weigh nothing
            stats = np.vstack([stats, np.zeros((len(plan.items) - count, 2))])
        system.stats["judge_score"] = stats
        system.scores["judge_score"] = bootstrap_interval(
            stats, score.score, resamples=config.eval.bootstrap_resamples, seed=config.eval.seed
        )
    report["pairwise"] = []
    if settings.pairwise and len(systems) > 1:
        candidate = systems[-1]
        for other in systems[:-1]:
            outcomes = judging.compare_all(
                run,
                [
                    (p, str(c), str(o), r)
                    for p, c, o, r in zip(
                        prompts, candidate.outputs[:count], other.outputs[:count], references, strict=True
                    )
                ],
                f"Judging {candidate.label} vs {other.label}",
            )
            report["pairwise"].append(_pairwise_summary(candidate.label, other.label, outcomes, config))
    return report


def _pairwise_summary(
    candidate: str, other: str, outcomes: list[str], config: ProjectConfig
) -> dict[str, Any]:
    """Win/tie/loss counts and the win rate (ties count half) with its bootstrap interval."""
    counts = Counter(outcomes)
    stats = np.array([[{"win": 1.0, "tie": 0.5, "loss": 0.0}[o], 1.0] for o in outcomes]).reshape(-1, 2)
    interval = bootstrap_interval(
        stats,
        get_metric("judge_score").score,
        resamples=config.eval.bootstrap_resamples,
        seed=config.eval.seed,
    )
    return {
        "candidate": candidate,
        "other": other,
        "win": counts["win"],
        "tie": counts["tie"],
        "loss": counts["loss"],
        "win_rate": interval.as_dict(),
        "outcomes": outcomes,
    }


def _load_judge_model(ref: str, plan: EvalPlan, config: ProjectConfig) -> tuple[Any, Any, str]:
    version = None if ref == "base" else get_version(plan.workspace, ref)
    model, tokenizer, identity = _load(Subject(ref, ref, version), plan.candidate, plan.workspace)
    return model, tokenizer, identity


def _probe_inputs(config: ProjectConfig) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    from tunesmith.evaluate.probe import load_questions, load_text

    probe = config.eval.probe
    return load_questions(probe, config.base_dir, config.eval.seed), load_text(probe, config.base_dir)


# the task kinds whose base model few-shot prompting can be scored: generation (answers) and
# classification (each label's likelihood as the answer); a tagger's base is all O
PROMPTED_KINDS = ("generation", "classification")


def _baselines(subjects: list[Subject], kind: TaskKind, few_shot: int) -> list[Subject]:
    """A new head's base only guesses: it is the majority class (all O for a tagger). With few-shot
    on, a classifier is also compared with the base LM prompted zero-shot and with k examples."""
    out = []
    for subject in subjects:
        if subject.ref == "base" and kind in ("classification", "tagging"):
            subject.label = "majority" if kind == "classification" else "all O"
            out.append(subject)
            if kind == "classification" and few_shot:
                out.append(Subject("base+0shot", "base 0-shot", prompted=True))
            continue
        subject.prompted = kind == "classification" and subject.shots > 0
        out.append(subject)
    return out


def _prompted_model(config: ProjectConfig, candidate: ModelVersion) -> tuple[dict[str, Any] | None, str]:
    """The model a classifier's prompted baselines ask, and a note when it is not the candidate's base:
    an encoder cannot be prompted, so a version trained on one (`train.encoder`) is compared with the
    project's language model asked the same task; None when neither writes."""
    from tunesmith.models import model_info
    from tunesmith.models.catalog import ModelNotFoundError

    def writes(model: dict[str, Any]) -> bool:
        try:
            info = model_info(model["id"], model.get("source", "auto"), model.get("revision"))
        except (ModelNotFoundError, OSError, ValueError):
            return True  # unknown here: loading it says what it is
        return info.kind != "encoder"

    base = candidate.config["model"]
    if writes(base):
        return base, ""
    project = config.model.model_dump(mode="json")
    if writes(project):
        return project, (
            f"base 0-shot and {config.eval.few_shot}-shot ask {project['id']} (the project's model.id): "
            f"{candidate.name} was trained on the encoder {base['id']}, which cannot be prompted"
        )
    return None, f"no prompted baselines: {base['id']} is an encoder, which cannot be prompted"


def _ordered_for_loading(subjects: list[Subject]) -> list[Subject]:
    """Few-shot right after base: the base model is loaded once for both."""
    return sorted(subjects, key=lambda s: 0 if s.version is None else 1)


def _shots(dataset: DatasetVersion, k: int, seed: int) -> list[dict[str, Any]]:
    train = [r for r in load_split(dataset, "train") if "messages" in r or "label" in r]
    if len(train) < k:
        raise DataError(f"few-shot k={k} but dataset {dataset.id} has only {len(train)} train rows")
    return random.Random(seed).sample(train, k)


def item_references(
    kind: TaskKind, items: list[dict[str, Any]], candidate: ModelVersion | None
) -> tuple[list[Any], Context]:
    if kind == "classification":
        assert candidate is not None, "a classifier's labels come from its version"
        from tunesmith.models.loading import read_labels

        labels = tuple(read_labels(Path(candidate.path)))
        return [str(item["label"]) for item in items], Context(labels=labels)
    if kind == "tagging":
        return [list(item["tags"]) for item in items], Context()
    if kind == "lm":
        return [item["text"] for item in items], Context()
    return [written_answer(item["messages"][-1]) for item in items], Context()


def _run_subject(
    subject: Subject,
    plan: EvalPlan,
    config: ProjectConfig,
    probe_data: tuple[list[dict[str, Any]], list[dict[str, Any]]] | None,
) -> tuple[SystemResult, list[tuple[float, int]] | None, dict[str, Any] | None]:
    """Load one subject's model, collect its outputs (and likelihoods, probe answers), free it."""
    from tunesmith.evaluate.probe import run_probe

    settings = config.eval
    candidate, kind, items, dataset, shots = plan.candidate, plan.kind, plan.items, plan.dataset, plan.shots
    cache_dir = plan.workspace.root / "eval_cache"
    result = SystemResult(subject.label, subject.ref, subject.version.id if subject.version else None, [])
    if kind in ("classification", "tagging") and subject.version is None:
        result.outputs = (
            _prompted(subject, plan, shots) if subject.prompted else _majority(kind, dataset, items)
        )
        return result, None, None
    model, tokenizer, identity = _load(subject, candidate, plan.workspace)
    probed = None
    try:
        cache = None
        if kind == "generation":
            use_shots = shots if subject.shots else []
            cache = AnswerCache(
                cache_path(
                    cache_dir,
                    identity,
                    {
                        "format": CACHE_FORMAT,
                        "dataset": dataset.id,
                        "split": settings.split,
                        "max_new_tokens": settings.max_new_tokens,
                        "decoding": "greedy",
                        "seed": settings.seed,
                        "shots": [render_prompt(tokenizer, s) for s in use_shots],
                    },
                )
            )
        result.outputs, nll = model_outputs(
            kind,
            model,
            tokenizer,
            items,
            settings,
            max_length=candidate.config["train"]["max_length"],
            label=subject.label,
            shots=shots if subject.shots else [],
            cache=cache,
            metrics=plan.metrics,
        )
        if probe_data is not None and kind not in ("classification", "tagging") and not subject.shots:
            probed = run_probe(model, tokenizer, *probe_data, settings.probe.scoring)
    finally:
        del model
        gc.collect()
    return result, nll, probed


def model_outputs(
    kind: TaskKind,
    model: Any,
    tokenizer: Any,
    items: list[dict[str, Any]],
    settings: EvalConfig,
    *,
    max_length: int,
    label: str,
    shots: list[dict[str, Any]] | None = None,
    cache: AnswerCache | None = None,
    metrics: list[str] | None = None,
) -> tuple[list[Any], list[tuple[float, int]] | None]:
    """A loaded model's outputs on `items` (answers, labels or tag lists) and, for LMs, the reference
    answers' likelihoods when a metric of `metrics` reads them (None: always)."""
    if kind in ("classification", "tagging"):
        from tunesmith.train.classify import predict

        objective = "classify" if kind == "classification" else "tag"
        _, predicted = predict(
            objective, model, tokenizer, items, max_length, settings.batch_size, f"Asking {label}"
        )
        return predicted, None
    nll_batch = max(1, settings.batch_size // 2)
    if kind == "lm":
        return ["" for _ in items], answer_nll(model, tokenizer, items, batch_size=nll_batch)
    answers = generate_answers(
        model,
        tokenizer,
        items,
        max_new_tokens=settings.max_new_tokens,
        batch_size=settings.batch_size,
        label=f"Asking {label}",
        shots=shots or [],
        seed=settings.seed,
        cache=cache,
    )
    if cache is not None and cache.hits:
        console.print(f"{label}: {cache.hits} of {len(items)} answers from the cache")
    wanted = metrics is None or any(get_metric(m).kind == "lm" for m in metrics)
    nll = answer_nll(model, tokenizer, items, batch_size=nll_batch) if wanted and not shots else None
    return answers, nll


def _load(
    subject: Subject, candidate: ModelVersion, workspace: Workspace, model: dict[str, Any] | None = None
) -> tuple[Any, Any, str]:
    """(model, tokenizer, identity for the answer cache) of a subject: a version, or the base (`model`
    instead of the candidate's, for prompted baselines that ask another model)."""
    if subject.version is not None:
        loaded, tokenizer = load_row(subject.version, workspace)
        return loaded, tokenizer, f"{subject.version.id}:{subject.version.weights_sha256}"
    from tunesmith.models import load_configured

    model_cfg = model or candidate.config["model"]
    dtype = ProjectConfig.model_validate({**candidate.config, "model": model_cfg}).weights_dtype
    base = load_configured(model_cfg, dtype)
    if model_cfg == candidate.config["model"]:
        check_base(candidate, base.base_revision, "comparing with the base of")
    return base.model, base.tokenizer, f"{model_cfg['id']}@{base.base_revision}:{dtype}"


def _prompted(subject: Subject, plan: EvalPlan, shots: list[dict[str, Any]]) -> list[str]:
    """A classifier's items asked of the base LM (`evaluate.prompted`), with the subject's shots."""
    from tunesmith.evaluate.prompted import prompted_labels

    model, tokenizer, _ = _load(subject, plan.candidate, plan.workspace, plan.prompted_model)
    try:
        return prompted_labels(
            model,
            tokenizer,
            plan.items,
            plan.context.labels,
            shots if subject.shots else [],
            label=f"Asking {subject.label}",
        )
    finally:
        del model
        gc.collect()


def _majority(kind: TaskKind, dataset: DatasetVersion, items: list[dict[str, Any]]) -> list[Any]:
    train = load_split(dataset, "train")
    if kind == "classification":
        majority = Counter(str(r["label"]) for r in train).most_common(1)[0][0]
        return [majority] * len(items)
    return [["O"] * len(item["tags"]) for item in items]


def _metric_info(name: str) -> dict[str, Any]:
    metric = get_metric(name)
    return {
        "name": name,
        "kind": metric.kind,
        "description": metric.description,
        "higher_is_better": metric.higher_is_better,
        "scale": metric.scale,
        "signature": metric.signature() if metric.signature else None,
    }


def _per_item(
    kind: TaskKind,
    items: list[dict[str, Any]],
    references: list[Any],
    systems: list[SystemResult],
    metrics: list[str],
) -> list[dict[str, Any]]:
    rows = []
    for i, item in enumerate(items):
        if kind == "generation":
            prompt: Any = asked(item["messages"])
        elif kind == "classification":
            prompt = item["text"]
        elif kind == "tagging":
            prompt = " ".join(item["tokens"])
        else:
            prompt = item["text"][:200]
        reference = references[i] if kind != "tagging" else " ".join(references[i])
        rows.append(
            {
                "index": i,
                "prompt": prompt,
                "reference": reference if kind != "lm" else "",
                "outputs": {
                    s.label: (" ".join(s.outputs[i]) if kind == "tagging" else s.outputs[i]) for s in systems
                },
                "scores": {
                    s.label: {m: s.item_scores(get_metric(m), i) for m in metrics if m in s.stats}
                    for s in systems
                },
            }
        )
    return rows


def _task_details(
    kind: TaskKind, references: list[Any], systems: list[SystemResult], context: Context
) -> dict[str, Any]:
    """Confusion matrices and per-class figures (classification), per-type (tagging), lengths (generation)."""
    if kind == "classification":
        from sklearn.metrics import classification_report, confusion_matrix

        labels = list(context.labels) or sorted(set(references))
        return {
            "classification": {
                "labels": labels,
                "systems": {
                    s.label: {
                        "confusion_matrix": confusion_matrix(references, s.outputs, labels=labels).tolist(),
                        "per_class": json.loads(
                            json.dumps(
                                classification_report(
                                    references, s.outputs, labels=labels, output_dict=True, zero_division=0
                                ),
                                default=float,
                            )
                        ),
                    }
                    for s in systems
                },
            }
        }
    if kind == "tagging":
        from seqeval.metrics import classification_report

        return {
            "tagging": {
                s.label: json.loads(
                    json.dumps(
                        classification_report(references, s.outputs, output_dict=True, zero_division=0),
                        default=float,
                    )
                )
                for s in systems
            }
        }
    if kind == "generation":
        lengths = {"reference": [len(str(r).split()) for r in references]}
        lengths.update({s.label: [len(str(o).split()) for o in s.outputs] for s in systems})
        return {
            "lengths": {
                label: {
                    "mean": float(np.mean(values)),
                    "median": float(np.median(values)),
                    "p95": float(np.percentile(values, 95)),
                    "max": int(max(values)),
                    "values": values,
                }
                for label, values in lengths.items()
            }
        }
    return {}


def _probe_report(
    outputs: dict[str, dict[str, Any]],
    probe_data: tuple[list[dict[str, Any]], list[dict[str, Any]]],
    settings: Any,
    candidate: str,
) -> dict[str, Any]:
    """Probe accuracy and general perplexity of base and candidate, and the candidate's change."""
    questions, texts = probe_data
    perplexity = get_metric("perplexity")
    stats: dict[str, dict[str, np.ndarray]] = {}
    for label, out in outputs.items():
        correct = np.array(
            [[float(c == q["answer"]), 1.0] for c, q in zip(out["choices"], questions, strict=True)]
        )
        stats[label] = {
            "probe_accuracy": correct,
            "general_perplexity": perplexity.compute(out["nll"], [], [], None)[1],
        }
    scorers = {"probe_accuracy": _share, "general_perplexity": perplexity.score}
    systems = {
        label: {
            name: bootstrap_interval(
                values, scorers[name], resamples=settings.bootstrap_resamples, seed=settings.seed
            ).as_dict()
            for name, values in by_metric.items()
        }
        for label, by_metric in stats.items()
    }
    comparison = {}
    if "base" in stats and candidate in stats:
        for name, scorer in scorers.items():
            test = paired_test(
                stats["base"][name],
                stats[candidate][name],
                scorer,
                higher_is_better=name == "probe_accuracy",
                resamples=settings.bootstrap_resamples,
                seed=settings.seed,
                alpha=settings.alpha,
            )
            comparison[name] = test.as_dict()
    subjects = Counter(q["subject"] for q in questions)
    return {
        "questions": len(questions),
        "texts": len(texts),
        "scoring": settings.probe.scoring,
        "subjects": dict(subjects),
        "systems": systems,
        "change": comparison,  # candidate minus base
    }


def _share(sums: np.ndarray) -> float:
    return float(sums[0] / sums[1]) if sums[1] else 0.0


def _write_report(workspace: Workspace, report: dict[str, Any]) -> Path:
    from tunesmith.evaluate.html import render_html

    target = workspace.root / "reports" / report["id"]
    with atomic_dir(target) as tmp:
        (tmp / "report.json").write_text(
            json.dumps(report, indent=2, ensure_ascii=False, default=float), encoding="utf-8"
        )
        with (tmp / "answers.jsonl").open("w", encoding="utf-8") as handle:
            for row in report["per_item"]:
                handle.write(json.dumps(row, ensure_ascii=False, default=float) + "\n")
        (tmp / "report.html").write_text(render_html(report), encoding="utf-8")
    return target
