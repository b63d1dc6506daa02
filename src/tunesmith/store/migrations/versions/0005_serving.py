"""Serving: the request log, API keys (hashed) and rollouts of a version through a traffic plan."""

import sqlalchemy as sa
from alembic import op

revision, down_revision = "0005", "0004"  # this revision, the one it follows


def upgrade() -> None:
    op.create_table(
        "request_logs",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False, index=True),
        sa.Column("endpoint", sa.String(40), nullable=False),
        sa.Column("requested_model", sa.String(300), nullable=False),
        sa.Column("version_id", sa.String(64), sa.ForeignKey("model_versions.id"), index=True),
        sa.Column("route", sa.String(100), nullable=False),
        sa.Column("shadow_of", sa.String(64), index=True),
        sa.Column("prompt", sa.JSON, nullable=False),
        sa.Column("output", sa.JSON, nullable=False),
        sa.Column("finish_reasons", sa.JSON, nullable=False),
        sa.Column("params", sa.JSON, nullable=False),
        sa.Column("status", sa.Integer, nullable=False),
        sa.Column("error", sa.Text),
        sa.Column("latency_ms", sa.Float),
        sa.Column("ttft_ms", sa.Float),
        sa.Column("tokens_in", sa.Integer),
        sa.Column("tokens_out", sa.Integer),
        sa.Column("user", sa.String(200)),
        sa.Column("session", sa.String(200)),
        sa.Column("api_key_id", sa.String(64)),
        sa.Column("client", sa.JSON, nullable=False),
    )
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("key_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("prefix", sa.String(20), nullable=False),
        sa.Column("scopes", sa.JSON, nullable=False),
        sa.Column("user_group", sa.String(100)),
        sa.Column("created_by", sa.String(200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True)),
    )
    op.create_table(
        "rollouts",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("route", sa.String(300), nullable=False, index=True),
        sa.Column("version_id", sa.String(64), sa.ForeignKey("model_versions.id"), nullable=False),
        sa.Column("steps", sa.JSON, nullable=False),
        sa.Column("step", sa.Integer, nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("hold_seconds", sa.Float, nullable=False),
        sa.Column("step_started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("history", sa.JSON, nullable=False),
        sa.Column("created_by", sa.String(200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("rollouts")
    op.drop_table("api_keys")
    op.drop_table("request_logs")
