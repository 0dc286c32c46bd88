"""Workflows with files and side effects, importable by reference from other processes.

``files`` writes, modifies and deletes workspace files across its nodes. ``ledger`` inserts a
row into a real table (``ledger``, in the database at ``state["db"]``) at each node and
registers ``delete_row`` to undo it. ``delete_row`` deletes the row and records its
idempotency key in ``undo_log`` in one transaction (a second run with the same key changes
nothing), appends one line per call to ``state["calls"]``, and can be held on a file before or
after its transaction so a test can kill the process there.
"""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

import psycopg

from tests.workflows import touch_points
from wtb_ray import END, Workflow

BIG = 2_500_000  # many chunks


def _pattern(seed: int, size: int) -> bytes:
    block = bytes((seed * 31 + i) % 251 for i in range(4096))
    return (block * (size // len(block) + 1))[:size]


def create(state, ctx):
    ws = ctx.workspace
    (ws / "notes.txt").write_text("line 1\nline 2\n")
    (ws / "data").mkdir()
    (ws / "data" / "big.bin").write_bytes(_pattern(1, BIG))
    (ws / "data" / "small.json").write_text('{"a": 1}')
    (ws / "run.sh").write_text("#!/bin/sh\necho hi\n")
    os.chmod(ws / "run.sh", 0o755)
    (ws / "empty").mkdir()
    os.symlink("notes.txt", ws / "latest")
    (ws / "scratch.log").write_text("ignored\n")
    return {"created": True}


def modify(state, ctx):
    ws = ctx.workspace
    with open(ws / "notes.txt", "a") as f:
        f.write("line 3\n")
    with open(ws / "data" / "big.bin", "r+b") as f:  # one chunk changes, two stay
        f.seek(1_100_000)
        f.write(b"\xff" * 1000)
    os.chmod(ws / "data" / "small.json", 0o600)
    (ws / "latest").unlink()
    os.symlink("data/small.json", ws / "latest")
    (ws / "new.txt").write_text("new\n")
    return {"modified": True}


def delete(state, ctx):
    ws = ctx.workspace
    (ws / "data" / "big.bin").unlink()
    (ws / "notes.txt").unlink()
    (ws / "empty").rmdir()
    (ws / "empty").write_text("a file where a directory was\n")
    return {"deleted": True}


files = Workflow("files", nodes={"create": create, "modify": modify, "delete": delete},
                 edges={"create": "modify", "modify": "delete", "delete": END}, entry="create")


# -- a real table and its compensations ------------------------------------------------------

def connect(url: str):
    """A DBAPI connection to ``url`` (a SQLAlchemy URL of SQLite or PostgreSQL)."""
    if url.startswith("sqlite:///"):
        conn = sqlite3.connect(url[len("sqlite:///"):], timeout=30, isolation_level=None)
        return conn
    return psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"),
                           prepare_threshold=None)


def setup_tables(url: str) -> None:
    conn = connect(url)
    try:
        for sql in ("CREATE TABLE IF NOT EXISTS ledger (id TEXT PRIMARY KEY, node TEXT)",
                    "CREATE TABLE IF NOT EXISTS undo_log (key TEXT PRIMARY KEY, row_id TEXT)"):
            conn.execute(sql)
        if not isinstance(conn, sqlite3.Connection):
            conn.commit()
    finally:
        conn.close()


def rows(url: str, table: str, execution_id: str) -> list[str]:
    """Row ids of one execution in ``table`` (tests share a PostgreSQL database)."""
    column = "id" if table == "ledger" else "row_id"
    conn = connect(url)
    try:
        return sorted(r[0] for r in conn.execute(f"SELECT {column} FROM {table}").fetchall()
                      if r[0].startswith(execution_id + "-"))
    finally:
        conn.close()


def _hold(hold_dir: str | None, name: str) -> None:
    if not hold_dir:
        return
    hold = Path(hold_dir)
    (hold / f"{name}.waiting").write_text("")
    deadline = time.time() + 120
    while not (hold / f"{name}.go").exists():
        if time.time() > deadline:
            raise TimeoutError(f"held at {name} for 120 s")
        time.sleep(0.02)


def delete_row(url: str, row_id: str, calls: str, control: dict, *, idempotency_key: str):
    """Undo one ledger insert: exactly once per key, whatever happens to the caller."""
    with open(calls, "a") as f:
        f.write(f"{row_id}\n")
    if control.get("fail") and Path(control["fail"]).exists():
        raise RuntimeError(f"refusing to delete {row_id}")
    if control.get("hold_before") and row_id.endswith("-" + control["hold_before"]):
        _hold(control["hold_dir"], f"before-{control['hold_before']}")
    conn = connect(url)
    try:
        ph = "?" if isinstance(conn, sqlite3.Connection) else "%s"
        if isinstance(conn, sqlite3.Connection):
            conn.execute("BEGIN IMMEDIATE")
        done = conn.execute(f"SELECT 1 FROM undo_log WHERE key = {ph}",
                            (idempotency_key,)).fetchone()
        if done is None:
            conn.execute(f"DELETE FROM ledger WHERE id = {ph}", (row_id,))
            conn.execute(f"INSERT INTO undo_log (key, row_id) VALUES ({ph}, {ph})",
                         (idempotency_key, row_id))
        conn.commit()
    finally:
        conn.close()
    if control.get("hold_after") and row_id.endswith("-" + control["hold_after"]):
        _hold(control["hold_dir"], f"after-{control['hold_after']}")


def insert_row(state, ctx):
    row_id = f"{ctx.execution_id}-{ctx.node}-{ctx.step}"
    conn = connect(state["db"])
    try:
        ph = "?" if isinstance(conn, sqlite3.Connection) else "%s"
        conn.execute(f"INSERT INTO ledger (id, node) VALUES ({ph}, {ph})", (row_id, ctx.node))
        conn.commit()
    finally:
        conn.close()
    ctx.on_rollback(delete_row, state["db"], row_id, state["calls"], state.get("control", {}))
    touch_points(state, ctx.node)
    if state.get("fail_at") == ctx.node:
        raise RuntimeError(f"{ctx.node} failed after its insert")
    return {ctx.node: row_id}


ledger = Workflow("ledger", nodes={"a": insert_row, "b": insert_row, "c": insert_row},
                  edges={"a": "b", "b": "c", "c": END}, entry="a")
