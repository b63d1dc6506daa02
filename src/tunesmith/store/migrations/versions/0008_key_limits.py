"""Per-key rate limits: requests and tokens per minute (null: the server's `serve.rate_limit`)."""

import sqlalchemy as sa
from alembic import op

revision, down_revision = "0008", "0007"  # this revision, the one it follows


def upgrade() -> None:
    with op.batch_alter_table("api_keys") as table:
        table.add_column(sa.Column("requests_per_minute", sa.Integer))
        table.add_column(sa.Column("tokens_per_minute", sa.Integer))


def downgrade() -> None:
    with op.batch_alter_table("api_keys") as table:
        table.drop_column("tokens_per_minute")
        table.drop_column("requests_per_minute")
