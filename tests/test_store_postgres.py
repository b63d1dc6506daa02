"""The store and the registry flow on a real PostgreSQL server (started on loopback by a fixture)."""

from __future__ import annotations

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import DBAPIError
from typer.testing import CliRunner

from store_helpers import assert_records_immutable
from test_registry import setup_project
from tunesmith.cli import app
from tunesmith.config import load_config
from tunesmith.registry.aliases import history
from tunesmith.store import EvalReport, open_store, schema_head, session
from tunesmith.train.run import train
from tunesmith.workspace import open_workspace

runner = CliRunner()


def test_migrations_and_registry_flow_on_postgresql(tmp_path, tiny_model_dir, postgres_server, monkeypatch):
    url = postgres_server()
    monkeypatch.setenv("TUNESMITH_DB_URL", url)
    config_path, settings = setup_project(tmp_path, tiny_model_dir)
    config = load_config(config_path, settings)
    workspace = open_workspace(config)
    assert workspace.engine.dialect.name == "postgresql"
    with create_engine(url).connect() as conn:
        assert conn.execute(text("select version_num from alembic_version")).scalar() == schema_head()

    first = train(config).version.name
    second = train(config).version.name
    args = ["--config", str(config_path), *[a for s in settings for a in ("--set", s)]]
    assert runner.invoke(app, ["eval", first, "--compare", "base", "--gate", *args]).exit_code == 0
    assert (
        runner.invoke(
            app, ["registry", "promote", first, "--to", "production", "--config", str(config_path)]
        ).exit_code
        == 0
    )
    assert (
        runner.invoke(app, ["eval", second, "--compare", "base,production", "--gate", *args]).exit_code == 0
    )
    assert (
        runner.invoke(
            app, ["registry", "promote", second, "--to", "production", "--config", str(config_path)]
        ).exit_code
        == 0
    )
    rolled = runner.invoke(app, ["registry", "rollback", "--config", str(config_path)])
    assert rolled.exit_code == 0 and f"production → {first}" in rolled.output

    # a shared store takes no OS user's word for who approves: an admin key says who
    unnamed = runner.invoke(app, ["registry", "approve", second, "--config", str(config_path)])
    assert unnamed.exit_code == 1 and "this store is shared (postgresql)" in " ".join(unnamed.output.split())

    moves = [(e.alias, e.action) for e in history(workspace, config.project) if e.alias == "production"]
    assert moves == [("production", "rollback"), ("production", "promote"), ("production", "promote")]
    with session(workspace.engine) as s:
        assert s.query(EvalReport).filter(EvalReport.gate_passed.is_(True)).count() == 2


def test_governance_records_refuse_update_and_delete_on_postgresql(postgres_server):
    engine = open_store(postgres_server())
    assert engine.dialect.name == "postgresql"
    assert_records_immutable(engine)
    with pytest.raises(DBAPIError, match="immutable"), engine.begin() as conn:
        conn.execute(text("TRUNCATE model_versions CASCADE"))


def test_processes_that_open_a_fresh_postgresql_store_at_once_all_migrate_it(postgres_server):
    """Replicas and sweep workers start together on an empty database: one migrates, the others wait."""
    import subprocess
    import sys

    url = postgres_server()
    code = "import sys; from tunesmith.store import open_store; open_store(sys.argv[1])"
    starts = [subprocess.Popen([sys.executable, "-c", code, url], stderr=subprocess.PIPE) for _ in range(4)]
    errors = [p.communicate(timeout=120)[1].decode() for p in starts]
    assert all(p.returncode == 0 for p in starts), "\n".join(errors)
