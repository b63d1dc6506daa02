"""The store: SQLAlchemy tables behind Alembic migrations; SQLite (WAL) by default, any URL at scale."""

from tunesmith.store.engine import ImmutableRecordError, exclusive, open_store, schema_head, session
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
    VersionMetric,
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
    "ImmutableRecordError",
    "ModelVersion",
    "RequestLog",
    "RequestScore",
    "Rollout",
    "Run",
    "RunMetric",
    "VersionMetric",
    "exclusive",
    "open_store",
    "schema_head",
    "session",
]
