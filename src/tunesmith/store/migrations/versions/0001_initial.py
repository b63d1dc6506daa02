"""Initial schema: dataset versions, runs, model versions, alias history."""

import sqlalchemy as sa
from alembic import op

revision, down_revision = "0001", None  # this revision, the one it follows


def upgrade() -> None:
    op.create_table(
        "dataset_versions",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("content_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("format", sa.String(40), nullable=False),
        sa.Column("counts", sa.JSON, nullable=False),
        sa.Column("path", sa.Text, nullable=False),
        sa.Column("meta", sa.JSON, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "runs",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("kind", sa.String(40), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("project", sa.String(200), nullable=False),
        sa.Column("config", sa.JSON, nullable=False),
        sa.Column("dataset_version_id", sa.String(64), sa.ForeignKey("dataset_versions.id")),
        sa.Column("base_model", sa.String(300), nullable=False),
        sa.Column("metrics", sa.JSON, nullable=False),
        sa.Column("path", sa.Text, nullable=False),
        sa.Column("error", sa.Text),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
    )
    op.create_table(
        "model_versions",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False, unique=True),
        sa.Column("family", sa.String(200), nullable=False, index=True),
        sa.Column("number", sa.Integer, nullable=False),
        sa.Column("run_id", sa.String(64), sa.ForeignKey("runs.id"), nullable=False),
        sa.Column("parent_id", sa.String(64), sa.ForeignKey("model_versions.id")),
        sa.Column("base_model", sa.String(300), nullable=False),
        sa.Column("base_revision", sa.String(200)),
        sa.Column("method", sa.String(40), nullable=False),
        sa.Column("weights_sha256", sa.String(64), nullable=False),
        sa.Column("dataset_version_id", sa.String(64), sa.ForeignKey("dataset_versions.id")),
        sa.Column("seed", sa.Integer, nullable=False),
        sa.Column("config", sa.JSON, nullable=False),
        sa.Column("metrics", sa.JSON, nullable=False),
        sa.Column("lineage", sa.JSON, nullable=False),
        sa.Column("path", sa.Text, nullable=False),
        sa.Column("created_by", sa.String(200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("family", "number", name="uq_model_versions_family_number"),
    )
    op.create_table(
        "alias_history",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("family", sa.String(200), nullable=False, index=True),
        sa.Column("alias", sa.String(100), nullable=False),
        sa.Column("from_version_id", sa.String(64), sa.ForeignKey("model_versions.id")),
        sa.Column("to_version_id", sa.String(64), sa.ForeignKey("model_versions.id")),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("gate_report_id", sa.String(64)),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("alias_history")
    op.drop_table("model_versions")
    op.drop_table("runs")
    op.drop_table("dataset_versions")
