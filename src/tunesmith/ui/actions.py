"""The pages that act: start a training run or an evaluation, promote, roll back, approve, abort a rollout.

Each calls the function the CLI calls (the registry's gated `promote`, `rollback`...), as an
admin caller, after the form's CSRF token is checked; the config a form builds is validated by
`load_config`, the CLI's own loader, and refused with the same messages.
"""

from __future__ import annotations

import typing
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from tunesmith.config import ConfigError, TrainConfig, load_config
from tunesmith.registry.versions import RegistryError, get_version, version_names
from tunesmith.serve.keys import Caller
from tunesmith.ui.app import PageError, actor, admin, checked_form, render, ui_state, viewer
from tunesmith.ui.jobs import start_job

router = APIRouter(dependencies=[Depends(viewer)])

TRAIN_FIELDS = {  # form field -> config key (`--set` name)
    "method": "train.method",
    "objective": "train.objective",
    "epochs": "train.epochs",
    "lr": "train.lr",
    "data_path": "data.path",
    "model_id": "model.id",
}


def _choices(field: str) -> list[str]:
    return list(typing.get_args(TrainConfig.model_fields[field].annotation))


def overrides_of(form: dict[str, str], fields: dict[str, str]) -> list[str]:
    """`key=value` settings from the form's fields (blank ones left out) and its free-form lines,
    which the config loader checks as it checks `--set` (a line without `=` is refused there)."""
    settings = [f"{key}={form[name].strip()}" for name, key in fields.items() if form.get(name, "").strip()]
    lines = (line.strip() for line in form.get("overrides", "").splitlines())
    return settings + [line for line in lines if line and not line.startswith("#")]


def _validated(request: Request, overrides: list[str]) -> Any:
    state = ui_state(request)
    return load_config(state.config_path, overrides)


@router.get("/runs/new", response_class=HTMLResponse)
def new_run(request: Request) -> HTMLResponse:
    return _train_form(request, {}, None)


def _train_form(request: Request, form: dict[str, str], error: str | None, code: int = 200) -> HTMLResponse:
    config = ui_state(request).config
    defaults = {
        "method": config.train.method,
        "objective": config.train.objective,
        "epochs": "",
        "lr": "",
        "data_path": "",
        "model_id": "",
        "overrides": "",
    }
    return render(
        request,
        "new_run.html.j2",
        code,
        form={**defaults, **form},
        error=error,
        methods=_choices("method"),
        objectives=_choices("objective"),
        config=config,
        config_path=ui_state(request).config_path,
    )


@router.post("/runs/new", response_class=HTMLResponse)
async def start_run(request: Request, who: Caller = Depends(admin)) -> Response:
    form = await checked_form(request)
    try:
        overrides = overrides_of(form, TRAIN_FIELDS)
        _validated(request, overrides)
    except ConfigError as exc:
        return _train_form(request, form, str(exc), 400)
    state = ui_state(request)
    job = start_job(state.workspace, "train", state.config_path, overrides, started_by=actor(who))
    return RedirectResponse(f"/jobs/{job.id}", status_code=303)


@router.get("/evaluations/new", response_class=HTMLResponse)
def new_evaluation(request: Request) -> HTMLResponse:
    return _eval_form(request, {"version": request.query_params.get("version", "")}, None)


def _eval_form(request: Request, form: dict[str, str], error: str | None, code: int = 200) -> HTMLResponse:
    state = ui_state(request)
    names = sorted(version_names(state.workspace).values(), reverse=True)
    return render(
        request,
        "new_eval.html.j2",
        code,
        form={"version": "", "compare": "", "overrides": "", **form},
        error=error,
        versions=names[:500],
        config=state.config,
    )


@router.post("/evaluations/new", response_class=HTMLResponse)
async def start_evaluation(request: Request, who: Caller = Depends(admin)) -> Response:
    form = await checked_form(request)
    state = ui_state(request)
    ref = form.get("version", "").strip()
    if not ref:
        return _eval_form(request, form, "version: choose the version to evaluate", 400)
    try:
        overrides = overrides_of(form, {})
        config = _validated(request, overrides)
        if ref not in config.registry.aliases:  # an alias is resolved when the job starts
            get_version(state.workspace, ref)
    except (ConfigError, RegistryError) as exc:
        return _eval_form(request, form, str(exc), 400)
    compare = [c.strip() for c in form.get("compare", "").split(",") if c.strip()] or None
    options = {
        "version": ref,
        "compare": compare,
        "judge": True if form.get("judge") else None,
        "probe": True if form.get("probe") else None,
    }
    job = start_job(state.workspace, "eval", state.config_path, overrides, options, started_by=actor(who))
    return RedirectResponse(f"/jobs/{job.id}", status_code=303)


@router.post("/evaluations/{report_id}/review", response_class=HTMLResponse)
async def make_review(request: Request, report_id: str, _: Caller = Depends(admin)) -> Response:
    from pathlib import Path

    from tunesmith.data import DataError
    from tunesmith.evaluate.review import export_sheet
    from tunesmith.ui.pages import load_report

    form = await checked_form(request)
    row, _report = load_report(request, report_id)
    limit = form.get("limit", "").strip()
    try:
        folder = export_sheet(
            Path(row.path), against=form.get("against") or None, limit=int(limit) if limit.isdigit() else None
        )
    except DataError as exc:
        raise PageError(409, "No review sheet", str(exc)) from None
    return RedirectResponse(f"/evaluations/{report_id}/{folder.name}/sheet.html", status_code=303)


def _done(request: Request, *, title: str, message: str, back: str, report: Any = None) -> HTMLResponse:
    """The page after an action that was carried out: what it did, and the gate report it rests on."""
    return render(request, "outcome.html.j2", ok=True, title=title, message=message, back=back, report=report)


def _refused(request: Request, title: str, message: str, back: str) -> HTMLResponse:
    """The page after an action the rules refused (409), with their reason."""
    return render(request, "outcome.html.j2", 409, ok=False, title=title, message=message, back=back)


@router.post("/registry/v/{ref}/promote", response_class=HTMLResponse)
async def promote_version(request: Request, ref: str, who: Caller = Depends(admin)) -> HTMLResponse:
    """The registry's gated promotion: refused without a passing gate report (or approval), as in the CLI."""
    from tunesmith.registry.aliases import PromotionError, promote
    from tunesmith.store import EvalReport, session

    form, state = await checked_form(request), ui_state(request)
    alias = form.get("alias", "production")
    try:
        version = get_version(state.workspace, ref)
        event = promote(
            state.workspace,
            state.config.registry,
            version,
            alias,
            force=bool(form.get("force")),
            reason=form.get("reason", ""),
            actor=actor(who),
        )
    except PromotionError as exc:
        return _refused(request, "Promotion refused", str(exc), f"/registry/v/{ref}")
    except RegistryError as exc:
        raise PageError(404, "Not found", str(exc)) from None
    report = None
    if event.gate_report_id:
        with session(state.workspace.engine) as s:
            report = s.get(EvalReport, event.gate_report_id)
    how = (
        "forced past the gates: " + event.reason
        if event.forced
        else (
            f"gate report {event.gate_report_id} passed" if event.gate_report_id else f"{alias} is not gated"
        )
    )
    return _done(
        request,
        title=f"{alias} → {version.name}",
        message=f"{version.family}: {alias} now points at {version.name} ({how}).",
        report=report,
        back=f"/registry/v/{version.name}",
    )


@router.post("/registry/family/{family}/rollback", response_class=HTMLResponse)
async def rollback_alias(request: Request, family: str, who: Caller = Depends(admin)) -> HTMLResponse:
    from tunesmith.registry.aliases import rollback

    form, state = await checked_form(request), ui_state(request)
    alias = form.get("alias", "production")
    try:
        event = rollback(
            state.workspace, family, alias=alias, reason=form.get("reason", ""), actor=actor(who)
        )
    except RegistryError as exc:
        return _refused(request, "Rollback refused", str(exc), f"/registry/family/{family}")
    names = version_names(state.workspace)
    now, before = names.get(event.to_version_id or "", "-"), names.get(event.from_version_id or "", "-")
    return _done(
        request,
        title=f"{alias} → {now}",
        message=f"{family}: {alias} is back on {now} (was {before}).",
        back=f"/registry/family/{family}",
    )


@router.post("/registry/v/{ref}/approve", response_class=HTMLResponse)
async def approve_version(request: Request, ref: str, who: Caller = Depends(admin)) -> HTMLResponse:
    from tunesmith.registry.aliases import approve
    from tunesmith.registry.identity import checked_identity

    form = await checked_form(request)
    state = ui_state(request)
    by = form.get("by", "").strip()  # a name for the note; who approves is the key's owner or OS user
    try:
        approver = who.name if who.key_id else checked_identity(state.workspace)
        version = get_version(state.workspace, ref)
        approve(state.workspace, version, approver, form.get("note", "") + (f" (by: {by})" if by else ""))
    except RegistryError as exc:
        return _refused(request, "Approval refused", str(exc), f"/registry/v/{ref}")
    return _done(
        request,
        title="Approved",
        message=f"{approver} approved {version.name}.",
        back=f"/registry/v/{version.name}",
    )


@router.post("/deployments/rollouts/{rollout_id}/abort", response_class=HTMLResponse)
async def abort_rollout(request: Request, rollout_id: str, who: Caller = Depends(admin)) -> HTMLResponse:
    from tunesmith.serve import rollout as rollouts

    await checked_form(request)
    try:
        rollouts.abort_rollout(
            ui_state(request).workspace, rollout_id, f"aborted in the web app by {actor(who)}"
        )
    except RegistryError as exc:
        return _refused(request, "Nothing to abort", str(exc), "/deployments")
    return _done(
        request,
        title="Rollout aborted",
        message=f"{rollout_id} is aborted; a running server sends the route's traffic back to its primary "
        "at its next poll.",
        back="/deployments",
    )
