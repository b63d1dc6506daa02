"""The store: SQLAlchemy tables behind Alembic migrations; SQLite (WAL) by default, any URL at scale."""

from tunesmith.store.engine import open_store, session
from tunesmith.store.schema import AliasEvent, Base, DatasetVersion, ModelVersion, Run

__all__ = ["AliasEvent", "Base", "DatasetVersion", "ModelVersion", "Run", "open_store", "session"]
