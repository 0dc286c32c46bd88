"""Writers on one SQLite file queue for the write lock (BEGIN IMMEDIATE) by polling it."""

from __future__ import annotations

import sqlite3
import threading
import time

import pytest

from wtb_ray.storage import db


def _connect(path, busy_timeout_ms: int) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA busy_timeout={busy_timeout_ms}")
    return conn


def test_a_writer_waits_for_the_lock_and_takes_it_once_released(tmp_path):
    path = tmp_path / "lock.db"
    holder, waiter = _connect(path, 30_000), _connect(path, 30_000)
    holder.execute("CREATE TABLE t (x INTEGER)")
    holder.execute("BEGIN IMMEDIATE")
    holder.execute("INSERT INTO t VALUES (1)")
    got: list[float] = []

    def wait_for_lock() -> None:
        db.begin_immediate(waiter)
        got.append(time.monotonic())
        waiter.execute("INSERT INTO t VALUES (2)")
        waiter.execute("COMMIT")

    thread = threading.Thread(target=wait_for_lock)
    thread.start()
    time.sleep(0.3)
    assert not got and thread.is_alive()  # still waiting (not failed) while the lock is held
    holder.execute("COMMIT")
    thread.join(10)
    assert got, "the waiting writer never got the lock"
    assert [r[0] for r in holder.execute("SELECT x FROM t ORDER BY x")] == [1, 2]
    # The connection's busy timeout is as it was.
    assert waiter.execute("PRAGMA busy_timeout").fetchone()[0] == 30_000


def test_a_writer_gives_up_after_the_busy_timeout(tmp_path):
    path = tmp_path / "lock.db"
    holder, waiter = _connect(path, 30_000), _connect(path, 200)
    holder.execute("CREATE TABLE t (x INTEGER)")
    holder.execute("BEGIN IMMEDIATE")
    started = time.monotonic()
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        db.begin_immediate(waiter)
    assert time.monotonic() - started >= 0.2
    assert not waiter.in_transaction
    assert waiter.execute("PRAGMA busy_timeout").fetchone()[0] == 200
    holder.execute("ROLLBACK")
