import subprocess

import pytest
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory

from tests.conftest import pg_url, subprocess_env, wtb_cmd
from wtb_ray.domain.errors import StorageError
from wtb_ray.storage import db as dbmod
from wtb_ray.storage import migrate
from wtb_ray.storage.schema import metadata
from wtb_ray.storage.store import Store


def test_head_constant_matches_the_migration_scripts():
    config = Config()
    config.set_main_option("script_location", str(migrate.MIGRATIONS))
    assert ScriptDirectory.from_config(config).get_current_head() == migrate.HEAD


def _assert_schema_matches_tables(url):
    engine = dbmod.make_engine(url)
    try:
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), metadata)
        assert diff == [], f"migrations and schema.py disagree: {diff}"
    finally:
        engine.dispose()


def test_sqlite_is_migrated_on_open_and_matches_the_tables(sqlite_url):
    Store.open(sqlite_url).close()
    _assert_schema_matches_tables(sqlite_url)


@pytest.mark.parametrize("through_pgbouncer", [False, True])
def test_postgres_needs_an_explicit_upgrade(create_pg_database, pgbouncer, through_pgbouncer):
    name = create_pg_database(migrated=False)
    url = pgbouncer.url(name) if through_pgbouncer else pg_url(name)
    with pytest.raises(StorageError, match=r"not initialised.*run `wtb db upgrade`"):
        Store.open(url)
    result = subprocess.run(wtb_cmd("db", "upgrade", "--db", url, "--json"),
                            capture_output=True, text=True, env=subprocess_env(url))
    assert result.returncode == 0, result.stderr
    assert f'"to": "{migrate.HEAD}"' in result.stdout
    Store.open(url).close()
    _assert_schema_matches_tables(url)


def test_unreachable_database_is_a_clear_error():
    with pytest.raises(StorageError, match="cannot reach the database"):
        Store.open("postgresql://postgres@127.0.0.1:1/nope")


def test_the_postgres_commit_function_names_every_column_the_store_writes(create_pg_database):
    """Migration 0005's function lists the columns it copies from the JSON of a change: a
    column added to schema.py and written by change_sql but missing there would be dropped
    without an error. Then its migration must replace the function."""
    from importlib import import_module

    from wtb_ray.storage import change_sql

    frozen = import_module("wtb_ray.storage.migrations.versions.0005_pg_commit_function")
    assert set(frozen.EXECUTION) == set(change_sql.EXECUTION_COLS)
    assert {*frozen.SETTABLE, "head_checkpoint_id"} == change_sql.SETTABLE
    for mine, theirs in ((frozen.BLOB, change_sql.BLOB_COLS),
                         (frozen.CHECKPOINT, change_sql.CHECKPOINT_COLS),
                         (frozen.BOUNDARY, change_sql.BOUNDARY_COLS),
                         (frozen.AUDIT, change_sql.AUDIT_COLS),
                         (frozen.OUTBOX, change_sql.OUTBOX_COLS),
                         (frozen.UNDO, change_sql.UNDO_COLS)):
        assert mine == theirs
    from wtb_ray.storage.schema import BLOB_REFRESH_SECONDS
    assert frozen.BLOB_REFRESH_SECONDS == BLOB_REFRESH_SECONDS
    # ... and the function in a migrated database is that one.
    url = pg_url(create_pg_database())
    engine = dbmod.make_engine(url)
    try:
        with engine.connect() as conn:
            body = conn.exec_driver_sql(
                "SELECT pg_get_functiondef('wtb_commit_change(jsonb)'::regprocedure)").scalar()
    finally:
        engine.dispose()
    for column in (*frozen.EXECUTION, *frozen.CHECKPOINT, *frozen.OUTBOX, *frozen.UNDO):
        assert f"r.{column}" in body
