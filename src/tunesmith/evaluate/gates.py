"""Promotion gates: thresholds, significant improvement, forgetting limits, per-slice non-inferiority,
and the built-in no-regression check.

Each gate gives a row {gate, kind, passed, detail}; `tunesmith eval --gate` exits non-zero when
any row fails, and the registry's promote requires a report whose gates all passed, made against
the version the alias points to. A gate's `over` names a system by what it is (base, an alias, a
version name or id) and is matched by version id, however the system was named on the command line.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tunesmith.config import EvalConfig, GateConfig
from tunesmith.evaluate.comparison import SystemResult, pairwise
from tunesmith.evaluate.metrics import get_metric
from tunesmith.evaluate.stats import paired_test

# what `over` resolves to: a version's {"id", "name"}, or None for an alias that is not set
References = dict[str, dict[str, str] | None]


@dataclass
class Evidence:
    """What every gate is checked against: the report, its systems (candidate last), the items,
    the eval settings and what each gate's `over` names."""

    report: dict[str, Any]
    systems: list[SystemResult]
    items: list[dict[str, Any]]
    settings: EvalConfig
    references: References


def check_gates(
    gates: list[GateConfig],
    report: dict[str, Any],
    systems: list[SystemResult],
    items: list[dict[str, Any]],
    settings: EvalConfig,
    references: References | None = None,
) -> list[dict[str, Any]]:
    """Every configured gate, checked against the report of a candidate (the last system), then the
    no-regression check against each live version in the report (`report["live"]`)."""
    rows = []
    for gate in gates:
        spec = gate.model_dump(exclude_defaults=True)
        try:
            _judge_is_trusted(gate, report)
            evidence = Evidence(report, systems, items, settings, references or {})
            passed, detail = _CHECKS[gate.kind](gate, evidence)
        except _UncheckedError as exc:
            passed, detail = False, str(exc)
        rows.append({"gate": spec, "kind": gate.kind, "passed": passed, "detail": detail})
    if gates and len(items) < settings.min_items:
        excluded = sum(row["items"] for row in report.get("excluded") or [])
        detail = f"{len(items)} items are too few to gate on (eval.min_items: {settings.min_items})"
        if excluded:
            detail += f"; {excluded} were left out because a compared system trained on them"
        rows.append(
            {
                "gate": {"min_items": settings.min_items},
                "kind": "min_items",
                "passed": False,
                "detail": detail,
            }
        )
    if gates and settings.no_regression:
        rows += no_regression(gated_metrics(gates, report, systems), report, systems, settings)
    return rows


def gated_metrics(gates: list[GateConfig], report: dict[str, Any], systems: list[SystemResult]) -> list[str]:
    """The metrics the gates judge the candidate on (every computed one when only forgetting is gated);
    judge scores only from a judge calibrated to gate."""
    candidate = systems[-1]
    named = [g.metric for g in gates if g.kind != "forgetting"] or list(candidate.stats)
    trusted = []
    for name in dict.fromkeys(named):
        try:
            _judge_is_trusted(GateConfig(metric=name, min=0.0), report)
        except _UncheckedError:
            continue
        if name in candidate.stats:
            trusted.append(name)
    return trusted


def no_regression(
    metrics: list[str], report: dict[str, Any], systems: list[SystemResult], settings: EvalConfig
) -> list[dict[str, Any]]:
    """One row per live version compared in the report: failed when the candidate is significantly
    worse than it on any of `metrics` (paired test at `eval.no_regression_alpha`)."""
    candidate, rows = systems[-1], []
    for alias, live in (report.get("live") or {}).items():
        other = next((s for s in systems[:-1] if s.version_id == live["id"]), None)
        if other is None or live["id"] == candidate.version_id:
            continue
        tests = pairwise(
            [other, candidate],
            metrics,
            resamples=settings.bootstrap_resamples,
            seed=settings.seed,
            alpha=settings.no_regression_alpha,
        )
        worse = [
            f"{t['metric']} {candidate.scores[t['metric']].value:.4g} vs "
            f"{other.scores[t['metric']].value:.4g} (p={t['p_value']:.3g})"
            for t in tests
            if t["verdict"] == "worse"  # the test is the candidate (b) against the live version (a)
        ]
        who = f"{alias} ({live['name']})"
        spec = {"no_regression": alias, "version": live["name"], "alpha": settings.no_regression_alpha}
        detail = (
            f"significantly worse than {who}: {'; '.join(worse)}"
            if worse
            else f"no gated metric is significantly worse than {who} ({', '.join(metrics) or 'none'})"
        )
        rows.append({"gate": spec, "kind": "no_regression", "passed": not worse, "detail": detail})
    return rows


class _UncheckedError(Exception):
    """A gate that cannot be checked (its metric or reference is missing): it fails, saying why."""


def _judge_is_trusted(gate: GateConfig, report: dict[str, Any]) -> None:
    """Judge scores gate nothing until the judge has been shown to agree with humans."""
    if gate.metric != "judge_score":
        return
    calibration = (report.get("judge") or {}).get("calibration")
    if not calibration:
        raise _UncheckedError(
            "judge_score may gate only a calibrated judge: set eval.judge.calibration to human-labelled rows"
        )
    if not calibration["calibrated"]:
        low, high = calibration.get("spearman_interval") or (float("nan"), float("nan"))
        if calibration["scored"] < calibration.get("min_rows", 0):
            raise _UncheckedError(
                f"the judge was calibrated on {calibration['scored']} scored rows; gating needs at least "
                f"{calibration['min_rows']} (eval.judge.min_calibration_rows): label more rows"
            )
        raise _UncheckedError(
            f"the judge agrees too little with humans to gate (Spearman {calibration['spearman']:.2f}, "
            f"95% interval [{low:.2f}, {high:.2f}], whose lower bound must reach "
            f"{calibration['min_agreement']:.2f}, on {calibration['scored']} rows)"
        )


def _candidate_metric(gate: GateConfig, systems: list[SystemResult]) -> SystemResult:
    candidate = systems[-1]
    if gate.metric not in candidate.scores:
        raise _UncheckedError(
            f"metric {gate.metric!r} was not computed (computed: {', '.join(candidate.scores) or 'none'})"
        )
    return candidate


def _reference(
    gate: GateConfig, systems: list[SystemResult], references: References
) -> tuple[SystemResult, str]:
    """The system `over` names, matched by version id; base (or the majority class) when `over` is an
    alias that is not set."""
    others = systems[:-1]
    target = references.get(gate.over)
    if gate.over == "base" or (target is None and gate.over not in references):
        found = [s for s in others if gate.over in (s.ref, s.label)]
    else:
        found = [s for s in others if target is not None and s.version_id == target["id"]]
    if found:
        return found[0], ""
    if target is not None:
        raise _UncheckedError(
            f"{gate.over} ({target['name']}) is not in this report: compare with it "
            f"(`--compare base,{gate.over}`)"
        )
    for system in others:
        if system.ref == "base":
            return system, f"{gate.over} is not set; compared with {system.label} instead. "
    raise _UncheckedError(f"neither {gate.over!r} nor base is in this report to compare with")


def _against_reference(gate: GateConfig, ev: Evidence) -> tuple[SystemResult, str, Any]:
    """(reference system, note on a fallback, paired test of the candidate against it on some items)."""
    systems, settings = ev.systems, ev.settings
    candidate = _candidate_metric(gate, systems)
    other, note = _reference(gate, systems, ev.references)
    if gate.metric not in other.stats:
        raise _UncheckedError(f"{other.label} has no {gate.metric} to compare with")
    metric = get_metric(gate.metric)

    def compare(index: list[int] | None) -> Any:
        rows = slice(None) if index is None else index
        return paired_test(
            other.stats[gate.metric][rows],
            candidate.stats[gate.metric][rows],
            metric.score,
            higher_is_better=metric.higher_is_better,
            resamples=settings.bootstrap_resamples,
            seed=settings.seed,
            alpha=settings.alpha,
        )

    return other, note, compare


def _threshold(gate: GateConfig, ev: Evidence) -> tuple[bool, str]:
    recorded = ev.report.get("recorded") or {}
    if gate.metric not in ev.systems[-1].scores and gate.metric in recorded:
        value = float(recorded[gate.metric])  # the version's own record: parity, a reward model's accuracy
    else:
        value = _candidate_metric(gate, ev.systems).scores[gate.metric].value
    problems = []
    if gate.min is not None and value < gate.min:
        problems.append(f"below the minimum {gate.min:g}")
    if gate.max is not None and value > gate.max:
        problems.append(f"above the maximum {gate.max:g}")
    bounds = " and ".join(
        part
        for part in (
            f">= {gate.min:g}" if gate.min is not None else "",
            f"<= {gate.max:g}" if gate.max is not None else "",
        )
        if part
    )
    return not problems, f"{gate.metric} = {value:.4g} ({'; '.join(problems) or 'within ' + bounds})"


def _improvement(gate: GateConfig, ev: Evidence) -> tuple[bool, str]:
    other, note, compare = _against_reference(gate, ev)
    metric = get_metric(gate.metric)
    test = compare(None)
    gain = test.delta.value if metric.higher_is_better else -test.delta.value
    assert gate.min_improvement is not None
    enough = gain >= gate.min_improvement
    significant = test.verdict == "better"
    passed = enough and (significant or not gate.significant)
    detail = (
        f"{note}{gate.metric} improves by {gain:+.4g} over {other.label} "
        f"(needs >= {gate.min_improvement:g}; p={test.p_value:.3f}, {test.verdict})"
    )
    if enough and gate.significant and not significant:
        detail += "; the gain is not significant"
    return passed, detail


def _forgetting(gate: GateConfig, ev: Evidence) -> tuple[bool, str]:
    probe = ev.report.get("probe")
    if not probe or gate.metric not in probe.get("change", {}):
        raise _UncheckedError("the forgetting probe did not run (set eval.probe.enabled or pass --probe)")
    change = probe["change"][gate.metric]["delta"]["value"]
    assert gate.max_forgetting is not None
    if gate.metric == "probe_accuracy":
        lost = -change
        return lost <= gate.max_forgetting, (
            f"probe accuracy changed by {change:+.4g} (at most {gate.max_forgetting:g} may be lost)"
        )
    base = probe["systems"]["base"]["general_perplexity"]["value"]
    rise = change / base if base else 0.0
    return rise <= gate.max_forgetting, (
        f"general perplexity changed by {rise:+.1%} (at most +{gate.max_forgetting:.1%} allowed)"
    )


def _slice(gate: GateConfig, ev: Evidence) -> tuple[bool, str]:
    other, note, compare = _against_reference(gate, ev)
    metric = get_metric(gate.metric)
    groups: dict[str, list[int]] = {}
    assert gate.slice is not None
    for i, item in enumerate(ev.items):
        groups.setdefault(str(item.get(gate.slice, "(missing)")), []).append(i)
    if len(groups) == 1 and "(missing)" in groups:
        raise _UncheckedError(f"no item has a {gate.slice!r} column")
    failing, checked = [], []
    for value, index in sorted(groups.items()):
        test = compare(index)
        worst = test.delta.low if metric.higher_is_better else -test.delta.high
        checked.append(value)
        if worst < -gate.margin:
            failing.append(f"{value} ({test.delta.value:+.3g}, interval down to {worst:+.3g})")
    if failing:
        return False, (
            f"{note}{gate.metric} may be worse than {other.label} by more than {gate.margin:g} on "
            f"{gate.slice} = {', '.join(failing)}"
        )
    return (
        True,
        f"{note}{gate.metric} non-inferior to {other.label} on all {len(checked)} {gate.slice} slices",
    )


_CHECKS = {"threshold": _threshold, "improvement": _improvement, "forgetting": _forgetting, "slice": _slice}
