"""The store's tables. Rows are written once and then only appended to (runs finish, aliases move).

The records of governance (versions, alias moves, eval reports, approvals, later metrics of a
version) are immutable in fact: database triggers refuse UPDATE and DELETE on their tables
(migration 0007), and `tunesmith.store.engine` refuses the same through the ORM before it is sent.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar

from sqlalchemy import JSON, Boolean, DateTime, Float, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        dict[str, Any]: JSON,
        list[Any]: JSON,
        datetime: DateTime(timezone=True),  # every time is stored with its zone, in UTC
    }


# The columns many tables share, declared once (SQLAlchemy's Annotated column types).
Serial = Annotated[int, mapped_column(Integer, primary_key=True, autoincrement=True)]
Stamp = Annotated[datetime, mapped_column(default=utcnow)]  # when the row was written
IndexedStamp = Annotated[datetime, mapped_column(default=utcnow, index=True)]  # ...for time windows
VersionRef = Annotated[str, mapped_column(ForeignKey("model_versions.id"), index=True)]


class Authored:
    """Who wrote a record and when: the columns of every record a person answers for."""

    created_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[Stamp]


class DatasetVersion(Base):
    """An immutable, content-hashed dataset: its rows live under the workspace's `datasets/ID/`."""

    __tablename__ = "dataset_versions"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # ds-<first 12 hex of content hash>
    name: Mapped[str] = mapped_column(String(200))
    content_hash: Mapped[str] = mapped_column(String(64), unique=True)
    source: Mapped[str] = mapped_column(Text)  # the file or id the rows were read from
    format: Mapped[str] = mapped_column(String(40))
    counts: Mapped[dict[str, Any]] = mapped_column(JSON)  # rows per split, rejected rows
    path: Mapped[str] = mapped_column(Text)
    meta: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[Stamp]


class Run(Base):
    """One training (or other stage) run, with the resolved config that made it."""

    __tablename__ = "runs"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(40))  # train, eval, quickstart
    status: Mapped[str] = mapped_column(String(20))  # running, finished, failed
    project: Mapped[str] = mapped_column(String(200))
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    dataset_version_id: Mapped[str | None] = mapped_column(ForeignKey("dataset_versions.id"))
    base_model: Mapped[str] = mapped_column(String(300))
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    path: Mapped[str] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[Stamp]
    finished_at: Mapped[datetime | None]


class ModelVersion(Authored, Base):
    """An immutable model version: what was trained, from what, with which result."""

    __tablename__ = "model_versions"
    __table_args__ = (UniqueConstraint("family", "number", name="uq_model_versions_family_number"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)  # <family>-v<number>
    family: Mapped[str] = mapped_column(String(200), index=True)
    number: Mapped[int] = mapped_column(Integer)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id"))
    parent_id: Mapped[str | None] = mapped_column(ForeignKey("model_versions.id"))
    base_model: Mapped[str] = mapped_column(String(300))
    base_revision: Mapped[str | None] = mapped_column(String(200))  # commit, or sha256 of the weights file
    method: Mapped[str] = mapped_column(String(40))
    weights_sha256: Mapped[str] = mapped_column(String(64))
    dataset_version_id: Mapped[str | None] = mapped_column(ForeignKey("dataset_versions.id"))
    seed: Mapped[int] = mapped_column(Integer)
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    lineage: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # library versions, template hashes
    path: Mapped[str] = mapped_column(Text)


class AliasEvent(Base):
    """One move of an alias (candidate, staging, production, shadow): never updated, only appended."""

    __tablename__ = "alias_history"

    id: Mapped[Serial]
    family: Mapped[str] = mapped_column(String(200), index=True)
    alias: Mapped[str] = mapped_column(String(100))
    from_version_id: Mapped[str | None] = mapped_column(ForeignKey("model_versions.id"))
    to_version_id: Mapped[str | None] = mapped_column(ForeignKey("model_versions.id"))
    actor: Mapped[str] = mapped_column(String(200))
    reason: Mapped[str] = mapped_column(Text, default="")
    gate_report_id: Mapped[str | None] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(20), default="move")  # move, promote, rollback
    forced: Mapped[bool] = mapped_column(Boolean, default=False)  # promoted past failing or missing gates
    at: Mapped[Stamp]


class VersionMetric(Base):
    """A metric of a version found after it was registered (held-out scores, a later test): appended,
    so the version's registered `metrics` are never rewritten."""

    __tablename__ = "version_metrics"

    id: Mapped[Serial]
    version_id: Mapped[VersionRef]
    name: Mapped[str] = mapped_column(String(100))
    value: Mapped[float] = mapped_column(Float)
    source: Mapped[str] = mapped_column(String(200))  # what measured it: quickstart, an eval report id
    at: Mapped[Stamp]


class RunMetric(Base):
    """One logged value of a run (loss, learning rate, tokens/s...) at one step: live curves read these."""

    __tablename__ = "run_metrics"

    id: Mapped[Serial]
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id"), index=True)
    step: Mapped[int] = mapped_column(Integer)
    epoch: Mapped[float | None] = mapped_column(Float)
    name: Mapped[str] = mapped_column(String(100))
    value: Mapped[float] = mapped_column(Float)
    at: Mapped[Stamp]


class EvalReport(Authored, Base):
    """One evaluation: systems compared on a dataset split, its files, and whether its gates passed.

    Promotion looks for a passing report of the version it moves.
    """

    __tablename__ = "eval_reports"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # er-<12 hex>
    family: Mapped[str] = mapped_column(String(200), index=True)
    version_id: Mapped[VersionRef | None]
    dataset_version_id: Mapped[str | None] = mapped_column(ForeignKey("dataset_versions.id"))
    split: Mapped[str] = mapped_column(String(20))
    task: Mapped[str] = mapped_column(String(40))  # generation, classification, tagging, lm
    systems: Mapped[list[Any]] = mapped_column(JSON)  # label, ref, version id and scores of each
    gate_passed: Mapped[bool | None] = mapped_column(Boolean)  # None: no gates were configured
    gates: Mapped[list[Any]] = mapped_column(JSON, default=list)
    path: Mapped[str] = mapped_column(Text)  # the folder with report.json and report.html


class Approval(Base):
    """Someone's recorded approval of a version for production (governance: not its trainer)."""

    __tablename__ = "approvals"

    id: Mapped[Serial]
    version_id: Mapped[VersionRef]
    approver: Mapped[str] = mapped_column(String(200))
    note: Mapped[str] = mapped_column(Text, default="")
    at: Mapped[Stamp]


class RequestLog(Base):
    """One served request and its answer (or a shadow's answer to a mirrored request)."""

    __tablename__ = "request_logs"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # req-<uuid hex>
    at: Mapped[IndexedStamp]
    endpoint: Mapped[str] = mapped_column(String(40))  # chat, completion
    requested_model: Mapped[str] = mapped_column(String(300))  # as the client named it
    version_id: Mapped[VersionRef | None]
    route: Mapped[str] = mapped_column(String(100))  # primary, canary, rule:NAME, rollout, shadow
    shadow_of: Mapped[str | None] = mapped_column(String(64), index=True)  # the mirrored request
    prompt: Mapped[Any] = mapped_column(JSON)  # the messages, or the prompt text
    output: Mapped[list[Any]] = mapped_column(JSON)  # one text per choice
    finish_reasons: Mapped[list[Any]] = mapped_column(JSON)
    params: Mapped[dict[str, Any]] = mapped_column(JSON)  # max_tokens, temperature, top_p, seed, stop, n
    status: Mapped[int] = mapped_column(Integer)  # HTTP status of the answer
    error: Mapped[str | None] = mapped_column(Text)
    latency_ms: Mapped[float | None] = mapped_column(Float)
    ttft_ms: Mapped[float | None] = mapped_column(Float)
    tokens_in: Mapped[int | None] = mapped_column(Integer)
    tokens_out: Mapped[int | None] = mapped_column(Integer)
    user: Mapped[str | None] = mapped_column(String(200))
    session: Mapped[str | None] = mapped_column(String(200))
    api_key_id: Mapped[str | None] = mapped_column(String(64))
    client: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # metadata, user agent


class ApiKey(Authored, Base):
    """An API key of the server: only its SHA-256 is stored; revoked keys stay for the record."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # key-<8 hex>
    name: Mapped[str] = mapped_column(String(200))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(20))  # the first characters, to recognise it in lists
    scopes: Mapped[list[Any]] = mapped_column(JSON)  # inference, admin
    user_group: Mapped[str | None] = mapped_column(String(100))  # internal, beta...: for targeting rules
    requests_per_minute: Mapped[int | None] = mapped_column(Integer)  # None: the server's serve.rate_limit
    tokens_per_minute: Mapped[int | None] = mapped_column(Integer)
    revoked_at: Mapped[datetime | None]


class Rollout(Authored, Base):
    """A version's way through a route's traffic plan (shadow, internal, 5%, ...), one step at a time."""

    __tablename__ = "rollouts"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # ro-<8 hex>
    route: Mapped[str] = mapped_column(String(300), index=True)  # the model name the route serves
    version_id: Mapped[str] = mapped_column(ForeignKey("model_versions.id"))
    steps: Mapped[list[Any]] = mapped_column(JSON)  # "shadow", "internal", or a percentage
    step: Mapped[int] = mapped_column(Integer)  # index into steps
    status: Mapped[str] = mapped_column(String(20))  # running, completed, rolled_back, aborted, blocked
    hold_seconds: Mapped[float] = mapped_column(Float)  # how long each step's gates must hold
    step_started_at: Mapped[Stamp]
    history: Mapped[list[Any]] = mapped_column(JSON, default=list)  # {at, step, event, reasons}


class RequestScore(Base):
    """One online score of one served request (the same scorers as offline eval where they apply)."""

    __tablename__ = "request_scores"

    id: Mapped[Serial]
    request_id: Mapped[str] = mapped_column(String(64), index=True)
    version_id: Mapped[VersionRef | None]
    name: Mapped[str] = mapped_column(String(100))
    value: Mapped[float] = mapped_column(Float)
    at: Mapped[IndexedStamp]


class Feedback(Base):
    """What a user said about an answer: a rating, a comment, a corrected answer, or a preference."""

    __tablename__ = "feedback"

    id: Mapped[Serial]
    request_id: Mapped[str] = mapped_column(String(64), index=True)
    version_id: Mapped[VersionRef | None]
    choice: Mapped[int] = mapped_column(Integer, default=0)  # which of the request's n answers
    rating: Mapped[float | None] = mapped_column(Float)  # thumbs: 1 up, 0 down; stars: 1-5
    scale: Mapped[str | None] = mapped_column(String(20))  # thumbs, stars
    comment: Mapped[str | None] = mapped_column(Text)
    correction: Mapped[str | None] = mapped_column(Text)  # the answer it should have given
    preference: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # {chosen, rejected} texts
    user: Mapped[str | None] = mapped_column(String(200))
    api_key_id: Mapped[str | None] = mapped_column(String(64))
    at: Mapped[IndexedStamp]


class AlertEvent(Base):
    """An alert rule that fired: the value against its threshold, where it was sent, what was done."""

    __tablename__ = "alert_events"

    id: Mapped[Serial]
    rule: Mapped[str] = mapped_column(String(200), index=True)
    version_id: Mapped[VersionRef | None]
    metric: Mapped[str] = mapped_column(String(100))
    value: Mapped[float] = mapped_column(Float)
    threshold: Mapped[float] = mapped_column(Float)
    window_minutes: Mapped[float] = mapped_column(Float)
    message: Mapped[str] = mapped_column(Text)
    channels: Mapped[dict[str, Any]] = mapped_column(JSON)  # channel -> "sent" or the error
    action: Mapped[str | None] = mapped_column(Text)  # e.g. "rolled back production to fernwick-v2"
    at: Mapped[IndexedStamp]


# rows of these are written once: the triggers of migration 0007 and the ORM guard refuse changes
IMMUTABLE_TABLES = frozenset(
    {"model_versions", "alias_history", "eval_reports", "approvals", "version_metrics"}
)
