"""Eval reports: one comparison of systems on a dataset split, with its gate outcome."""

import sqlalchemy as sa
from alembic import op

revision, down_revision = "0003", "0002"  # this revision, the one it follows


def upgrade() -> None:
    op.create_table(
        "eval_reports",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("family", sa.String(200), nullable=False, index=True),
        sa.Column("version_id", sa.String(64), sa.ForeignKey("model_versions.id"), index=True),
        sa.Column("dataset_version_id", sa.String(64), sa.ForeignKey("dataset_versions.id")),
        sa.Column("split", sa.String(20), nullable=False),
        sa.Column("task", sa.String(40), nullable=False),
        sa.Column("systems", sa.JSON, nullable=False),
        sa.Column("gate_passed", sa.Boolean),
        sa.Column("gates", sa.JSON, nullable=False),
        sa.Column("path", sa.Text, nullable=False),
        sa.Column("created_by", sa.String(200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("eval_reports")
