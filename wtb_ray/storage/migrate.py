"""Schema migrations with Alembic, driven programmatically (no alembic.ini needed)."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Engine, inspect, text

from wtb_ray.domain.errors import StorageError

MIGRATIONS = Path(__file__).with_name("migrations")
# The newest revision in migrations/versions; a unit test keeps this in step with the scripts.
HEAD = "0005"


def _config(connection):
    from alembic.config import Config  # imported here: Alembic is only needed to migrate

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        if not inspect(conn).has_table("alembic_version"):
            return None
        return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()


def upgrade(engine: Engine, revision: str = "head") -> str | None:
    """Bring the database to ``revision``; returns the revision it is at afterwards."""
    from alembic import command

    with engine.begin() as conn:
        command.upgrade(_config(conn), revision)
    return current_revision(engine)


def ensure_current(engine: Engine, *, auto: bool) -> None:
    """Upgrade (``auto``) or refuse to run on a database that is not at HEAD."""
    try:
        revision = current_revision(engine)
    except Exception as exc:  # connection refused, bad credentials, ...
        raise StorageError(f"cannot reach the database: {type(exc).__name__}: {exc}") from exc
    if revision == HEAD:
        return
    if auto:
        upgrade(engine)
        return
    where = f"at revision {revision}" if revision else "not initialised"
    raise StorageError(f"the database is {where}, this version needs {HEAD}: run `wtb db upgrade`")
