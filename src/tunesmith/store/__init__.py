"""The store: SQLAlchemy tables behind Alembic migrations; SQLite (WAL) by default, any URL at scale."""

from tunesmith.store.engine import open_store, session
from tunesmith.store.schema import (
    AliasEvent,
    Approval,
    Base,
    DatasetVersion,
    EvalReport,
    ModelVersion,
    Run,
    RunMetric,
)

__all__ = [
    "AliasEvent",
    "Approval",
    "Base",
    "DatasetVersion",
    "EvalReport",
    "ModelVersion",
    "Run",
    "RunMetric",
    "open_store",
    "session",
]
