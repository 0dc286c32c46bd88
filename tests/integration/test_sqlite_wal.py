"""SQLite WAL checkpoints run on the store's checkpointer thread, not inside commits; the WAL
stays bounded even under a writer that never pauses, and is rewound after a round even when
a commit lands while the round runs."""

from __future__ import annotations

import sqlite3
import time
from types import SimpleNamespace

import pytest
from sqlalchemy import text

import wtb_ray.storage.wal as wal
from wtb_ray import END, Workflow
from wtb_ray.engine.bench import Bench
from wtb_ray.storage import db
from wtb_ray.storage.store import Store


def _count(state, ctx=None):
    return {"count": state["count"] + 1, "pad": "x" * 3000}  # a few pages per boundary


WORKFLOW = Workflow("wal-10", nodes={f"n{i}": _count for i in range(10)},
                    edges={**{f"n{i}": f"n{i + 1}" for i in range(9)}, "n9": END}, entry="n0")


def _wait(condition, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def _sizes(sqlite_url):
    path = db.sqlite_path(sqlite_url)
    wal_file = path.with_name(path.name + "-wal")
    return (path.stat().st_size,
            wal_file.stat().st_size if wal_file.exists() else 0)


def test_commits_leave_the_checkpoints_to_the_thread(sqlite_url, monkeypatch):
    monkeypatch.setattr(wal, "CHECKPOINT_FRAMES", 50)
    monkeypatch.setattr(wal, "BEHIND_FRAMES", 10**9)  # no commit's own checkpoint: the
    monkeypatch.setattr(wal, "LAG", 10**9)  # thread's alone
    bench = Bench(Store.open(sqlite_url))
    try:
        checkpointer = db.wal_checkpointer(bench.store.engine)
        with bench.store.read() as conn:  # SQLite's own checkpoints are off in every connection
            assert conn.execute(text("PRAGMA wal_autocheckpoint")).scalar() == 0
        db_before, _ = _sizes(sqlite_url)
        for _ in range(20):  # ~200 commits of a few pages each
            bench.run(WORKFLOW, {"count": 0})
        # Pages reach the database file only by a checkpoint, and no commit ran one.
        _wait(lambda: checkpointer.checkpoints >= 1 and _sizes(sqlite_url)[0] > db_before)
        assert checkpointer.inline == 0
    finally:
        bench.close()


def test_a_writer_that_never_pauses_keeps_the_wal_bounded(sqlite_url, monkeypatch):
    monkeypatch.setattr(wal, "CHECKPOINT_FRAMES", 200)
    monkeypatch.setattr(wal, "BEHIND_FRAMES", 600)
    bench = Bench(Store.open(sqlite_url))
    try:
        checkpointer = db.wal_checkpointer(bench.store.engine)
        for _ in range(250):  # back to back: some 20 times BEHIND_FRAMES written
            bench.run(WORKFLOW, {"count": 0})
        frames = (_sizes(sqlite_url)[1] - 32) // (8192 + 24)  # the WAL's longest
        # Rewound once a round finds 600 frames: ~800-1,400 at the longest here. Without the
        # commits' own checkpoints the WAL would hold everything written, ~40,000 frames (16
        # a boundary). The bound leaves room for a machine busy with other work (runs during
        # a full test suite reached 3,034 and, once, 7,129), and is still a third of that.
        assert frames < 20 * 600, frames
        assert checkpointer.inline >= 1 and checkpointer.checkpoints >= 1
        assert bench.run(WORKFLOW, {"count": 0}).step == 10  # and nothing was lost on the way
    finally:
        bench.close()


def test_closing_the_store_ends_the_thread(sqlite_url, monkeypatch):
    monkeypatch.setattr(wal, "CHECKPOINT_FRAMES", 1)
    bench = Bench(Store.open(sqlite_url))
    checkpointer = db.wal_checkpointer(bench.store.engine)
    for _ in range(3):  # enough commits to wake it
        bench.run(WORKFLOW, {"count": 0})
    _wait(lambda: checkpointer.running)
    bench.close()
    assert not checkpointer.running


def _wal_db(path, rows):
    """A database in WAL mode, SQLite's own checkpoints off, with ``rows`` rows of 3 pages
    each (8 KiB pages) written: its writer connection."""
    writer = sqlite3.connect(path, isolation_level=None)
    writer.execute("PRAGMA page_size=8192")
    writer.execute("PRAGMA journal_mode=WAL")
    writer.execute("PRAGMA wal_autocheckpoint=0")
    writer.execute("CREATE TABLE t (x BLOB)")
    for _ in range(rows):
        writer.execute("INSERT INTO t VALUES (randomblob(20000))")
    return writer


def _wal_frames(conn):
    """Frames in the WAL (and copies them all to the database file, so that the next write
    transaction rewinds the WAL if it may)."""
    return conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[1]


@pytest.mark.parametrize("catch_up", [True, False])
def test_a_commit_that_lands_during_a_round_does_not_keep_the_wal_growing(
        tmp_path, monkeypatch, catch_up):
    """A commit under way while the thread copies the WAL lands after the round, having
    started to read before the WAL was all copied: it cannot rewind the WAL, and neither can
    the commits after it until another round. The thread's catch-up round copies what it
    wrote, so the next commit rewinds the WAL (without one, it goes on growing)."""
    path = tmp_path / "wal.db"
    writer = _wal_db(path, rows=20)
    writer.execute("BEGIN IMMEDIATE")  # a commit under way when the round starts
    writer.execute("INSERT INTO t VALUES (randomblob(20000))")

    def land(seconds):  # the thread waits for such a commit: it lands meanwhile
        assert seconds == wal.SETTLE_S
        if writer.in_transaction:
            writer.execute("COMMIT")

    monkeypatch.setattr(wal, "time", SimpleNamespace(sleep=land))
    if not catch_up:
        monkeypatch.setattr(wal, "CATCH_UP_ROUNDS", 0)
    thread_conn = sqlite3.connect(path, isolation_level=None)
    checkpointer = wal.WalCheckpointer(path, busy_timeout_ms=5000)
    found = checkpointer._checkpoint(thread_conn, 0)
    if writer.in_transaction:  # no catch-up: it lands after the round
        writer.execute("COMMIT")
    assert found > 60 and checkpointer.checkpoints == 1

    writer.execute("INSERT INTO t VALUES (randomblob(20000))")  # the next commit
    frames = _wal_frames(thread_conn)
    if catch_up:
        assert frames <= 4  # rewound: only the last commit's pages are in the WAL
    else:
        assert frames > found  # not rewound: the WAL grew past where the round left it
    writer.close()
    thread_conn.close()


def test_a_catch_up_round_that_fails_leaves_the_round_before_standing(tmp_path, monkeypatch):
    path = tmp_path / "wal.db"
    writer = _wal_db(path, rows=1)
    thread_conn = sqlite3.connect(path, isolation_level=None)
    # The thread's connection is closed while it waits: its catch-up round raises.
    monkeypatch.setattr(wal, "time", SimpleNamespace(sleep=lambda _: thread_conn.close()))
    checkpointer = wal.WalCheckpointer(path, busy_timeout_ms=5000)
    found = checkpointer._checkpoint(thread_conn, 0)
    assert found > 0 and checkpointer.checkpoints == 1  # the first round counted, learnt from
    writer.close()
