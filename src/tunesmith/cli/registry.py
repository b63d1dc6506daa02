"""`tunesmith registry`: versions, aliases, promotion, lineage, cards, reproduction, merging (export,
push and parity are `cli.artifacts`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tunesmith.cli.common import (
    app,
    load_project,
    new_table,
    out,
    print_table,
    project_version,
    project_workspace,
    reported,
)
from tunesmith.cli.options import ConfigOpt, SetOpt, VersionArg

registry_app = typer.Typer(help="Registered model versions and their lineage.", no_args_is_help=True)
app.add_typer(registry_app, name="registry", rich_help_panel="Lifecycle")


@registry_app.command("list")
def registry_list(
    family: Annotated[str | None, typer.Option(help="Only this family.")] = None,
    config: ConfigOpt = None,
) -> None:
    """Registered versions, newest first."""
    from tunesmith.registry import list_versions
    from tunesmith.registry.aliases import aliases_of
    from tunesmith.workspace import open_workspace

    cfg = load_project(config, None)
    workspace = open_workspace(cfg)
    versions = list_versions(workspace, family)
    pointed: dict[str, list[str]] = {}
    for name in {v.family for v in versions}:
        for alias, target in aliases_of(workspace, name, cfg.registry).items():
            if target is not None:
                pointed.setdefault(target.id, []).append(alias)
    table = new_table("name", "aliases", "created", "method", "dataset", "val loss")
    for v in versions:
        loss = v.metrics.get("eval_loss")
        table.add_row(
            v.name,
            ", ".join(pointed.get(v.id, [])) or "-",
            f"{v.created_at:%m-%d %H:%M}",
            v.method,
            v.dataset_version_id or "-",
            f"{loss:.3f}" if isinstance(loss, float) else "-",
        )
    where = f"in family {family!r}" if family else f"in {workspace.root}"
    print_table(table, f"no versions {where} yet: `tunesmith train` registers one")


@registry_app.command("show")
def registry_show(
    version: VersionArg,
    config: ConfigOpt = None,
) -> None:
    """Everything recorded about one version: lineage, config, metrics, artifacts."""
    import yaml

    from tunesmith.registry.lifecycle import version_record

    cfg, workspace, v = project_version(config, None, version)
    record = version_record(workspace, v, cfg.registry)
    out.print(
        yaml.safe_dump(record, sort_keys=False, allow_unicode=True),
        markup=False,
        highlight=False,
        soft_wrap=True,
    )


@registry_app.command("history")
def registry_history(
    family: Annotated[str | None, typer.Argument(help="Model family (default: the project's).")] = None,
    alias: Annotated[str | None, typer.Option(help="Only this alias.")] = None,
    config: ConfigOpt = None,
) -> None:
    """Every alias move of a family, newest first: from, to, who, when, why, gate report."""
    from tunesmith.registry import list_versions
    from tunesmith.registry.aliases import aliases_of, describe, history
    from tunesmith.workspace import open_workspace

    cfg = load_project(config, None)
    workspace = open_workspace(cfg)
    family = family or cfg.project
    names = {v.id: v.name for v in list_versions(workspace, family)}
    now = aliases_of(workspace, family, cfg.registry)
    for alias_name, target in now.items():
        out.print(f"{alias_name} → {target.name if target else '-'}", highlight=False)
    events = history(workspace, family, alias)
    out.print(f"\n{len(events)} moves, newest first:" if events else "\nNo alias has been moved yet.")
    for event in events:
        row = describe(event, names)
        gate = f", gate report {row['gate_report']}" if row["gate_report"] != "-" else ""
        why = f": {row['why']}" if row["why"] else ""
        out.print(
            f"{row['at']}  {row['alias']}  {row['from']} → {row['to']}  "
            f"{row['action']} by {row['by']}{gate}{why}",
            highlight=False,
            soft_wrap=True,
        )


@registry_app.command("promote")
def registry_promote(
    version: VersionArg,
    to: Annotated[str, typer.Option("--to", help="The alias to move (production, staging, ...).")],
    force: Annotated[bool, typer.Option(help="Skip the gate and approval checks (needs --reason).")] = False,
    reason: Annotated[str, typer.Option(help="Why: recorded in the alias history.")] = "",
    config: ConfigOpt = None,
) -> None:
    """Move an alias to a version; production needs a passing gate report against what it serves now."""
    from tunesmith.registry import RegistryError
    from tunesmith.registry.aliases import promote

    cfg, workspace, target = project_version(config, None, version)
    with reported(RegistryError):
        event = promote(workspace, cfg.registry, target, to, force=force, reason=reason)
    how = (
        " (forced)"
        if event.forced
        else f" (gate report {event.gate_report_id})"
        if event.gate_report_id
        else ""
    )
    out.print(f"{target.family}: {to} → {target.name}{how}", highlight=False)
    if "rl_verdict" in target.metrics:  # an RL version: what its run's audit concluded
        out.print(
            f"RL audit: {target.metrics['rl_verdict']} ({target.metrics['rl_verdict_rule']})", highlight=False
        )


@registry_app.command("approve")
def registry_approve(
    version: VersionArg,
    note: Annotated[str, typer.Option(help="What was checked.")] = "",
    by: Annotated[
        str | None, typer.Option("--by", help="A name for the note; who approves is checked, not typed.")
    ] = None,
    api_key: Annotated[
        str | None,
        typer.Option(
            "--api-key", help="Your admin API key (default $TUNESMITH_API_KEY); needed on a shared store."
        ),
    ] = None,
    config: ConfigOpt = None,
) -> None:
    """Approve a version for production as a checked identity: your admin API key's owner, else your OS user.

    Needed with registry.require_approval. Never from the one who trained it; on a shared store
    (PostgreSQL) only with an admin key. --by adds a name to the note; it is not the identity.
    """
    from tunesmith.registry import RegistryError, get_version
    from tunesmith.registry.aliases import approve
    from tunesmith.registry.identity import checked_identity

    workspace = project_workspace(config)
    with reported(RegistryError):
        target = get_version(workspace, version)
        approver = checked_identity(workspace, api_key)
        approve(workspace, target, approver, f"{note} (by: {by})" if by else note)
    out.print(f"{approver} approved {target.name}.", highlight=False)


@registry_app.command("rollback")
def registry_rollback(
    family: Annotated[str | None, typer.Argument(help="Model family (default: the project's).")] = None,
    alias: Annotated[str, typer.Option(help="The alias to move back.")] = "production",
    reason: Annotated[str, typer.Option(help="Why: recorded in the alias history.")] = "",
    config: ConfigOpt = None,
) -> None:
    """Point production back at the version it served before; rollbacks in a row walk back through history."""
    from tunesmith.registry import RegistryError, get_version
    from tunesmith.registry.aliases import rollback
    from tunesmith.workspace import open_workspace

    cfg = load_project(config, None)
    workspace = open_workspace(cfg)
    family = family or cfg.project
    with reported(RegistryError):
        event = rollback(workspace, family, alias=alias, reason=reason)
        assert event.to_version_id is not None and event.from_version_id is not None
        now, before = (
            get_version(workspace, event.to_version_id),
            get_version(workspace, event.from_version_id),
        )
    out.print(f"{family}: {alias} → {now.name} (was {before.name})", highlight=False)


@registry_app.command("diff")
def registry_diff(
    a: Annotated[str, typer.Argument(help="The older version.")],
    b: Annotated[str, typer.Argument(help="The newer version.")],
    config: ConfigOpt = None,
) -> None:
    """Two versions side by side: config keys that differ, data changes, metric deltas with intervals."""
    from tunesmith.registry import RegistryError, get_version
    from tunesmith.registry.lifecycle import diff

    workspace = project_workspace(config)
    with reported(RegistryError):
        result = diff(workspace, get_version(workspace, a), get_version(workspace, b))
    out.print(f"[bold]{result['a']} → {result['b']}[/bold]")
    for field, (x, y) in result.get("record", {}).items():
        out.print(f"  {field}: {x} → {y}", highlight=False)
    out.print("Config:" if result["config"] else "Config: identical")
    for key, (x, y) in result["config"].items():
        out.print(f"  {key}: {x!r} → {y!r}", highlight=False, markup=False)
    data = result.get("data", {})
    if "same" in data:
        out.print(f"Data: the same dataset version ({data['same']})")
    else:
        out.print(f"Data: {data['a']} → {data['b']}")
        for split, entry in data["splits"].items():
            out.print(f"  {split}: +{entry['added']} −{entry['removed']} rows ({entry['kept']} kept)")
    metrics = result["metrics"]
    if metrics["report"]:
        out.print(f"Metrics (report {metrics['report']}, {metrics['items']} items, b − a):")
        for row in metrics["deltas"]:
            interval = f"[{row['low']:+.3g}, {row['high']:+.3g}]"
            out.print(
                f"  {row['metric']}: {row['delta']:+.4g} {interval} p={row['p_value']:.3f}", highlight=False
            )
    else:
        out.print(f"Metrics (as recorded; {metrics['note']}):", soft_wrap=True)
        for row in metrics["deltas"]:
            out.print(
                f"  {row['metric']}: {row['a']:.4g} → {row['b']:.4g} ({row['delta']:+.4g})", highlight=False
            )


@registry_app.command("card")
def registry_card(
    version: VersionArg,
    output: Annotated[Path | None, typer.Option(help="Write the card here (default: print it).")] = None,
    config: ConfigOpt = None,
) -> None:
    """A Markdown model card: base and licence, data, method, metrics with intervals, forgetting, lineage."""
    from tunesmith.registry import RegistryError, get_version
    from tunesmith.registry.lifecycle import model_card

    workspace = project_workspace(config)
    with reported(RegistryError):
        card = model_card(workspace, get_version(workspace, version))
    if output is None:
        out.print(card, markup=False, highlight=False, soft_wrap=True)
    else:
        output.write_text(card, encoding="utf-8")
        out.print(f"Wrote {output}")


@registry_app.command("reproduce")
def registry_reproduce(
    version: VersionArg,
    tolerance: Annotated[float, typer.Option(help="Largest relative difference that still matches.")] = 0.02,
    config: ConfigOpt = None,
) -> None:
    """Train again from the version's record and check its metrics match; exit 1 when they do not."""
    from tunesmith.registry import RegistryError
    from tunesmith.train import TrainConfigError
    from tunesmith.train.run import reproduce

    cfg, workspace, target = project_version(config, None, version)
    with reported(RegistryError, TrainConfigError):
        result = reproduce(workspace, target, tolerance, cfg.base_dir)
    table = new_table("metric", "recorded", "reproduced", "difference", "match")
    for row in result["metrics"]:
        table.add_row(
            row["metric"],
            f"{row['recorded']:.6g}",
            f"{row['reproduced']:.6g}",
            f"{row['relative_difference']:.2%}",
            "yes" if row["match"] else "[red]no[/red]",
        )
    out.print(table)
    verdict = "matches" if result["matches"] else "does NOT match"
    out.print(f"Run {result['run']} {verdict} {version} within {tolerance:.0%}.")
    if not result["matches"]:
        raise typer.Exit(1)


@registry_app.command("merge")
def registry_merge(
    versions: Annotated[list[str], typer.Argument(help="Two or more LoRA versions of one base.")],
    method: Annotated[str, typer.Option(help="linear, ties, dare_linear or dare_ties.")] = "ties",
    weights: Annotated[
        str | None,
        typer.Option(
            help="One weight per version, comma-separated (default: 1/n for linear, 1 for the rest)."
        ),
    ] = None,
    density: Annotated[float, typer.Option(help="ties/dare: the share of each delta kept.")] = 0.5,
    seed: Annotated[int, typer.Option(help="dare: the seed of the random drop.")] = 0,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Merge LoRA versions into a new candidate version, with both parents in its lineage."""
    from tunesmith.registry import RegistryError
    from tunesmith.train.merge import MergeError, MergeSpec, merge_versions, parse_weights
    from tunesmith.workspace import open_workspace

    cfg = load_project(config, set_)
    spec = MergeSpec(tuple(versions), method, parse_weights(weights), density, seed)
    with reported(RegistryError, MergeError):
        outcome = merge_versions(cfg, open_workspace(cfg), spec)
    out.print(outcome.summary(), highlight=False)
    out.print(f"Next: tunesmith eval {outcome.version.name}", highlight=False)
