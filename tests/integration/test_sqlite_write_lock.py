"""Writers on one SQLite file queue for the write lock (BEGIN IMMEDIATE) by polling it."""

from __future__ import annotations

import sqlite3
import threading
import time

import pytest

from wtb_ray import END, Workflow
from wtb_ray.engine.bench import Bench
from wtb_ray.storage import db
from wtb_ray.storage.change import Change
from wtb_ray.storage.store import Store


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


def _counter() -> Workflow:
    return Workflow("count", nodes={"add": lambda s: {"n": s["n"] + 1}}, edges={"add": END},
                    entry="add")


def _note(ex) -> Change:
    """A change of the kind a run commits at its boundaries (through the store's writer)."""
    return Change(ex.id, [ex.event("note")], {"step": 0}, fence_version=ex.version)


def test_the_stores_boundary_writer_waits_for_the_lock_and_keeps_the_pools_timeout(tmp_path):
    """Boundary commits go through a connection of their own with SQLite's busy handler off
    (db.writer_connection): it still waits for another writer's lock, and the pool's
    connections keep their busy timeout."""
    path = tmp_path / "wtb.db"
    bench = Bench(Store.open(f"sqlite:///{path}", auto_migrate=True, busy_timeout_ms=30_000))
    holder = _connect(path, 30_000)
    try:
        assert bench.run(_counter(), {"n": 0}).status.value == "completed"  # writer made
        ex = bench.create(_counter(), {"n": 10})
        holder.execute("BEGIN IMMEDIATE")
        done: list = []
        thread = threading.Thread(target=lambda: done.append(bench.store.commit(_note(ex))))
        thread.start()
        time.sleep(0.3)
        assert not done and thread.is_alive()  # waiting for the lock, not failed
        holder.execute("ROLLBACK")
        thread.join(10)
        assert done and done[0].version == ex.version + 1
        assert "note" in [e.kind for e in bench.store.history(ex.id)]
        with bench.store.read() as conn:  # a pooled connection keeps its timeout
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30_000
        assert bench.run(_counter(), {"n": 5}).status.value == "completed"
    finally:
        holder.close()
        bench.close()


def test_the_stores_boundary_writer_gives_up_after_the_busy_timeout(tmp_path):
    path = tmp_path / "wtb.db"
    bench = Bench(Store.open(f"sqlite:///{path}", auto_migrate=True, busy_timeout_ms=200))
    try:
        bench.run(_counter(), {"n": 0})  # the writer connection exists
        ex = bench.create(_counter(), {"n": 0})
        holder = _connect(path, 30_000)
        holder.execute("BEGIN IMMEDIATE")
        started = time.monotonic()
        try:
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                bench.store.commit(_note(ex))
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        assert time.monotonic() - started >= 0.2
        assert "note" not in [e.kind for e in bench.store.history(ex.id)]
        assert bench.run(_counter(), {"n": 5}).status.value == "completed"  # usable after
    finally:
        bench.close()
