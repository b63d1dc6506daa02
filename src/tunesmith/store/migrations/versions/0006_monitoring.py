"""Monitoring: online scores of served requests, feedback on them, and fired alerts."""

import sqlalchemy as sa
from alembic import op

revision, down_revision = "0006", "0005"  # this revision, the one it follows


def upgrade() -> None:
    op.create_table(
        "request_scores",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("request_id", sa.String(64), nullable=False, index=True),
        sa.Column("version_id", sa.String(64), sa.ForeignKey("model_versions.id"), index=True),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("value", sa.Float, nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False, index=True),
    )
    op.create_table(
        "feedback",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("request_id", sa.String(64), nullable=False, index=True),
        sa.Column("version_id", sa.String(64), sa.ForeignKey("model_versions.id"), index=True),
        sa.Column("choice", sa.Integer, nullable=False),
        sa.Column("rating", sa.Float),
        sa.Column("scale", sa.String(20)),
        sa.Column("comment", sa.Text),
        sa.Column("correction", sa.Text),
        sa.Column("preference", sa.JSON),
        sa.Column("user", sa.String(200)),
        sa.Column("api_key_id", sa.String(64)),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False, index=True),
    )

    op.create_table(
        "alert_events",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("rule", sa.String(200), nullable=False, index=True),
        sa.Column("version_id", sa.String(64), sa.ForeignKey("model_versions.id"), index=True),
        sa.Column("metric", sa.String(100), nullable=False),
        sa.Column("value", sa.Float, nullable=False),
        sa.Column("threshold", sa.Float, nullable=False),
        sa.Column("window_minutes", sa.Float, nullable=False),
        sa.Column("message", sa.Text, nullable=False),
        sa.Column("channels", sa.JSON, nullable=False),
        sa.Column("action", sa.Text),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False, index=True),
    )


def downgrade() -> None:
    op.drop_table("alert_events")
    op.drop_table("feedback")
    op.drop_table("request_scores")
