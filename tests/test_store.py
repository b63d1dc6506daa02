import sqlite3

import pytest
from sqlalchemy import inspect, text

from store_helpers import assert_records_immutable
from tunesmith.config import load_config
from tunesmith.store import AliasEvent, DatasetVersion, open_store, schema_head, session
from tunesmith.workspace import atomic_dir, init_project, open_workspace


def test_init_writes_a_valid_commented_config_and_a_migrated_sqlite_store(tmp_path):
    config_path = init_project(tmp_path / "proj")
    text_ = config_path.read_text(encoding="utf-8")
    assert "project: proj" in text_
    assert text_.count("#") > 20  # every section is explained
    config = load_config(config_path)
    db = tmp_path / "proj" / ".tunesmith" / "tunesmith.db"
    assert db.exists()
    with sqlite3.connect(db) as conn:
        tables = {row[0] for row in conn.execute("select name from sqlite_master where type='table'")}
        assert conn.execute("select version_num from alembic_version").fetchone() == (schema_head(),)
    assert {"dataset_versions", "runs", "model_versions", "alias_history", "run_metrics"} <= tables
    assert config.workspace_dir == tmp_path / "proj" / ".tunesmith"


def test_init_keeps_an_existing_config(tmp_path):
    init_project(tmp_path)
    with pytest.raises(FileExistsError, match="--force"):
        init_project(tmp_path)
    init_project(tmp_path, force=True)


def test_sqlite_runs_in_wal_mode_with_foreign_keys(tmp_path):
    engine = open_store(f"sqlite:///{tmp_path / 'a.db'}")
    with engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1


def test_opening_twice_is_idempotent_and_keeps_rows(tmp_path):
    url = f"sqlite:///{tmp_path / 'a.db'}"
    with session(open_store(url)) as s:
        s.add(
            DatasetVersion(
                id="ds-1",
                name="x",
                content_hash="h",
                source="f",
                format="chat",
                counts={"train": 1},
                path="p",
                meta={},
            )
        )
    with session(open_store(url)) as s:
        assert s.get(DatasetVersion, "ds-1").counts == {"train": 1}


def test_foreign_keys_are_enforced(tmp_path):
    engine = open_store(f"sqlite:///{tmp_path / 'a.db'}")
    with pytest.raises(Exception, match="FOREIGN KEY"), session(engine) as s:
        s.add(AliasEvent(family="f", alias="production", to_version_id="mv-missing", actor="me", reason=""))


def test_store_url_from_the_environment_is_used(tmp_path, monkeypatch):
    other = tmp_path / "shared" / "store.db"
    monkeypatch.setenv("TUNESMITH_DB_URL", f"sqlite:///{other}")
    init_project(tmp_path / "proj")
    assert other.exists()
    assert not (tmp_path / "proj" / ".tunesmith" / "tunesmith.db").exists()


def test_schema_matches_the_orm_tables(tmp_path):
    engine = open_store(f"sqlite:///{tmp_path / 'a.db'}")
    from tunesmith.store import Base

    inspector = inspect(engine)
    for table in Base.metadata.sorted_tables:
        db_columns = {c["name"] for c in inspector.get_columns(table.name)}
        assert db_columns == set(table.columns.keys()), table.name
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    with engine.connect() as connection:  # types, keys and constraints too: what autogenerate would write
        assert compare_metadata(MigrationContext.configure(connection), Base.metadata) == []


def test_atomic_dir_leaves_nothing_behind_on_failure(tmp_path):
    target = tmp_path / "out"
    with pytest.raises(RuntimeError), atomic_dir(target) as tmp:
        (tmp / "half.txt").write_text("half")
        raise RuntimeError("killed")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []
    with atomic_dir(target) as tmp:
        (tmp / "whole.txt").write_text("whole")
    assert (target / "whole.txt").read_text() == "whole"


def test_open_workspace_creates_the_folder(tmp_path):
    config = load_config(None, [f"workspace={tmp_path / 'ws'}"])
    workspace = open_workspace(config)
    assert workspace.root.is_dir()
    assert workspace.run_dir("run-1") == tmp_path / "ws" / "runs" / "run-1"


def test_governance_records_refuse_update_and_delete_on_sqlite(tmp_path):
    assert_records_immutable(open_store(f"sqlite:///{tmp_path / 'store.db'}"))
