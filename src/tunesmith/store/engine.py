"""Opening the store: engine, SQLite pragmas, and migrations to the latest schema."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import ORMExecuteState, Session, UOWTransaction

from tunesmith.store.schema import IMMUTABLE_TABLES

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def open_store(url: str) -> Engine:
    """Create an engine for `url` and migrate its schema to the latest revision.

    SQLite files get WAL journaling (readers never block the writer), foreign keys and a busy
    timeout, so a server, a trainer and the CLI can share one file.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url)
    if parsed.get_backend_name() == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    migrate(engine)
    return engine


def _alembic() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


def schema_head() -> str:
    """The latest migration's revision: what `alembic_version` holds in a store opened by this release."""
    from alembic.script import ScriptDirectory

    return str(ScriptDirectory.from_config(_alembic()).get_current_head())


def migrate(engine: Engine, revision: str = "head") -> None:
    """Bring the schema of `engine`'s database to `revision` with the packaged Alembic migrations.

    One process at a time (`exclusive`): replicas or sweep workers that start together on a fresh
    database would otherwise both create Alembic's table, and all but one fail.
    """
    config = _alembic()
    with exclusive(engine, "tunesmith migrate"), engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)


@contextmanager
def session(engine: Engine) -> Iterator[Session]:
    """A session that commits on success and rolls back on error."""
    with Session(engine, expire_on_commit=False) as s, s.begin():
        yield s


@contextmanager
def exclusive(engine: Engine, name: str) -> Iterator[None]:
    """Hold the lock `name` against every other process that uses the same database, for the block.

    On PostgreSQL, a session advisory lock (processes on any machine); on SQLite, a file lock beside
    the database file (processes on this machine, the only ones that can open it). Other databases
    (an Optuna storage on MySQL, say) get no lock: the block runs as it would without one.
    """
    if engine.dialect.name == "postgresql":
        with engine.connect() as connection:
            connection.execute(text("SELECT pg_advisory_lock(hashtextextended(:name, 0))"), {"name": name})
            try:
                yield
            finally:
                connection.execute(
                    text("SELECT pg_advisory_unlock(hashtextextended(:name, 0))"), {"name": name}
                )
                connection.commit()
        return
    if engine.dialect.name != "sqlite":
        yield
        return
    from filelock import FileLock

    database = engine.url.database
    if not database or database == ":memory:":  # one process owns an in-memory database
        yield
        return
    digest = hashlib.sha256(name.encode()).hexdigest()[:16]
    with FileLock(f"{database}.{digest}.lock"):
        yield


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


class ImmutableRecordError(Exception):
    """A change to a record that is written once (a version, an alias move, an eval report...)."""


@event.listens_for(Session, "before_flush")
def _refuse_changed_records(s: Session, _flush: UOWTransaction, _instances: Any) -> None:
    """The ORM side of the immutability triggers: no flush may update or delete an immutable row."""
    for row, change in [*((r, "update") for r in s.dirty), *((r, "delete") for r in s.deleted)]:
        table = getattr(row, "__tablename__", None)
        if table in IMMUTABLE_TABLES and (change == "delete" or s.is_modified(row)):
            raise ImmutableRecordError(
                f"{table} rows are immutable ({change} refused): append a new row instead"
            )


@event.listens_for(Session, "do_orm_execute")
def _refuse_bulk_changes(state: ORMExecuteState) -> None:
    """`session.execute(update(ModelVersion)...)` and bulk deletes are refused the same way."""
    if not (state.is_update or state.is_delete):
        return
    table = getattr(state.bind_mapper, "local_table", None) if state.bind_mapper else None
    name = getattr(table, "name", None)
    if name in IMMUTABLE_TABLES:
        change = "update" if state.is_update else "delete"
        raise ImmutableRecordError(f"{name} rows are immutable ({change} refused): append a new row instead")
