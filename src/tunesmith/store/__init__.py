"""The store: SQLAlchemy tables behind Alembic migrations; SQLite (WAL) by default, any URL at scale."""

from tunesmith.store.engine import open_store, session
from tunesmith.store.schema import (
    AlertEvent,
    AliasEvent,
    ApiKey,
    Approval,
    Base,
    DatasetVersion,
    EvalReport,
    Feedback,
    ModelVersion,
    RequestLog,
    RequestScore,
    Rollout,
    Run,
    RunMetric,
)

__all__ = [
    "AlertEvent",
    "AliasEvent",
    "ApiKey",
    "Approval",
    "Base",
    "DatasetVersion",
    "EvalReport",
    "Feedback",
    "ModelVersion",
    "RequestLog",
    "RequestScore",
    "Rollout",
    "Run",
    "RunMetric",
    "open_store",
    "session",
]
