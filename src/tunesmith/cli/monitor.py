"""`tunesmith monitor` and `tunesmith improve`: alerts, drift, reports, and the next candidate."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from tunesmith.cli.common import app, err, fail, load_project, new_table, out, print_table, reported
from tunesmith.cli.eval import print_report
from tunesmith.cli.options import ConfigOpt, SetOpt

monitor_app = typer.Typer(
    help="Production monitoring: alerts, drift of served prompts, reports over time.", no_args_is_help=True
)
app.add_typer(monitor_app, name="monitor", rich_help_panel="Lifecycle")


@monitor_app.command("alerts")
def monitor_alerts(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    check: Annotated[
        bool, typer.Option(help="Evaluate the rules now (a running server does every minute).")
    ] = True,
) -> None:
    """Evaluate monitor.alerts now (send, roll back) and list the alerts that fired, newest first."""
    from tunesmith.monitor.alerts import check_alerts, recent_alerts
    from tunesmith.registry.versions import version_names
    from tunesmith.workspace import open_workspace

    cfg = load_project(config, set_)
    workspace = open_workspace(cfg)
    if check:
        if not cfg.monitor.alerts:
            err.print("no rules under monitor.alerts; nothing to check")
        fired = check_alerts(workspace, cfg.monitor, cfg.registry)
        out.print(f"{len(fired)} alert(s) fired now", highlight=False)
    names = version_names(workspace)
    table = new_table("at", "rule", "version", "message", "sent", "action")
    for alert in recent_alerts(workspace):
        table.add_row(
            alert.at.strftime("%Y-%m-%d %H:%M:%S"),
            alert.rule,
            names.get(alert.version_id or "", "-"),
            alert.message,
            ", ".join(f"{k}: {v}" for k, v in alert.channels.items()),
            alert.action or "",
        )
    print_table(table, "no alert has fired")


@monitor_app.command("report")
def monitor_report(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    since: Annotated[str, typer.Option(help="How far back: 30m, 24h, 7d.")] = "24h",
    output: Annotated[
        Path | None, typer.Option(help="The HTML file (default: reports/monitor-TIME.html).")
    ] = None,
    drift: Annotated[bool, typer.Option(help="Also measure each version's drift (loads MiniLM).")] = False,
) -> None:
    """An HTML page per served version over time: traffic, latency, scores, feedback, drift, alerts."""
    from datetime import UTC, datetime

    from tunesmith.monitor.report import parse_since, write_report
    from tunesmith.workspace import open_workspace

    cfg = load_project(config, set_)
    workspace = open_workspace(cfg)
    try:
        window = parse_since(since)
    except ValueError as exc:
        raise fail(str(exc), 2) from None
    target = output or workspace.root / "reports" / f"monitor-{datetime.now(UTC):%Y%m%d-%H%M%S}.html"
    path = write_report(workspace, cfg.monitor, target, since=window, drift=drift)
    out.print(f"wrote {path}", highlight=False, soft_wrap=True)


@monitor_app.command("drift")
def monitor_drift(
    model: Annotated[str, typer.Argument(help="A version, family@alias or family (its production alias).")],
    config: ConfigOpt = None,
    set_: SetOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Recent prompts of a served version against its training data: MMD, classifier AUC, PSI, words."""
    import json

    from tunesmith.monitor.drift import DriftError, drift_for_version
    from tunesmith.registry import RegistryError
    from tunesmith.registry.versions import resolve_name
    from tunesmith.workspace import open_workspace

    cfg = load_project(config, set_)
    workspace = open_workspace(cfg)
    with reported(RegistryError, DriftError):
        version = resolve_name(workspace, model)
        report = drift_for_version(workspace, version, cfg.monitor.drift)
    if as_json:
        out.print(json.dumps(report.as_dict(), indent=2, ensure_ascii=False), soft_wrap=True, highlight=False)
        raise typer.Exit(3 if report.drifted else 0)
    limits = cfg.monitor.drift
    out.print(
        f"{report.version}: {report.current} recent prompts against {report.reference} training prompts "
        f"of {report.dataset}",
        highlight=False,
    )
    table = new_table("check", "value", "threshold", "verdict")
    table.add_row(
        "embedding MMD p-value",
        f"{report.mmd_p:.3f} (MMD {report.mmd:.4f})",
        f"< {limits.alpha}",
        "drift" if report.mmd_p < limits.alpha else "ok",
    )
    table.add_row(
        "classifier AUC",
        f"{report.auc:.2f}",
        f"> {limits.max_auc}",
        "drift" if report.auc > limits.max_auc else "ok",
    )
    for name, value in report.psi.items():
        table.add_row(
            f"PSI {name}", f"{value:.2f}", f"> {limits.max_psi}", "drift" if value > limits.max_psi else "ok"
        )
    out.print(table)
    out.print(
        "more frequent now: " + ", ".join(w for w, _ in report.words_current), highlight=False, soft_wrap=True
    )
    out.print(
        "more frequent in training: " + ", ".join(w for w, _ in report.words_reference),
        highlight=False,
        soft_wrap=True,
    )
    out.print("least like the training data:", highlight=False)
    for text in report.examples:
        out.print(f"  - {text[:160]}", highlight=False, soft_wrap=True)
    out.print(
        "DRIFT: " + "; ".join(report.reasons) if report.drifted else "no drift",
        highlight=False,
        soft_wrap=True,
    )
    raise typer.Exit(3 if report.drifted else 0)


@app.command("improve", rich_help_panel="Lifecycle")
def improve_cmd(
    model: Annotated[
        str | None, typer.Argument(help="The served version (default: the project's production).")
    ] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    since: Annotated[str | None, typer.Option(help="Only requests this recent: 30m, 24h, 7d.")] = None,
    where: Annotated[
        list[str] | None, typer.Option("--where", help="A score condition, e.g. relevance<0.3 (repeatable).")
    ] = None,
    feedback: Annotated[
        str, typer.Option(help="Feedback kinds to learn from.")
    ] = "correction,preference,rating",
    limit: Annotated[int | None, typer.Option(help="At most this many rows of each kind.")] = None,
    drift_cluster: Annotated[
        bool, typer.Option(help="Only the cluster of requests least like the training data.")
    ] = False,
    rehearse: Annotated[
        float,
        typer.Option(
            min=0.0,
            max=1.0,
            help="Share of production's own training rows trained on again beside the corrections.",
        ),
    ] = 0.0,
    holdout: Annotated[
        float,
        typer.Option(
            min=0.0,
            max=0.9,
            help="Share of the corrected requests kept out of training to measure the candidate on.",
        ),
    ] = 0.2,
    train: Annotated[
        bool, typer.Option(help="Fine-tune, evaluate and gate (--no-train: datasets only).")
    ] = True,
    objective: Annotated[
        str, typer.Option(help="sft: fine-tune on the corrections; dpo: optimise on the preference pairs.")
    ] = "sft",
) -> None:
    """Production feedback to a dataset, an incremental fine-tune, an eval against production, and shadow."""
    from tunesmith.data import DataError
    from tunesmith.monitor.improve import ImproveError, Selection, improve
    from tunesmith.monitor.report import parse_since
    from tunesmith.registry import RegistryError
    from tunesmith.workspace import open_workspace

    cfg = load_project(config, set_)
    workspace = open_workspace(cfg)
    with reported(ImproveError, RegistryError, DataError, ValueError):
        selection = Selection(
            model=model or f"{cfg.project}@production",
            since=parse_since(since) if since else None,
            where=list(where or []),
            feedback=tuple(k.strip() for k in feedback.split(",") if k.strip()),
            limit=limit,
            drift_cluster=drift_cluster,
            holdout=holdout,
            rehearse=rehearse,
        )
        result = improve(cfg, workspace, selection, train=train, objective=objective)
    _print_improved(result)


def _print_improved(result: Any) -> None:
    """What `improve` read, made, trained and judged, and where the candidate went."""
    out.print(
        f"{result.production.name}: {result.matched:,} logged request(s) matched the selection, "
        f"{result.feedback_rows:,} feedback row(s) read; {len(result.requests)} request(s) with feedback → "
        f"{result.sft_rows} SFT row(s), {result.dpo_rows} preference pair(s) in {result.folder}",
        highlight=False,
        soft_wrap=True,
    )
    if result.rehearsed:
        out.print(f"with {result.rehearsed} of production's training rows rehearsed", highlight=False)
    for label, dataset in (("SFT", result.dataset), ("preference", result.preference_dataset)):
        if dataset is not None:
            out.print(f"{label} dataset {dataset.id}: {dataset.counts}", highlight=False, soft_wrap=True)
    if result.version is not None:
        out.print(f"trained {result.version.name} from {result.production.name}", highlight=False)
    if result.report is not None:
        print_report(result.report)
    if len(result.attempts) > 1:
        table = new_table("attempt", "guard", "version", "gates failed")
        table.title = "The forgetting gate failed, so improve trained again with each guard in turn"
        for n, tried in enumerate(result.attempts, 1):
            table.add_row(str(n), tried["guard"], tried["version"], "; ".join(tried["failed"]) or "none")
        out.print(table)
    if result.corrected is not None:
        out.print(
            f"\nOn the {result.corrected['items']} corrected request(s) held out of training "
            f"(report {result.corrected['id']}):",
            highlight=False,
        )
        print_report(result.corrected)
    if result.shadow and result.version is not None:
        out.print(
            f"shadow → {result.version.name} (gate report {result.report['id'] if result.report else ''})",
            highlight=False,
        )
    for note in result.notes:
        err.print(note, highlight=False, soft_wrap=True)
