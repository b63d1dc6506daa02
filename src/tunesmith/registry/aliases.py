"""Aliases: named pointers (candidate, staging, production, shadow, your own) with append-only history.

Moving `production` (and any alias in `registry.gated`) is a promotion: it needs a passing gate
report of `tunesmith eval --gate` for the version, made against the version production points at
now, and, with `registry.require_approval`, an approval by someone other than the version's
trainer. `--force` skips those checks and says so in the history row, with the reason required.
A rollback points the alias back at the version it served before, walking back through history:
two rollbacks in a row go two versions back, never back to the version the first one left.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from tunesmith.config import RegistryConfig
from tunesmith.registry.versions import RegistryError, alias_target, move_alias, version_names
from tunesmith.store import AliasEvent, Approval, EvalReport, ModelVersion, session
from tunesmith.workspace import Workspace


class PromotionError(RegistryError):
    """A move the rules refuse: its message says what to run first."""


def check_alias(config: RegistryConfig, alias: str) -> None:
    if alias not in config.aliases:
        known = ", ".join(config.aliases)
        raise RegistryError(
            f"unknown alias {alias!r}; the aliases are {known} (add yours under registry.aliases)"
        )


def history(workspace: Workspace, family: str, alias: str | None = None) -> list[AliasEvent]:
    """Every move of the family's aliases (or of one), newest first."""
    query = select(AliasEvent).where(AliasEvent.family == family).order_by(AliasEvent.id.desc())
    if alias is not None:
        query = query.where(AliasEvent.alias == alias)
    with session(workspace.engine) as s:
        return list(s.scalars(query))


def aliases_of(workspace: Workspace, family: str, config: RegistryConfig) -> dict[str, ModelVersion | None]:
    """Where each alias of the family points now."""
    return {alias: alias_target(workspace, family, alias) for alias in config.aliases}


def gate_report(workspace: Workspace, version: ModelVersion, alias: str) -> EvalReport:
    """The gate report that lets `version` move to gated `alias`: its newest gated report made against
    the version the alias points to now (matched by version id), in which every gate passed.

    Raises:
        PromotionError: no such report (none, or only ones against an earlier target: stale), or the
            newest one against the target failed; the message names what failed and what to run.
    """
    current = alias_target(workspace, version.family, alias)
    against = current if current is not None and current.id != version.id else None
    reports = [r for r in eval_reports(workspace, version) if r.gate_passed is not None]
    if against is not None:
        stale = [r for r in reports if _compared_as(r, alias) not in (None, against.id)]
        reports = [r for r in reports if against.id in {s.get("version_id") for s in r.systems}]
    run = (
        f"`tunesmith eval {version.name} --compare base{',' + alias if against else ''} --gate` "
        "(with eval.gates set), or promote with --force --reason"
    )
    if not reports:
        target = f" against {alias} ({against.name})" if against else ""
        if against is not None and stale:
            then = version_names(workspace).get(_compared_as(stale[0], alias) or "", "another version")
            target += f"; its report {stale[0].id} is stale: it was made when {alias} was {then}"
        raise PromotionError(f"{version.name} has no passing gate report{target}; run {run}")
    newest = reports[0]
    if not newest.gate_passed:
        failed = [g["detail"] for g in newest.gates if not g["passed"]]
        raise PromotionError(
            f"{version.name}'s gate report {newest.id}"
            + (f" against {alias} ({against.name})" if against else "")
            + f" failed: {'; '.join(failed)}. Improve the version and run {run}"
        )
    return newest


def _compared_as(report: EvalReport, alias: str) -> str | None:
    """The version id the report compared under `alias` (its system named by that alias), if any."""
    return next((s.get("version_id") for s in report.systems if s.get("ref") == alias), None)


def eval_reports(workspace: Workspace, version: ModelVersion) -> list[EvalReport]:
    """The version's eval reports, newest first."""
    with session(workspace.engine) as s:
        return list(
            s.scalars(
                select(EvalReport)
                .where(EvalReport.version_id == version.id)
                .order_by(EvalReport.created_at.desc())
            )
        )


def approve(workspace: Workspace, version: ModelVersion, approver: str, note: str) -> Approval:
    """Record `approver`'s approval of `version`; `approver` is a checked identity
    (`tunesmith.registry.identity.checked_identity`), never free text.

    Raises:
        PromotionError: when the approver is the one who trained the version (its recorded user or
            the OS user who registered it).
    """
    trainers = {version.created_by, (version.lineage or {}).get("os_user")}
    if approver in trainers:
        raise PromotionError(
            f"{approver} trained {version.name}; an approval must come from someone else "
            "(another OS user, or the owner of another admin API key)"
        )
    with session(workspace.engine) as s:
        approval = Approval(version_id=version.id, approver=approver, note=note)
        s.add(approval)
    return approval


def approvals(workspace: Workspace, version: ModelVersion) -> list[Approval]:
    with session(workspace.engine) as s:
        return list(s.scalars(select(Approval).where(Approval.version_id == version.id)))


def promote(
    workspace: Workspace,
    config: RegistryConfig,
    version: ModelVersion,
    alias: str,
    *,
    force: bool = False,
    reason: str = "",
    actor: str | None = None,
) -> AliasEvent:
    """Point `alias` of the version's family at `version`, if the rules allow it (see the module doc).

    Raises:
        PromotionError: no passing gate report against the version the alias points to now (see
            `gate_report`), or no approval; or `force` without a reason.
    """
    check_alias(config, alias)
    current = alias_target(workspace, version.family, alias)
    if current is not None and current.id == version.id:
        raise PromotionError(f"{alias} already points at {version.name}")
    if force and not reason.strip():
        raise PromotionError("--force needs --reason: the history records why the rules were skipped")
    report = gate_report(workspace, version, alias) if alias in config.gated and not force else None
    if alias == "production" and config.require_approval and not force:
        others = [a for a in approvals(workspace, version) if a.approver != version.created_by]
        if not others:
            raise PromotionError(
                f"registry.require_approval is on and {version.name} has no approval by someone other than "
                f"{version.created_by}; `tunesmith registry approve {version.name} --by NAME --note ...`"
            )
    return move_alias(
        workspace,
        version.family,
        alias,
        version,
        reason=reason,
        gate_report_id=report.id if report else None,
        action="promote",
        forced=force,
        actor=actor,
    )


def rollback(
    workspace: Workspace,
    family: str,
    *,
    alias: str = "production",
    reason: str = "",
    actor: str | None = None,
) -> AliasEvent:
    """Point `alias` back at the version it served before the current one (see `rollback_target`).

    Raises:
        RegistryError: when the alias is not set, or no earlier version is left to go back to.
    """
    events = history(workspace, family, alias)
    if not events or events[0].to_version_id is None:
        raise RegistryError(f"{alias} of {family} is not set; nothing to roll back")
    target = rollback_target(list(reversed(events)))
    if target is None:
        raise RegistryError(
            f"{alias} of {family} has no earlier version to roll back to (every version it served before "
            "the current one was rolled back from); promote a version instead"
        )
    with session(workspace.engine) as s:
        previous = s.get(ModelVersion, target)
    assert previous is not None
    return move_alias(
        workspace, family, alias, previous, reason=reason or "rollback", action="rollback", actor=actor
    )


def rollback_target(events: list[AliasEvent]) -> str | None:
    """The version id one alias goes back to, from its moves oldest first; None when there is none.

    The moves are replayed as a stack of the versions the alias served: a move pushes its version, a
    rollback pops the version it left and marks it as rolled back from. The target is the newest
    version below the current one that was never rolled back from (a later promotion of a version
    clears its mark). So rollbacks in a row walk back through history and never toggle between two.
    """
    served: list[str | None] = []
    rolled_back_from: set[str] = set()
    for event in events:
        if event.action == "rollback":
            if event.from_version_id is not None:
                rolled_back_from.add(event.from_version_id)
            if served:
                served.pop()
            if not served or served[-1] != event.to_version_id:
                served.append(event.to_version_id)  # history older than this rule: follow what happened
        else:
            served.append(event.to_version_id)
            if event.to_version_id is not None:
                rolled_back_from.discard(event.to_version_id)
    current = served[-1] if served else None
    for version_id in reversed(served[:-1]):
        if version_id is not None and version_id != current and version_id not in rolled_back_from:
            return version_id
    return None


def describe(event: AliasEvent, names: dict[str, str]) -> dict[str, Any]:
    """A history row for display: version names instead of ids."""
    return {
        "at": event.at.strftime("%Y-%m-%d %H:%M:%S"),
        "alias": event.alias,
        "from": names.get(event.from_version_id or "", "-"),
        "to": names.get(event.to_version_id or "", "-"),
        "action": event.action + (" (forced)" if event.forced else ""),
        "by": event.actor,
        "why": event.reason,
        "gate_report": event.gate_report_id or "-",
    }
