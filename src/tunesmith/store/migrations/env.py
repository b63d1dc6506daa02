"""Alembic environment: runs on the connection that `tunesmith.store.engine.migrate` hands over."""

from alembic import context
from sqlalchemy import create_engine

from tunesmith.store.schema import Base

target_metadata = Base.metadata
connection = context.config.attributes.get("connection")

if connection is None:  # `alembic` run by hand: `alembic -x url=sqlite:///... revision --autogenerate`
    url = context.get_x_argument(as_dictionary=True)["url"]
    with create_engine(url).connect() as own_connection:
        context.configure(connection=own_connection, target_metadata=target_metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
else:
    context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()
