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
