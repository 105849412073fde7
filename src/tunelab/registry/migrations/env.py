"""Alembic environment: migrations run on the connection tunelab opens (see registry/db.py)."""

from alembic import context
from sqlalchemy import create_engine

from tunelab.registry.schema import Base

target_metadata = Base.metadata
config = context.config
connection = config.attributes.get("connection")


def run(connection) -> None:
    context.configure(connection=connection, target_metadata=target_metadata,
                      render_as_batch=connection.dialect.name == "sqlite")
    with context.begin_transaction():
        context.run_migrations()


if connection is not None:
    run(connection)
else:  # the alembic command line: `alembic -x url=... upgrade head`
    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option("sqlalchemy.url")
    with create_engine(url).begin() as own:
        run(own)
