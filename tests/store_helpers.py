"""Checks that the store's governance records refuse changes, on whichever database an engine opens."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine, delete, text, update
from sqlalchemy.exc import DBAPIError

from tunesmith.store import (
    AliasEvent,
    Approval,
    DatasetVersion,
    EvalReport,
    ImmutableRecordError,
    ModelVersion,
    Run,
    VersionMetric,
    session,
)

RECORDS = {  # each immutable table, and a field to try to change in it
    ModelVersion: ("model_versions", "name", "p-v9"),
    AliasEvent: ("alias_history", "reason", "rewritten"),
    EvalReport: ("eval_reports", "gate_passed", True),
    Approval: ("approvals", "approver", "mallory"),
    VersionMetric: ("version_metrics", "value", 0.99),
}


def stored_run() -> Run:
    """A finished run record for versions to point at."""
    return Run(id="run-1", kind="train", status="finished", project="p", config={}, base_model="m", path="p")


def stored_version(number: int, method: str = "lora") -> ModelVersion:
    """Version `number` of family "p", from `stored_run()`, as a record (no weights behind it)."""
    return ModelVersion(
        id=f"mv-{number}",
        name=f"p-v{number}",
        family="p",
        number=number,
        run_id="run-1",
        base_model="m",
        method=method,
        weights_sha256="0" * 64,
        seed=0,
        config={},
        path="p",
        created_by="alice",
    )


def add_one_of_each(engine: Engine) -> None:
    """One row in every immutable table (and the dataset and run they point at)."""
    with session(engine) as s:
        s.add(
            DatasetVersion(
                id="ds-1", name="d", content_hash="h", source="f", format="chat", counts={}, path="p"
            )
        )
        s.add(stored_run())
    with session(engine) as s:
        s.add(stored_version(1, "full"))
    with session(engine) as s:
        s.add(AliasEvent(family="p", alias="production", to_version_id="mv-1", actor="alice"))
        s.add(
            EvalReport(
                id="er-1",
                family="p",
                version_id="mv-1",
                split="test",
                task="generation",
                systems=[],
                gates=[],
                path="p",
                created_by="alice",
            )
        )
        s.add(Approval(version_id="mv-1", approver="bob", note=""))
        s.add(VersionMetric(version_id="mv-1", name="test_accuracy", value=0.5, source="test"))


def assert_records_immutable(engine: Engine) -> None:
    """Every immutable table refuses UPDATE and DELETE: through the ORM, as a bulk statement, and as
    raw SQL on a plain connection (the database's own triggers)."""
    add_one_of_each(engine)
    for model, (table, field, value) in RECORDS.items():
        with pytest.raises(ImmutableRecordError, match="immutable"), session(engine) as s:
            setattr(s.query(model).one(), field, value)
        with pytest.raises(ImmutableRecordError), session(engine) as s:
            s.delete(s.query(model).one())
        with pytest.raises(ImmutableRecordError), session(engine) as s:
            s.execute(update(model).values({field: value}))
        with pytest.raises(ImmutableRecordError), session(engine) as s:
            s.execute(delete(model))
        for statement in (f"UPDATE {table} SET {field} = {field}", f"DELETE FROM {table}"):
            with pytest.raises(DBAPIError, match="immutable"), engine.begin() as conn:
                conn.execute(text(statement))
    with session(engine) as s:  # nothing changed, nothing lost
        assert s.get(ModelVersion, "mv-1").name == "p-v1"
        assert all(s.query(model).count() == 1 for model in RECORDS)
