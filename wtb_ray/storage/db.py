"""Database engines for the two backends, configured as the design requires.

SQLite: WAL, busy_timeout, synchronous=NORMAL, foreign keys on; write transactions start with
BEGIN IMMEDIATE so two writers queue for the write lock instead of failing on lock upgrade
(polling for it finely: see ``begin_immediate``); WAL checkpoints run on a thread of their own
(``wal_checkpointer``; see wal.py).
PostgreSQL: psycopg 3 with ``prepare_threshold=None``: no server-side prepared statements, so it
works behind PgBouncer in transaction mode.
"""

from __future__ import annotations

import sqlite3
import time
import weakref
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.pool import StaticPool

from wtb_ray.storage.wal import WalCheckpointer

WRITE_FLAG = "wtb_write"
LOCK_POLL_S = (0.0001, 0.002)  # first and longest sleep between tries for the write lock
_checkpointers: weakref.WeakKeyDictionary[Engine, WalCheckpointer] = weakref.WeakKeyDictionary()


def normalize_url(url: str) -> str:
    """Accept postgres:// and postgresql:// and pick the psycopg 3 driver."""
    parsed = make_url(url)
    if parsed.drivername in ("postgres", "postgresql", "postgresql+psycopg2"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def sqlite_path(url: str) -> Path | None:
    database = make_url(url).database
    if not database or database == ":memory:":
        return None
    return Path(database)


def make_engine(url: str, *, busy_timeout_ms: int = 30_000, pool_size: int = 5) -> Engine:
    url = normalize_url(url)
    if is_sqlite(url):
        return _sqlite_engine(url, busy_timeout_ms)
    return create_engine(
        url,
        connect_args={"prepare_threshold": None, "connect_timeout": 10},
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=False,  # disconnects are retried per transaction instead (fewer round trips)
        pool_recycle=1800,
    )


def _sqlite_engine(url: str, busy_timeout_ms: int) -> Engine:
    path = sqlite_path(url)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(
        url,
        connect_args={"check_same_thread": False, "timeout": busy_timeout_ms / 1000},
        # An in-memory database lives in one connection, so every user must share it.
        poolclass=None if path is not None else StaticPool,
    )

    @event.listens_for(engine, "connect")
    def _configure(dbapi_conn, _record) -> None:
        dbapi_conn.isolation_level = None  # we emit BEGIN ourselves (see below)
        cur = dbapi_conn.cursor()
        # Before the first table exists only (a no-op afterwards): state values of ~1 KiB
        # leave a fifth of every 4 KiB page empty, under a tenth of an 8 KiB one.
        cur.execute("PRAGMA page_size=8192")
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        if path is not None:
            cur.execute("PRAGMA wal_autocheckpoint=0")  # the checkpointer's thread does it
        cur.close()

    @event.listens_for(engine, "begin")
    def _begin(conn) -> None:
        if conn.info.pop(WRITE_FLAG, False):
            begin_immediate(conn.connection.driver_connection)
        else:
            conn.exec_driver_sql("BEGIN")

    if path is not None:
        checkpointer = _checkpointers[engine] = WalCheckpointer(path, busy_timeout_ms)
        event.listen(engine, "engine_disposed", lambda _engine: checkpointer.stop())
    return engine


def wal_checkpointer(engine: Engine) -> WalCheckpointer | None:
    """The checkpointer an SQLite file's engine has, to be told of each commit."""
    return _checkpointers.get(engine)


def begin_immediate(dbapi_conn: sqlite3.Connection, timeout_ms: int | None = None) -> None:
    """BEGIN IMMEDIATE, trying again for the write lock every 0.1-2 ms until the busy timeout.

    SQLite's own busy handler sleeps 1, 2, 5, 10, 15, 20 ... ms between tries, so a writer
    that arrives while another commits (a millisecond or two) used to sleep 5-10 ms more:
    with executors committing back to back, that was most of an API request's time.
    ``timeout_ms``: the connection's busy timeout is 0 for good (one kept for a single
    writer: see ``writer_connection``), and this is how long to try; else its own is
    turned off for the tries and back on after (three more statements).
    """
    cur = dbapi_conn.cursor()
    try:
        if timeout_ms is not None:
            _try_begin(cur, timeout_ms)
            return
        saved_ms = cur.execute("PRAGMA busy_timeout").fetchone()[0]
        cur.execute("PRAGMA busy_timeout=0")  # try once, do not wait inside SQLite
        try:
            _try_begin(cur, saved_ms)
        finally:
            cur.execute(f"PRAGMA busy_timeout={int(saved_ms)}")
    finally:
        cur.close()


def _try_begin(cur: sqlite3.Cursor, timeout_ms: int) -> None:
    deadline = time.monotonic() + timeout_ms / 1000
    pause = LOCK_POLL_S[0]
    while True:
        try:
            cur.execute("BEGIN IMMEDIATE")
            return
        except sqlite3.OperationalError as exc:
            busy = exc.sqlite_errorcode & 0xFF == sqlite3.SQLITE_BUSY  # or an extended BUSY_*
            if not busy or time.monotonic() > deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 2, LOCK_POLL_S[1])


def writer_connection(engine: Engine) -> tuple[Any, int]:
    """A connection of ``engine``'s (an SQLite file's) for one writer alone, out of the pool
    (closing it closes it), with SQLite's busy handler off for good: (the SQLAlchemy
    connection, the busy timeout its ``begin_immediate`` is to poll for). Saves the three
    statements a pooled connection's BEGIN spends turning the handler off and on (10-20 us
    a commit here). Its other statements cannot meet a busy database: in
    WAL mode a transaction that holds the write lock waits on no other, and its inline WAL
    checkpoints are PASSIVE, which never wait."""
    raw = engine.raw_connection()
    raw.detach()
    cur = raw.dbapi_connection.cursor()
    try:
        timeout_ms = cur.execute("PRAGMA busy_timeout").fetchone()[0]
        cur.execute("PRAGMA busy_timeout=0")
    finally:
        cur.close()
    return raw, int(timeout_ms)
