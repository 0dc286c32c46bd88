"""Alembic environment: runs on the connection that wtb_ray.storage.migrate hands over."""

from alembic import context

from wtb_ray.storage.schema import metadata

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=connection.dialect.name == "sqlite",  # SQLite ALTERs go through table copies
)
with context.begin_transaction():
    context.run_migrations()
