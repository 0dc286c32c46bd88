"""SQLite WAL checkpoints run on the store's checkpointer thread, not inside commits, and the
WAL stays bounded even under a writer that never pauses."""

from __future__ import annotations

import time

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


def test_commits_leave_the_checkpoints_to_the_thread(sqlite_url, monkeypatch):
    monkeypatch.setattr(wal, "CHECKPOINT_FRAMES", 50)
    bench = Bench(Store.open(sqlite_url))
    try:
        checkpointer = db.wal_checkpointer(bench.store.engine)
        with bench.store.read() as conn:  # SQLite's own checkpoints are off in every connection
            assert conn.execute(text("PRAGMA wal_autocheckpoint")).scalar() == 0
        while checkpointer.frames()[0] < 200:  # well past the threshold
            bench.run(WORKFLOW, {"count": 0})
        _wait(lambda: checkpointer.checkpoints >= 1 and checkpointer.frames()[1] < 50)
        assert checkpointer.inline == 0  # no commit had to do it itself
    finally:
        bench.close()


def test_a_writer_that_never_pauses_keeps_the_wal_bounded(sqlite_url, monkeypatch):
    monkeypatch.setattr(wal, "CHECKPOINT_FRAMES", 200)
    monkeypatch.setattr(wal, "BEHIND_FRAMES", 600)
    bench = Bench(Store.open(sqlite_url))
    try:
        checkpointer = db.wal_checkpointer(bench.store.engine)
        longest = written = 0
        while written < 20 * 600:  # back to back, 20 times the bound (without it, one WAL)
            before = checkpointer.frames()[0]
            bench.run(WORKFLOW, {"count": 0})
            after = checkpointer.frames()[0]
            written += after - before if after >= before else after
            longest = max(longest, after)
        # Rewound past 600 frames by a commit with little left to copy, or past 1,200 by
        # any commit (beyond that only while the thread's own round holds the checkpoint).
        assert longest < 3 * 600, longest
        assert checkpointer.inline >= 1 and checkpointer.checkpoints >= 1
        assert bench.run(WORKFLOW, {"count": 0}).step == 10  # and nothing was lost on the way
    finally:
        bench.close()


def test_closing_the_store_ends_the_thread(sqlite_url, monkeypatch):
    monkeypatch.setattr(wal, "CHECKPOINT_FRAMES", 1)
    bench = Bench(Store.open(sqlite_url))
    checkpointer = db.wal_checkpointer(bench.store.engine)
    bench.run(WORKFLOW, {"count": 0})
    _wait(lambda: checkpointer.running)
    bench.close()
    assert not checkpointer.running
