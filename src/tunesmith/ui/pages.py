"""The pages that show: overview, datasets, runs, evaluations, registry, deployments, monitoring."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml
from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from sqlalchemy import func, select

from tunesmith.registry.versions import RegistryError, get_version, version_names
from tunesmith.store import (
    AlertEvent,
    DatasetVersion,
    EvalReport,
    ModelVersion,
    RequestLog,
    Rollout,
    Run,
    session,
)
from tunesmith.ui import charts, queries
from tunesmith.ui.app import PageError, page_number, render, ui_state, viewer
from tunesmith.ui.jobs import list_jobs, log_tail, read_job

router = APIRouter(dependencies=[Depends(viewer)])


def _get(s: Any, model: type, key: str, what: str) -> Any:
    row = s.get(model, key)
    if row is None:
        raise PageError(404, "Not found", f"no {what} {key!r} in this store")
    return row


@router.get("/", response_class=HTMLResponse)
def overview(request: Request) -> HTMLResponse:
    state = ui_state(request)
    workspace = state.workspace
    with session(workspace.engine) as s:
        counts = {
            "datasets": s.scalar(select(func.count()).select_from(DatasetVersion)),
            "runs": s.scalar(select(func.count()).select_from(Run)),
            "versions": s.scalar(select(func.count()).select_from(ModelVersion)),
            "reports": s.scalar(select(func.count()).select_from(EvalReport)),
            "requests": s.scalar(select(func.count()).select_from(RequestLog)),
        }
        running = list(s.scalars(select(Run).where(Run.status == "running").order_by(Run.started_at.desc())))
        latest_alerts = list(s.scalars(select(AlertEvent).order_by(AlertEvent.at.desc()).limit(5)))
    return render(
        request,
        "overview.html.j2",
        counts=counts,
        running=running,
        alerts=latest_alerts,
        aliases=_aliases(request),
        jobs=list_jobs(workspace, limit=5),
    )


def _aliases(request: Request) -> dict[str, dict[str, Any]]:
    """Where every alias of every family points now."""
    from tunesmith.registry.aliases import aliases_of

    state = ui_state(request)
    return {
        family: aliases_of(state.workspace, family, state.config.registry)
        for family, _, _ in queries.families(state.workspace)
    }


# ---- datasets ----------------------------------------------------------------------------------


@router.get("/datasets", response_class=HTMLResponse)
def datasets(request: Request) -> HTMLResponse:
    state = ui_state(request)
    page = queries.datasets(state.workspace, page_number(request), state.page_size)
    return render(request, "datasets.html.j2", page=page)


@router.get("/datasets/{dataset_id}", response_class=HTMLResponse)
def dataset(request: Request, dataset_id: str) -> HTMLResponse:
    state = ui_state(request)
    with session(state.workspace.engine) as s:
        row = _get(s, DatasetVersion, dataset_id, "dataset version")
        used_by = list(s.scalars(select(ModelVersion).where(ModelVersion.dataset_version_id == dataset_id)))
    folder = Path(row.path)
    report_path = folder / "report.json"
    report = json.loads(report_path.read_text(encoding="utf-8")) if report_path.exists() else {}
    rejected = queries.read_jsonl_page(folder / "rejected.jsonl", page_number(request, "rpage"), 25)
    return render(
        request,
        "dataset.html.j2",
        row=row,
        report=report,
        rejected=rejected,
        used_by=used_by,
        charts=charts.dataset_charts(folder, report),
    )


# ---- runs --------------------------------------------------------------------------------------


@router.get("/runs", response_class=HTMLResponse)
def runs(request: Request) -> HTMLResponse:
    state = ui_state(request)
    status = request.query_params.get("status") or None
    kind = request.query_params.get("kind") or None
    page = queries.runs(state.workspace, page_number(request), state.page_size, status=status, kind=kind)
    return render(
        request,
        "runs.html.j2",
        page=page,
        status=status,
        kind=kind,
        jobs=list_jobs(state.workspace, limit=10),
    )


def _run_job(request: Request, run_id: str) -> Any:
    return next((j for j in list_jobs(ui_state(request).workspace, limit=50) if j.run_id == run_id), None)


@router.get("/runs/{run_id}", response_class=HTMLResponse)
def run_page(request: Request, run_id: str) -> HTMLResponse:
    state = ui_state(request)
    with session(state.workspace.engine) as s:
        run = _get(s, Run, run_id, "run")
        version = s.scalars(select(ModelVersion).where(ModelVersion.run_id == run_id)).first()
    job = _run_job(request, run_id)
    metrics = queries.run_metrics(state.workspace, run_id)
    return render(
        request,
        "run.html.j2",
        run=run,
        version=version,
        job=job,
        config_text=yaml.safe_dump(run.config, sort_keys=False, allow_unicode=True),
        log=_run_log(request, run, job),
        curves=charts.run_charts(metrics),
        last_id=metrics[-1]["id"] if metrics else 0,
        latest=charts.latest_values(metrics),
    )


def _run_log(request: Request, run: Run, job: Any) -> str:
    if job is not None:
        return log_tail(ui_state(request).workspace, job.id)
    path = Path(run.path) / "metrics.jsonl"
    if not path.exists():
        return run.error or ""
    lines = path.read_text(encoding="utf-8").splitlines()[-60:]
    return "\n".join(lines + ([run.error] if run.error else []))


@router.get("/runs/{run_id}/live.json")
def run_live(request: Request, run_id: str, after: int = 0) -> JSONResponse:
    """What a run page has not shown yet: new logged values, the status, the log's end."""
    state = ui_state(request)
    with session(state.workspace.engine) as s:
        run = _get(s, Run, run_id, "run")
        version = s.scalars(select(ModelVersion).where(ModelVersion.run_id == run_id)).first()
    metrics = queries.run_metrics(state.workspace, run_id, after=max(0, after))
    return JSONResponse(
        {
            "status": run.status,
            "error": run.error,
            "points": metrics,
            "version": version.name if version else None,
            "log": _run_log(request, run, _run_job(request, run_id))[-6000:],
        }
    )


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
def job_page(request: Request, job_id: str) -> HTMLResponse:
    job = read_job(ui_state(request).workspace, job_id)
    if job is None:
        raise PageError(404, "Not found", f"no job {job_id!r}")
    return render(request, "job.html.j2", job=job, log=log_tail(ui_state(request).workspace, job.id))


@router.get("/jobs/{job_id}/live.json")
def job_live(request: Request, job_id: str) -> JSONResponse:
    job = read_job(ui_state(request).workspace, job_id)
    if job is None:
        raise PageError(404, "Not found", f"no job {job_id!r}")
    return JSONResponse(
        {
            "status": job.status,
            "steps": job.steps,
            "error": job.error,
            "run_url": f"/runs/{job.run_id}" if job.run_id else None,
            "report_url": f"/evaluations/{job.report_id}" if job.report_id else None,
            "version_url": f"/registry/v/{job.version}" if job.version else None,
            "log": log_tail(ui_state(request).workspace, job.id)[-6000:],
        }
    )


# ---- evaluations -------------------------------------------------------------------------------


@router.get("/evaluations", response_class=HTMLResponse)
def evaluations(request: Request) -> HTMLResponse:
    state = ui_state(request)
    family = request.query_params.get("family") or None
    page = queries.reports(state.workspace, page_number(request), state.page_size, family=family)
    return render(
        request,
        "evaluations.html.j2",
        page=page,
        family=family,
        names=version_names(state.workspace),
        jobs=[j for j in list_jobs(state.workspace, limit=10) if j.kind == "eval"],
    )


def load_report(request: Request, report_id: str) -> tuple[EvalReport, dict[str, Any]]:
    with session(ui_state(request).workspace.engine) as s:
        row = _get(s, EvalReport, report_id, "eval report")
    path = Path(row.path) / "report.json"
    if not path.exists():
        raise PageError(404, "Report files missing", f"{path} is gone; the store still lists {report_id}")
    return row, json.loads(path.read_text(encoding="utf-8"))


@router.get("/evaluations/{report_id}", response_class=HTMLResponse)
def evaluation(request: Request, report_id: str) -> HTMLResponse:
    row, report = load_report(request, report_id)
    labels = [system["label"] for system in report.get("systems", [])]
    metrics = [m["name"] for m in report.get("metrics", [])]
    params = request.query_params
    candidate = labels[-1] if labels else None
    against = (
        params.get("against") if params.get("against") in labels[:-1] else (labels[0] if labels else None)
    )
    metric = params.get("metric") if params.get("metric") in metrics else (metrics[0] if metrics else None)
    show = params.get("show", "all")
    text = params.get("q", "").strip().lower()
    items = charts.item_diffs(report, candidate, against, metric, show, text)
    size = ui_state(request).page_size
    number = max(1, min(page_number(request), max(1, -(-len(items) // size))))
    page = queries.Page(
        items=items[(number - 1) * size : number * size], number=number, size=size, total=len(items)
    )
    return render(
        request,
        "evaluation.html.j2",
        row=row,
        report=report,
        labels=labels,
        metrics=metrics,
        candidate=candidate,
        against=against,
        metric=metric,
        show=show,
        text=params.get("q", ""),
        page=page,
        intervals=charts.eval_chart(report),
        reviews=_reviews(Path(row.path)),
    )


def _reviews(folder: Path) -> list[dict[str, Any]]:
    """The report's human-review sheets, with their imported result when there is one."""
    found = []
    for sheet in sorted(folder.glob("review-*/sheet.html")):
        result_path = sheet.parent / "result.json"
        result = json.loads(result_path.read_text(encoding="utf-8")) if result_path.exists() else None
        found.append({"slug": sheet.parent.name, "result": result})
    return found


@router.get("/evaluations/{report_id}/{review}/sheet.html")
def review_sheet(request: Request, report_id: str, review: str) -> FileResponse:
    """A review sheet to fill in; the folder must be one the report's folder lists (no path from the URL)."""
    row, _ = load_report(request, report_id)
    sheets = {p.parent.name: p for p in Path(row.path).glob("review-*/sheet.html")}
    if review not in sheets:
        raise PageError(404, "Not found", f"report {report_id} has no review sheet {review!r}")
    return FileResponse(sheets[review], media_type="text/html")


# ---- registry ----------------------------------------------------------------------------------


@router.get("/registry", response_class=HTMLResponse)
def registry(request: Request) -> HTMLResponse:
    state = ui_state(request)
    family = request.query_params.get("family") or None
    page = queries.versions(state.workspace, page_number(request), state.page_size, family=family)
    aliases = _aliases(request)
    pointed: dict[str, list[str]] = {}
    for targets in aliases.values():
        for alias, target in targets.items():
            if target is not None:
                pointed.setdefault(target.id, []).append(alias)
    return render(
        request,
        "registry.html.j2",
        page=page,
        family=family,
        families=queries.families(state.workspace),
        aliases=aliases,
        pointed=pointed,
        reports=queries.report_counts(state.workspace, [v.id for v in page.items]),
    )


@router.get("/registry/diff", response_class=HTMLResponse)
def registry_diff(request: Request) -> HTMLResponse:
    from tunesmith.registry.lifecycle import diff

    state = ui_state(request)
    a, b = request.query_params.get("a", ""), request.query_params.get("b", "")
    try:
        result = diff(state.workspace, get_version(state.workspace, a), get_version(state.workspace, b))
    except RegistryError as exc:
        raise PageError(404, "Cannot compare", str(exc)) from None
    return render(request, "diff.html.j2", result=result)


@router.get("/registry/family/{family}", response_class=HTMLResponse)
def family_page(request: Request, family: str) -> HTMLResponse:
    from tunesmith.registry.aliases import aliases_of, describe, history

    state = ui_state(request)
    names = version_names(state.workspace)
    events = history(state.workspace, family)
    if not events and family not in {f for f, _, _ in queries.families(state.workspace)}:
        raise PageError(404, "Not found", f"no family {family!r} in this store")
    size = state.page_size
    number = max(1, min(page_number(request), max(1, -(-len(events) // size))))
    page = queries.Page(
        items=[describe(e, names) for e in events[(number - 1) * size : number * size]],
        number=number,
        size=size,
        total=len(events),
    )
    return render(
        request,
        "family.html.j2",
        family=family,
        aliases=aliases_of(state.workspace, family, state.config.registry),
        page=page,
    )


@router.get("/registry/v/{ref}", response_class=HTMLResponse)
def version_page(request: Request, ref: str) -> HTMLResponse:
    from tunesmith.registry.aliases import approvals, eval_reports

    state = ui_state(request)
    try:
        version = get_version(state.workspace, ref)
    except RegistryError as exc:
        raise PageError(404, "Not found", str(exc)) from None
    return render(
        request,
        "version.html.j2",
        v=version,
        lineage=lineage(request, version),
        reports=eval_reports(state.workspace, version),
        approvals=approvals(state.workspace, version),
        registry=state.config.registry,
        others=[n for n in version_names(state.workspace).values() if n != version.name][:500],
        config_text=yaml.safe_dump(version.config, sort_keys=False, allow_unicode=True),
    )


def lineage(request: Request, version: ModelVersion) -> dict[str, Any]:
    """From data to deployment: dataset, run, parent, the version, its aliases, rollouts and routes."""
    from tunesmith.registry.aliases import aliases_of, describe, history

    state = ui_state(request)
    names = version_names(state.workspace)
    with session(state.workspace.engine) as s:
        dataset = s.get(DatasetVersion, version.dataset_version_id) if version.dataset_version_id else None
        run = s.get(Run, version.run_id)
        parent = s.get(ModelVersion, version.parent_id) if version.parent_id else None
        children = list(s.scalars(select(ModelVersion).where(ModelVersion.parent_id == version.id)))
        rollouts = list(s.scalars(select(Rollout).where(Rollout.version_id == version.id)))
        served = s.scalar(
            select(func.count()).select_from(RequestLog).where(RequestLog.version_id == version.id)
        )
    aliases = [
        a
        for a, t in aliases_of(state.workspace, version.family, state.config.registry).items()
        if t and t.id == version.id
    ]
    moves = [
        describe(e, names)
        for e in history(state.workspace, version.family)
        if version.id in (e.from_version_id, e.to_version_id)
    ]
    return {
        "dataset": dataset,
        "run": run,
        "parent": parent,
        "children": children,
        "aliases": aliases,
        "moves": moves,
        "rollouts": rollouts,
        "routes": [r for r in routes(request) if version.name in r["serves"]],
        "served": served or 0,
    }


def routes(request: Request) -> list[dict[str, Any]]:
    """The configured routes, with the version each of their targets means now."""
    from tunesmith.registry.versions import resolve_name

    state = ui_state(request)

    def now(name: str) -> str:
        try:
            return resolve_name(state.workspace, name).name
        except RegistryError:
            return "-"

    found = []
    for route in state.config.serve.routes:
        primary = now(route.model)
        canary = [{"to": c.to, "version": now(c.to), "percent": c.percent} for c in route.canary]
        shadow = (
            {"to": route.shadow, "version": now(route.shadow), "percent": route.shadow_percent}
            if route.shadow
            else None
        )
        rules = [
            {"name": r.name, "to": r.to, "version": now(r.to), "groups": r.groups, "headers": r.headers}
            for r in route.rules
        ]
        serves = {primary, *(c["version"] for c in canary), *(r["version"] for r in rules)}
        if shadow:
            serves.add(shadow["version"])
        found.append(
            {
                "model": route.model,
                "primary": primary,
                "primary_percent": 100 - sum(c.percent for c in route.canary),
                "canary": canary,
                "shadow": shadow,
                "rules": rules,
                "serves": serves,
                "steps": route.rollout.steps,
            }
        )
    return found


# ---- deployments -------------------------------------------------------------------------------


def _request_filter(request: Request) -> queries.RequestFilter:
    params = request.query_params
    status = params.get("status") if params.get("status") in ("ok", "error", "refused") else None
    return queries.RequestFilter(
        version=params.get("version") or None, route=params.get("route") or None, status=status
    )


@router.get("/deployments", response_class=HTMLResponse)
def deployments(request: Request) -> HTMLResponse:
    from tunesmith.serve import rollout as rollouts

    state = ui_state(request)
    names = version_names(state.workspace)
    where = _request_filter(request)
    page = queries.requests(state.workspace, page_number(request), state.page_size, where)
    with session(state.workspace.engine) as s:
        listed = list(s.scalars(select(Rollout).order_by(Rollout.created_at.desc()).limit(20)))
    return render(
        request,
        "deployments.html.j2",
        routes=routes(request),
        aliases=_aliases(request),
        rollouts=[rollouts.describe(r, names) for r in listed],
        page=page,
        names=names,
        where=where,
        route_names=queries.routes_seen(state.workspace),
        newest=page.items[0].at.isoformat()
        if page.items and page.number == 1
        else datetime.now(UTC).isoformat(),
    )


@router.get("/deployments/stream.json")
def request_stream(request: Request, since: str) -> JSONResponse:
    """Requests logged after `since` (ISO time), newest first: the live stream of the deployments page."""
    state = ui_state(request)
    try:
        after = datetime.fromisoformat(since)
    except ValueError:
        raise PageError(400, "Bad request", f"since: {since!r} is not an ISO time") from None
    rows = queries.requests_since(state.workspace, after, _request_filter(request))
    names = version_names(state.workspace)
    return JSONResponse(
        {
            "rows": [
                {
                    "id": r.id,
                    "at": r.at.isoformat(),
                    "when": r.at.strftime("%Y-%m-%d %H:%M:%S"),
                    "model": r.requested_model,
                    "version": names.get(r.version_id or "", "-"),
                    "route": r.route,
                    "status": r.status,
                    "latency": None if r.latency_ms is None else round(r.latency_ms),
                    "tokens": f"{r.tokens_in or 0} → {r.tokens_out or 0}",
                }
                for r in rows
            ]
        }
    )


@router.get("/deployments/requests/{request_id}", response_class=HTMLResponse)
def request_page(request: Request, request_id: str) -> HTMLResponse:
    found = queries.request_detail(ui_state(request).workspace, request_id)
    if found is None:
        raise PageError(404, "Not found", f"no request {request_id!r} in the log")
    row, scores, related = found
    return render(
        request,
        "request.html.j2",
        row=row,
        scores=scores,
        related=related,
        names=version_names(ui_state(request).workspace),
        prompt=json.dumps(row.prompt, indent=2, ensure_ascii=False),
    )


# ---- monitoring --------------------------------------------------------------------------------

WINDOWS = {
    "1h": timedelta(hours=1),
    "24h": timedelta(hours=24),
    "7d": timedelta(days=7),
    "30d": timedelta(days=30),
}


@router.get("/monitoring", response_class=HTMLResponse)
def monitoring(request: Request) -> HTMLResponse:
    from tunesmith.monitor.report import collect, summary_rows

    state = ui_state(request)
    window = request.query_params.get("window", "24h")
    window = window if window in WINDOWS else "24h"
    now = datetime.now(UTC)
    data = collect(state.workspace, now - WINDOWS[window], now)
    score_names, rows = summary_rows(data["summary"])
    return render(
        request,
        "monitoring.html.j2",
        window=window,
        windows=list(WINDOWS),
        rows=rows,
        score_names=score_names,
        charts=charts.monitor_charts(data),
        alerts=queries.alerts(state.workspace, page_number(request, "apage"), 20),
        feedback=queries.feedback(state.workspace, page_number(request, "fpage"), 20),
        names=version_names(state.workspace),
        rules=state.config.monitor.alerts,
    )


@router.get("/monitoring/drift", response_class=HTMLResponse)
def drift(request: Request, version: str) -> HTMLResponse:
    from tunesmith.monitor.drift import DriftError, drift_for_version

    state = ui_state(request)
    try:
        target = get_version(state.workspace, version)
        report = drift_for_version(state.workspace, target, state.config.monitor.drift)
    except (RegistryError, DriftError) as exc:
        raise PageError(409, "Drift cannot be measured", str(exc)) from None
    return render(request, "drift.html.j2", v=target, report=report.as_dict())
