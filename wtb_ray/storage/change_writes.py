"""Writing a batch of changes in one transaction on the store's hot connection, per dialect.

SQLite runs the statements of change_sql.ChangeSQL, with a savepoint per change when there
are several; PostgreSQL calls wtb_commit_change (migration 0005) once per change, all in one
round trip. Each returns one outcome per change: what it committed, or None where the
change's fence failed (the others still commit).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from typing import Any

from wtb_ray.domain.errors import NotFound
from wtb_ray.domain.events import Event
from wtb_ray.storage import change_sql, db
from wtb_ray.storage.change import Change, Committed


class _FenceFailed(Exception):
    pass


def with_checkpoint(events: list[Event], checkpoint_id: int | None) -> list[Event]:
    """The events, those naming no checkpoint given the one their change wrote."""
    if checkpoint_id is None:
        return events
    return [e.with_checkpoint(checkpoint_id) if e.checkpoint_id is None else e for e in events]


def write_sqlite(dbapi: sqlite3.Connection, sql: change_sql.ChangeSQL, changes: list[Change],
                 exists: Callable[[str], bool],
                 committed: Callable[[sqlite3.Connection], None] | None = None,
                 busy_timeout_ms: int | None = None) -> list[Committed | None]:
    """None where a change's fence failed (its savepoint is rolled back, the rest stay).
    ``exists`` tells whether an execution is still there (to name a deleted one);
    ``committed`` is called once the transaction has committed; ``busy_timeout_ms`` as
    db.begin_immediate's ``timeout_ms``."""
    now = time.time()
    outcomes: list[Committed | None] = []
    cur = dbapi.cursor()
    db.begin_immediate(dbapi, busy_timeout_ms)
    try:
        for change in changes:
            if len(changes) > 1:
                cur.execute("SAVEPOINT change")
            try:
                outcomes.append(_sqlite_change(cur, sql, change, now))
            except _FenceFailed:
                if len(changes) == 1:
                    raise
                cur.execute("ROLLBACK TO change")
                outcomes.append(None)
            if len(changes) > 1:
                cur.execute("RELEASE change")
    except _FenceFailed:
        dbapi.rollback()
        return [None]
    except BaseException as exc:
        dbapi.rollback()
        # A row naming a deleted execution fails its foreign key before the fenced
        # UPDATE (last here) could tell: say what PostgreSQL's function says.
        if isinstance(exc, sqlite3.IntegrityError) and (gone := [
                c.execution_id for c in changes
                if c.new_execution is None and not exists(c.execution_id)]):
            raise NotFound("execution", ", ".join(gone)) from None
        raise
    dbapi.commit()
    if committed is not None:
        committed(dbapi)
    return outcomes


def _sqlite_change(cur: sqlite3.Cursor, sql: change_sql.ChangeSQL, change: Change,
                   now: float) -> Committed:
    ck = change.checkpoint
    values = {**change.values, "updated_at": now}
    p = sql.bind(change, values, now)
    if change.new_execution is not None:
        cur.execute(sql.insert_execution(), p)
    checkpoint_id = None
    if ck is not None:
        if ck.blobs:
            cur.execute(sql.insert_blobs(len(ck.blobs)), p)
        cur.execute(sql.insert_checkpoint(), p)
        checkpoint_id = p["cid"] = cur.lastrowid
    if change.boundary is not None:
        cur.execute(sql.insert_boundary(ck is not None), p)
    if change.compensations:
        cur.execute(sql.insert_compensations(len(change.compensations), ck is not None), p)
    for statement in sql.insert_events(sql.fills(change)):
        cur.execute(statement, p)
    if change.new_execution is not None:
        cur.execute("UPDATE executions SET head_checkpoint_id = :cid WHERE id = :x_id", p)
        row = (p["x_version"], None)
    else:
        row = cur.execute(sql.update_execution(
            tuple(values), change.fence_version is not None, change.fence_owner is not None,
            ck is not None), p).fetchone()
        if row is None:
            raise _FenceFailed()
    return Committed(checkpoint_id, row[0], row[1], with_checkpoint(change.events, checkpoint_id))


def write_postgres(dbapi: Any, changes: list[Change]) -> list[Committed | None]:
    """One round trip for all changes, each one call of the store's function, in one
    transaction: the statements of one simple-protocol query are one transaction without a
    BEGIN and COMMIT of their own (the connection is in autocommit). A failed fence aborts
    the whole transaction, so then each change is committed on its own to find which one
    conflicts."""
    import psycopg

    now = time.time()
    escaping = psycopg.pq.Escaping(dbapi.pgconn)
    script = b";\n".join(
        change_sql.postgres_call(c, {**c.values, "updated_at": now}, now, escaping)
        for c in changes)
    cur = psycopg.ClientCursor(dbapi)  # no parameters: one simple-protocol round trip
    try:
        cur.execute(script)
        rows = []
        while True:  # one row per change
            if cur.pgresult is not None and cur.pgresult.ntuples:
                rows.append(cur.fetchone())
            if not cur.nextset():
                break
    except psycopg.errors.InvalidTextRepresentation as exc:
        _abort(dbapi)
        if change_sql.FENCE_FAILED not in str(exc):
            raise
        if len(changes) == 1:
            return [None]
        return [o for c in changes for o in write_postgres(dbapi, [c])]
    except psycopg.errors.NoDataFound as exc:  # an execution row is gone (deleted)
        _abort(dbapi)
        raise NotFound("execution", str(exc.diag.message_primary or "").rpartition(
            ": ")[2] or ", ".join(c.execution_id for c in changes)) from None
    except BaseException:
        _abort(dbapi)
        raise
    finally:
        cur.close()
    return [Committed(row[2] if c.checkpoint is not None else None, row[0], row[1],
                      with_checkpoint(c.events, row[2] if c.checkpoint is not None else None))
            for c, row in zip(changes, rows, strict=True)]


def _abort(dbapi: Any) -> None:
    if not dbapi.closed and dbapi.info.transaction_status != 0:  # 0: idle
        dbapi.execute("ROLLBACK")
