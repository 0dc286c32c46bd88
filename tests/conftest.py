"""Shared fixtures: databases for every backend, started for real.

PostgreSQL tests get a database of their own per session (``wtb_test_<random>``) and a private
PgBouncer on a free port, so parallel runs on one machine never collide. Nothing is skipped when
PostgreSQL is missing: the run fails, because CI must exercise every backend.
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from wtb_ray.engine.bench import Bench
from wtb_ray.storage import db as dbmod
from wtb_ray.storage import migrate
from wtb_ray.storage.store import Store

ROOT = Path(__file__).resolve().parents[1]
PG_HOST = os.environ.get("PGHOST", "127.0.0.1")
PG_PORT = int(os.environ.get("PGPORT", "5432"))
BACKENDS = ("sqlite", "postgres", "pgbouncer")


@pytest.fixture(scope="session", autouse=True)
def wtb_home(tmp_path_factory):
    """WTB_HOME for the whole session (this process, the `wtb` processes and Ray workers it
    starts): what tests make there, such as the directories of workspace=True runs and
    forks, stays out of the user's ~/.wtb."""
    home = tmp_path_factory.mktemp("wtb-home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("WTB_HOME", str(home))
        yield home


def free_port() -> int:
    """A free port between Ray's worker ports (10002-19999) and the kernel's ephemeral range
    (32768 up): a port the kernel picked for us is soon handed to some outgoing connection,
    which can take it before the server meant to listen there binds it (a Ray metrics
    agent failed to start so, once, in CI)."""
    for _ in range(500):
        port = random.randrange(20000, 32768)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in 20000-32767")


def pg_url(database: str, port: int = PG_PORT) -> str:
    return f"postgresql+psycopg://postgres@{PG_HOST}:{port}/{database}"


@dataclass
class PgBouncer:
    port: int
    rundir: Path

    def start(self) -> None:
        subprocess.run(["bash", str(ROOT / "cluster/pgbouncer/start.sh"), str(self.port),
                        str(self.rundir)], check=True, capture_output=True, text=True)

    def stop(self) -> None:
        subprocess.run(["bash", str(ROOT / "cluster/pgbouncer/stop.sh"), str(self.port),
                        str(self.rundir)], check=True)

    def url(self, database: str) -> str:
        return pg_url(database, self.port)


def _admin(sql: str) -> None:
    with psycopg.connect(host=PG_HOST, port=PG_PORT, user="postgres", dbname="postgres",
                         autocommit=True) as conn:
        conn.execute(sql)


@pytest.fixture(scope="session")
def postgres_ready() -> None:
    result = subprocess.run(["bash", str(ROOT / "cluster/postgres/ensure.sh")],
                            capture_output=True, text=True)
    if result.returncode:
        pytest.fail(f"PostgreSQL is required and not reachable: {result.stderr}")


@pytest.fixture(scope="session")
def create_pg_database(postgres_ready):
    """Factory: a fresh, migrated database; all dropped at the end of the session."""
    made: list[str] = []

    def create(migrated: bool = True) -> str:
        name = f"wtb_test_{uuid.uuid4().hex[:10]}"
        _admin(f"CREATE DATABASE {name}")
        made.append(name)
        if migrated:
            engine = dbmod.make_engine(pg_url(name))
            migrate.upgrade(engine)
            engine.dispose()
        return name

    yield create
    for name in made:
        _admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(scope="session")
def pg_database(create_pg_database) -> str:
    return create_pg_database()


def start_pgbouncer() -> PgBouncer:
    # Not under pytest's temp tree: PgBouncer runs as postgres, which cannot enter that (0700).
    bouncer = PgBouncer(free_port(), Path(tempfile.mkdtemp(prefix="wtb-pgbouncer-")))
    try:
        bouncer.start()
    except subprocess.CalledProcessError as exc:
        pytest.fail(f"PgBouncer did not start: {exc.stderr}")
    return bouncer


@pytest.fixture(scope="session")
def pgbouncer(postgres_ready) -> PgBouncer:
    bouncer = start_pgbouncer()
    yield bouncer
    bouncer.stop()
    shutil.rmtree(bouncer.rundir, ignore_errors=True)


@pytest.fixture(params=BACKENDS)
def db_url(request, tmp_path) -> str:
    """The same test on SQLite, PostgreSQL direct, and PostgreSQL through PgBouncer."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'wtb.db'}"
    database = request.getfixturevalue("pg_database")
    if request.param == "postgres":
        return pg_url(database)
    return request.getfixturevalue("pgbouncer").url(database)


@pytest.fixture(params=("sqlite", "pgbouncer"))
def durable_url(request, tmp_path) -> str:
    """The two deployments the issues name: embedded SQLite and PostgreSQL behind PgBouncer."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'wtb.db'}"
    return request.getfixturevalue("pgbouncer").url(request.getfixturevalue("pg_database"))


@pytest.fixture(params=("sqlite", "pgbouncer"))
def fresh_durable_url(request, tmp_path) -> str:
    """durable_url with a PostgreSQL database of its own, for tests that drain or scan whole
    tables (the outbox relay, the integrity checker) and must not see other tests' rows."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'wtb.db'}"
    return request.getfixturevalue("pgbouncer").url(
        request.getfixturevalue("create_pg_database")())


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'wtb.db'}"


@pytest.fixture
def bench_factory():
    opened: list[Bench] = []

    def make(url: str, **kwargs) -> Bench:
        bench = Bench(Store.open(url, auto_migrate=True), **kwargs)
        opened.append(bench)
        return bench

    yield make
    for bench in opened:
        bench.close()


@pytest.fixture
def bench(bench_factory, sqlite_url) -> Bench:
    return bench_factory(sqlite_url)


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray instance for the whole session (starting one takes seconds)."""
    import ray

    for attempt in range(2):  # a port taken between choosing and binding it: once more
        metrics_port = free_port()
        try:
            ray.init(address="local", num_cpus=2, include_dashboard=False, namespace="wtb",
                     log_to_driver=False, _metrics_export_port=metrics_port,
                     runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})
            break
        except Exception:
            ray.shutdown()
            if attempt:
                raise
    yield {"metrics_port": metrics_port}
    ray.shutdown()


def subprocess_env(db_url: str, **extra: str) -> dict[str, str]:
    env = {**os.environ, "WTB_DATABASE_URL": db_url, "PYTHONPATH": str(ROOT),
           "PYTHONUNBUFFERED": "1", **extra}
    return env


def wtb_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "wtb_ray.cli", *args]
