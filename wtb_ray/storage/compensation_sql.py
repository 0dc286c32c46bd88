"""Bookkeeping of undo actions (compensations) while a rollback runs them.

Rows are inserted with their node boundary (change_sql); here they are claimed, finished and
failed, each in a small transaction of its own, so a rollback killed midway leaves an exact
record: done (never run again), started (was running when the rollback died), or pending.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, and_, exists, select, update

from wtb_ray.storage.schema import compensations, executions


def of_execution(conn: Connection, execution_id: str, unfinished: bool = False
                 ) -> list[dict[str, Any]]:
    stmt = select(compensations).where(compensations.c.execution_id == execution_id)
    if unfinished:
        stmt = stmt.where(compensations.c.status != "done")
    return [dict(r._mapping) for r in conn.execute(stmt.order_by(compensations.c.id))]


def claim(conn: Connection, comp_id: int, execution_id: str, owner: str, now: float
          ) -> int | None:
    """Mark a compensation started, only while ``owner`` holds the rolling-back execution;
    returns its attempt number, or None if the claim failed (lease lost, or already done)."""
    leased = exists().where(and_(executions.c.id == execution_id,
                                 executions.c.lease_owner == owner,
                                 executions.c.status == "rolling_back"))
    row = conn.execute(
        update(compensations)
        .where(compensations.c.id == comp_id, compensations.c.status != "done", leased)
        .values(status="started", attempts=compensations.c.attempts + 1, started_at=now)
        .returning(compensations.c.attempts)).first()
    return None if row is None else row[0]


def finish(conn: Connection, comp_id: int, now: float) -> None:
    conn.execute(update(compensations).where(compensations.c.id == comp_id)
                 .values(status="done", done_at=now, error=None))


def fail(conn: Connection, comp_id: int, error: str) -> None:
    conn.execute(update(compensations).where(compensations.c.id == comp_id)
                 .values(status="pending", error=error))
