"""`tunesmith eval` and `tunesmith review`: score versions side by side, cross-validate, blind A/B review."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from tunesmith.cli.common import app, fail, load_project, new_table, out, project_workspace, reported
from tunesmith.cli.options import ConfigOpt, SetOpt

review_app = typer.Typer(help="Blind human A/B review of an eval report's answers.", no_args_is_help=True)
app.add_typer(review_app, name="review", rich_help_panel="Lifecycle")


@app.command("eval", rich_help_panel="Lifecycle")
def eval_cmd(
    version: Annotated[
        str | None, typer.Argument(help="Version name or id (e.g. my-project-v2), or an alias (candidate).")
    ] = None,
    compare: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated systems to compare with: base, aliases (production, staging...), versions. "
            "Default: eval.compare (base, production)."
        ),
    ] = None,
    few_shot: Annotated[
        int | None,
        typer.Option("--few-shot", help="Also score the base model prompted with K train examples."),
    ] = None,
    probe: Annotated[
        bool | None,
        typer.Option("--probe/--no-probe", help="Run the forgetting probe (base vs the version)."),
    ] = None,
    judge: Annotated[
        bool | None, typer.Option("--judge/--no-judge", help="Score answers with the LLM judge (eval.judge).")
    ] = None,
    reward_model: Annotated[
        str | None,
        typer.Option(
            "--reward-model",
            help="Score every system's answers with this reward-model version (eval.reward_model), "
            "with the version's win rate against each.",
        ),
    ] = None,
    gate: Annotated[
        bool, typer.Option("--gate", help="Check eval.gates; exit 3 when one fails (for CI).")
    ] = False,
    cv: Annotated[
        int | None, typer.Option("--cv", help="Cross-validate: train and score on K folds (no VERSION).")
    ] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    list_metrics: Annotated[
        bool, typer.Option("--list-metrics", help="List the registered metrics by task kind.")
    ] = False,
) -> None:
    """Score a version beside the base model, production and a few-shot prompt, with intervals and tests."""
    if list_metrics:
        _print_metrics()
        return
    from tunesmith.errors import InputError
    from tunesmith.evaluate.runner import judged_and_compared, run_eval
    from tunesmith.registry import RegistryError

    cfg = load_project(config, set_)
    if cv is not None:
        _cross_validate(cfg, cv)
        return
    try:
        version, refs = judged_and_compared(version, compare)
    except InputError as exc:
        raise fail(str(exc), 2) from None
    if gate and not cfg.eval.gates:
        raise fail("--gate: no gates are configured; add them under eval.gates in tunesmith.yaml", 2)
    try:
        outcome = run_eval(
            cfg, version, compare=refs, few_shot=few_shot, probe=probe, judge=judge, reward_model=reward_model
        )
    except InputError as exc:
        raise fail(str(exc), 2) from None
    except (RegistryError, KeyError) as exc:
        raise fail(str(exc).strip("\"'")) from None
    print_report(outcome.report)
    out.print(f"\nReport {outcome.report_id}: {outcome.directory / 'report.html'}")
    if gate and not outcome.gate_passed:
        raise typer.Exit(3)


def _cross_validate(cfg: Any, folds: int) -> None:
    from tunesmith.data import DataError
    from tunesmith.evaluate.cv import cross_validate

    with reported(DataError):
        report = cross_validate(cfg, folds)
    table = new_table("metric", *[f"fold {f['fold']}" for f in report["per_fold"]], "mean ± std")
    table.title = f"{folds}-fold cross-validation of {report['dataset_version']}"
    for name, stats in report["summary"].items():
        table.add_row(
            name, *[f"{v:.4g}" for v in stats["values"]], f"{stats['mean']:.4g} ± {stats['std']:.2g}"
        )
    out.print(table)
    out.print(f"Report {report['id']}: {report['path']}")


def _print_metrics() -> None:
    from tunesmith.evaluate import get_metric, metric_names

    table = new_table("metric", "task", "better", "what it measures")
    for name in metric_names():
        metric = get_metric(name)
        table.add_row(name, metric.kind, "higher" if metric.higher_is_better else "lower", metric.description)
    out.print(table)


def print_report(report: dict[str, Any]) -> None:
    systems = report["systems"]
    table = new_table("metric", *[s["label"] for s in systems])
    table.title = (
        f"{report['task']}: {report['items']} items of {report['dataset_version']} ({report['split']})"
    )
    for metric in report["metrics"]:
        cells = []
        for s in systems:
            score = s["scores"].get(metric["name"])
            cells.append(
                f"{score['value']:.3g} [dim][{score['low']:.3g}, {score['high']:.3g}][/dim]" if score else "-"
            )
        table.add_row(metric["name"] + ("" if metric["higher_is_better"] else " (lower is better)"), *cells)
    out.print(table)
    for note in report["notes"]:
        out.print(f"[dim]note: {note}[/dim]")
    for line in report["verdicts"]:
        colour = "green" if " better " in line else "red" if " worse " in line else "white"
        out.print(f"[{colour}]{line}[/{colour}]", highlight=False)
    probe = report.get("probe")
    if probe and probe["change"]:
        for name, change in probe["change"].items():
            delta = change["delta"]
            out.print(
                f"forgetting probe {name}: {delta['value']:+.4g} [{delta['low']:+.3g}, {delta['high']:+.3g}] "
                f"vs base (p={change['p_value']:.3f})",
                highlight=False,
            )
    judged = report.get("judge")
    if judged:
        cal = judged["calibration"]
        if cal:
            state = "calibrated" if cal["calibrated"] else "NOT calibrated: its scores cannot gate"
            out.print(
                f"judge calibration: Spearman {cal['spearman']:.2f}, Kendall {cal['kendall']:.2f} "
                f"on {cal['scored']} human-labelled rows ({state})",
                highlight=False,
            )
        for pair in judged["pairwise"]:
            rate = pair["win_rate"]
            out.print(
                f"judge pairwise {pair['candidate']} vs {pair['other']}: {pair['win']} wins, "
                f"{pair['tie']} ties, {pair['loss']} losses; "
                f"win rate {rate['value']:.2f} [{rate['low']:.2f}, {rate['high']:.2f}]",
                highlight=False,
            )
    rewarded = report.get("reward_model") or {}
    for pair in rewarded.get("pairwise", []):
        rate = pair["win_rate"]
        out.print(
            f"reward model {rewarded['model']}: {pair['candidate']} vs {pair['other']}: {pair['win']} wins, "
            f"{pair['tie']} ties, {pair['loss']} losses; "
            f"win rate {rate['value']:.2f} [{rate['low']:.2f}, {rate['high']:.2f}]",
            highlight=False,
        )
    for row in report["gates"]:
        mark = "[green]pass[/green]" if row["passed"] else "[red]FAIL[/red]"
        out.print(f"gate {row['kind']} {mark}: {row['detail']}", highlight=False)


def _report_dir(config: Path | None, report_id: str) -> Path:
    from tunesmith.data import DataError
    from tunesmith.evaluate.review import report_dir

    with reported(DataError):
        return report_dir(project_workspace(config), report_id)


@review_app.command("export")
def review_export(
    report: Annotated[str, typer.Argument(help="Eval report id (er-...).")],
    against: Annotated[
        str | None, typer.Option(help="The system to pair the version with (default: the report's first).")
    ] = None,
    limit: Annotated[int | None, typer.Option(help="At most this many pairs (a random sample).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the pair order and the sides.")] = 0,
    config: ConfigOpt = None,
) -> None:
    """Write a blind A/B sheet (HTML page and CSV) with random sides and no model names."""
    from tunesmith.data import DataError
    from tunesmith.evaluate.review import export_sheet

    with reported(DataError):
        target = export_sheet(_report_dir(config, report), against=against, limit=limit, seed=seed)
    out.print(f"Sheet for raters: {target / 'sheet.html'} (or {target / 'sheet.csv'})")
    out.print(f"Keep {target / 'key.json'} to yourself: it says which side is which.")
    out.print(f"Then: tunesmith review import {report} FILLED.csv [MORE.csv ...]")


@review_app.command("import")
def review_import(
    report: Annotated[str, typer.Argument(help="Eval report id (er-...).")],
    files: Annotated[list[Path], typer.Argument(help="Filled sheets, one per rater or with a rater column.")],
    against: Annotated[
        str | None, typer.Option(help="Which exported review (default: the only one).")
    ] = None,
    config: ConfigOpt = None,
) -> None:
    """Read filled sheets: win/tie/loss rates with intervals and inter-rater agreement."""
    from tunesmith.data import DataError
    from tunesmith.evaluate.review import import_sheets

    directory = _report_dir(config, report)
    reviews = sorted(directory.glob("review-*")) if against is None else [directory / f"review-{against}"]
    if len(reviews) != 1 or not (reviews[0] / "key.json").exists():
        found = (
            ", ".join(p.name.removeprefix("review-") for p in sorted(directory.glob("review-*"))) or "none"
        )
        raise fail(f"name the review with --against (exported: {found})")
    with reported(DataError):
        result = import_sheets(reviews[0], files)
    rates = result["rates"]
    out.print(
        f"{result['candidate']} vs {result['other']}: {result['ratings']} ratings of {result['pairs']} pairs "
        f"by {len(result['raters'])} rater(s)"
    )
    for name in ("win", "tie", "loss", "win_rate_ties_half"):
        r = rates[name]
        out.print(f"  {name:<19} {r['value']:.2f} [{r['low']:.2f}, {r['high']:.2f}]", highlight=False)
    agreement = result.get("agreement")
    if agreement:
        alpha = agreement["krippendorff_alpha"]
        out.print(
            f"  agreement: Krippendorff's alpha {alpha:.2f}"
            if alpha is not None
            else "  agreement: undefined",
            highlight=False,
        )
        if agreement.get("cohen_kappa") is not None:
            out.print(f"  Cohen's kappa {agreement['cohen_kappa']:.2f}", highlight=False)
    out.print(f"Saved {reviews[0] / 'result.json'}")
