"""Promotion: how each alias move happened (promote, rollback, forced), and approvals of versions."""

import sqlalchemy as sa
from alembic import op

revision, down_revision = "0004", "0003"  # this revision, the one it follows


def upgrade() -> None:
    with op.batch_alter_table("alias_history") as batch:
        batch.add_column(sa.Column("action", sa.String(20), nullable=False, server_default="move"))
        batch.add_column(sa.Column("forced", sa.Boolean, nullable=False, server_default=sa.false()))
    op.create_table(
        "approvals",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column(
            "version_id", sa.String(64), sa.ForeignKey("model_versions.id"), nullable=False, index=True
        ),
        sa.Column("approver", sa.String(200), nullable=False),
        sa.Column("note", sa.Text, nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("approvals")
    with op.batch_alter_table("alias_history") as batch:
        batch.drop_column("forced")
        batch.drop_column("action")
