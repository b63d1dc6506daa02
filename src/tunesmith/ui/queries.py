"""The store queries behind the pages: one page of rows at a time, on indexed columns, never a whole table."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from math import ceil
from pathlib import Path
from typing import Any

from sqlalchemy import Select, func, select

from tunesmith.store import schema as db
from tunesmith.store import session
from tunesmith.workspace import Workspace


@dataclass
class Page:
    items: list[Any]
    number: int  # 1-based
    size: int
    total: int

    @property
    def pages(self) -> int:
        return max(1, ceil(self.total / self.size))

    @property
    def first(self) -> int:
        return (self.number - 1) * self.size + 1 if self.total else 0

    @property
    def last(self) -> int:
        return min(self.total, self.number * self.size)


def paginate(
    workspace: Workspace, query: Select[Any], number: int, size: int, *, scalars: bool = True
) -> Page:
    """Rows `number` (1-based) of `query` in pages of `size`, with the total the filters leave."""
    with session(workspace.engine) as s:
        total = s.scalar(select(func.count()).select_from(query.order_by(None).subquery())) or 0
        number = max(1, min(number, max(1, ceil(total / size))))
        paged = query.limit(size).offset((number - 1) * size)
        items = list(s.scalars(paged)) if scalars else list(s.execute(paged).all())
    return Page(items=items, number=number, size=size, total=total)


def datasets(workspace: Workspace, number: int, size: int) -> Page:
    return paginate(
        workspace, select(db.DatasetVersion).order_by(db.DatasetVersion.created_at.desc()), number, size
    )


def runs(workspace: Workspace, number: int, size: int, *, status: str | None, kind: str | None) -> Page:
    query = select(db.Run).order_by(db.Run.started_at.desc())
    if status:
        query = query.where(db.Run.status == status)
    if kind:
        query = query.where(db.Run.kind == kind)
    return paginate(workspace, query, number, size)


def run_metrics(
    workspace: Workspace, run_id: str, after: int = 0, limit: int = 20_000
) -> list[dict[str, Any]]:
    """The run's logged values with an id above `after` (what a live page has not seen yet)."""
    query = (
        select(db.RunMetric.id, db.RunMetric.step, db.RunMetric.name, db.RunMetric.value)
        .where(db.RunMetric.run_id == run_id, db.RunMetric.id > after)
        .order_by(db.RunMetric.id)
        .limit(limit)
    )
    with session(workspace.engine) as s:
        return [{"id": i, "step": step, "name": n, "value": v} for i, step, n, v in s.execute(query)]


def reports(workspace: Workspace, number: int, size: int, *, family: str | None) -> Page:
    query = select(db.EvalReport).order_by(db.EvalReport.created_at.desc())
    if family:
        query = query.where(db.EvalReport.family == family)
    return paginate(workspace, query, number, size)


def families(workspace: Workspace) -> list[tuple[str, int, datetime]]:
    """Each family with its number of versions and its newest version's time."""
    query = (
        select(db.ModelVersion.family, func.count(), func.max(db.ModelVersion.created_at))
        .group_by(db.ModelVersion.family)
        .order_by(db.ModelVersion.family)
    )
    with session(workspace.engine) as s:
        return [(f, n, at) for f, n, at in s.execute(query)]


def versions(workspace: Workspace, number: int, size: int, *, family: str | None) -> Page:
    query = select(db.ModelVersion).order_by(db.ModelVersion.created_at.desc(), db.ModelVersion.number.desc())
    if family:
        query = query.where(db.ModelVersion.family == family)
    return paginate(workspace, query, number, size)


def report_counts(workspace: Workspace, version_ids: list[str]) -> dict[str, tuple[int, bool | None]]:
    """Per version: how many eval reports, and whether the newest one's gates passed (one query)."""
    if not version_ids:
        return {}
    query = (
        select(db.EvalReport.version_id, db.EvalReport.gate_passed)
        .where(db.EvalReport.version_id.in_(version_ids))
        .order_by(db.EvalReport.created_at.desc())
    )
    counts: dict[str, tuple[int, bool | None]] = {}
    with session(workspace.engine) as s:
        for version_id, passed in s.execute(query):
            if version_id is None:
                continue
            n, newest = counts.get(version_id, (0, passed))
            counts[version_id] = (n + 1, newest)
    return counts


@dataclass(frozen=True)
class RequestFilter:
    version: str | None = None  # a version id
    route: str | None = None
    status: str | None = None  # ok, error (5xx), refused (4xx)

    def apply(self, query: Any) -> Any:
        if self.version:
            query = query.where(db.RequestLog.version_id == self.version)
        if self.route:
            query = query.where(db.RequestLog.route == self.route)
        if self.status == "ok":
            query = query.where(db.RequestLog.status < 400)
        elif self.status == "error":
            query = query.where(db.RequestLog.status >= 500)
        elif self.status == "refused":
            query = query.where(db.RequestLog.status >= 400, db.RequestLog.status < 500)
        return query


REQUEST_COLUMNS = (
    db.RequestLog.id,
    db.RequestLog.at,
    db.RequestLog.requested_model,
    db.RequestLog.version_id,
    db.RequestLog.route,
    db.RequestLog.status,
    db.RequestLog.latency_ms,
    db.RequestLog.tokens_in,
    db.RequestLog.tokens_out,
    db.RequestLog.user,
)


def requests(workspace: Workspace, number: int, size: int, where: RequestFilter) -> Page:
    """A page of the request log, newest first (on the `at` index); prompts and answers stay unread."""
    query = where.apply(select(*REQUEST_COLUMNS).order_by(db.RequestLog.at.desc(), db.RequestLog.id.desc()))
    return paginate(workspace, query, number, size, scalars=False)


def requests_since(workspace: Workspace, since: datetime, where: RequestFilter, limit: int = 50) -> list[Any]:
    """Requests logged after `since`, newest first: what a live stream has not shown yet."""
    query = where.apply(
        select(*REQUEST_COLUMNS)
        .where(db.RequestLog.at > since)
        .order_by(db.RequestLog.at.desc())
        .limit(limit)
    )
    with session(workspace.engine) as s:
        return list(s.execute(query).all())


def request_detail(
    workspace: Workspace, request_id: str
) -> tuple[db.RequestLog, list[Any], list[Any]] | None:
    with session(workspace.engine) as s:
        row = s.get(db.RequestLog, request_id)
        if row is None:
            return None
        scores = list(s.scalars(select(db.RequestScore).where(db.RequestScore.request_id == request_id)))
        notes = list(s.scalars(select(db.Feedback).where(db.Feedback.request_id == request_id)))
        shadows = list(s.scalars(select(db.RequestLog).where(db.RequestLog.shadow_of == request_id)))
    return row, scores, notes + shadows


def routes_seen(workspace: Workspace) -> list[str]:
    with session(workspace.engine) as s:
        return sorted(r for (r,) in s.execute(select(db.RequestLog.route).distinct().limit(100)))


def alerts(workspace: Workspace, number: int, size: int) -> Page:
    return paginate(workspace, select(db.AlertEvent).order_by(db.AlertEvent.at.desc()), number, size)


def feedback(workspace: Workspace, number: int, size: int) -> Page:
    return paginate(workspace, select(db.Feedback).order_by(db.Feedback.at.desc()), number, size)


def read_jsonl_page(path: Path, number: int, size: int) -> Page:
    """Lines of a JSON Lines file (rejected rows), one page, streamed: a big file is not read whole."""
    items: list[Any] = []
    total = 0
    start = (max(1, number) - 1) * size
    if path.exists():
        with path.open(encoding="utf-8") as handle:
            for total, line in enumerate(handle, 1):
                if start < total <= start + size and line.strip():
                    items.append(json.loads(line))
    return Page(items=items, number=max(1, number), size=size, total=total)
