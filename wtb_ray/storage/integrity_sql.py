"""The integrity checker's SQL. Each function reads or fixes one page of rows in the
transaction the caller gives it, so the checker never holds a transaction for long."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import Connection, and_, func, insert, null, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite

from wtb_ray.storage import rows
from wtb_ray.storage.schema import (
    audit_log,
    batches,
    checkpoints,
    damaged_checkpoints,
    executions,
    integrity_reports,
    node_boundaries,
    outbox,
)

nb = node_boundaries


def max_id(conn: Connection, table_name: str) -> int:
    table = {"node_boundaries": nb, "checkpoints": checkpoints}[table_name]
    return conn.execute(select(func.coalesce(func.max(table.c.id), 0))).scalar_one()


# -- node boundaries and their checkpoints -------------------------------------------------


def boundaries_missing_checkpoints(conn: Connection, lo: int, hi: int) -> list[Any]:
    """Boundaries with lo < id <= hi whose entry or exit checkpoint does not exist."""
    entry, exit_ = checkpoints.alias("entry"), checkpoints.alias("exit")
    dangling_entry = and_(nb.c.entry_checkpoint_id.isnot(None), entry.c.id.is_(None))
    dangling_exit = and_(nb.c.exit_checkpoint_id.isnot(None), exit_.c.id.is_(None))
    stmt = (select(nb.c.id, nb.c.execution_id, nb.c.node,
                   nb.c.entry_checkpoint_id, nb.c.exit_checkpoint_id,
                   dangling_entry.label("entry_missing"), dangling_exit.label("exit_missing"))
            .select_from(nb.outerjoin(entry, entry.c.id == nb.c.entry_checkpoint_id)
                         .outerjoin(exit_, exit_.c.id == nb.c.exit_checkpoint_id))
            .where(nb.c.id > lo, nb.c.id <= hi, or_(dangling_entry, dangling_exit)))
    return conn.execute(stmt).all()


def detach_boundary(conn: Connection, boundary_id: int, column: str, missing_id: int) -> bool:
    """Clear a boundary's reference to a checkpoint that is gone, noting it in its error.
    Only if the reference is still that id and that checkpoint still does not exist."""
    if conn.execute(select(checkpoints.c.id).where(checkpoints.c.id == missing_id)).first():
        return False
    note = f"integrity: {column.split('_')[0]} checkpoint {missing_id} is missing"
    error = func.coalesce(nb.c.error + "; ", "") + note
    return bool(conn.execute(update(nb).where(nb.c.id == boundary_id,
                                              nb.c[column] == missing_id)
                             .values({column: null(), "error": error})).rowcount)


def existing_checkpoints(conn: Connection, ids: list[int]) -> set[int]:
    return set(conn.execute(select(checkpoints.c.id).where(checkpoints.c.id.in_(ids))).scalars())


# -- node boundaries and the audit trail ----------------------------------------------------


def execution_ids_after(conn: Connection, after: str, limit: int) -> list[str]:
    return list(conn.execute(select(executions.c.id).where(executions.c.id > after)
                             .order_by(executions.c.id).limit(limit)).scalars())


def boundaries_of(conn: Connection, execution_ids: list[str]) -> list[Any]:
    return conn.execute(select(nb).where(nb.c.execution_id.in_(execution_ids))
                        .order_by(nb.c.id)).all()


def node_audits_of(conn: Connection, execution_ids: list[str]) -> list[Any]:
    return conn.execute(
        select(audit_log.c.execution_id, audit_log.c.kind, audit_log.c.node,
               audit_log.c.checkpoint_id)
        .where(audit_log.c.execution_id.in_(execution_ids),
               audit_log.c.kind.in_(("node.completed", "node.failed")))).all()


def add_audit(conn: Connection, entry: dict[str, Any]) -> None:
    conn.execute(insert(audit_log), [entry])


# -- blobs ----------------------------------------------------------------------------------


def checkpoints_page(conn: Connection, after: int, limit: int) -> list[Any]:
    return conn.execute(select(checkpoints.c.id, checkpoints.c.execution_id,
                               checkpoints.c.manifest, checkpoints.c.workspace_tree)
                        .where(checkpoints.c.id > after).order_by(checkpoints.c.id)
                        .limit(limit)).all()


def damaged_ids(conn: Connection) -> set[int]:
    return set(conn.execute(select(damaged_checkpoints.c.checkpoint_id)).scalars())


def mark_damaged(conn: Connection, entries: list[dict[str, Any]]) -> None:
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    conn.execute(dialect.insert(damaged_checkpoints).on_conflict_do_nothing(), entries)


# -- executions, batches, outbox ----------------------------------------------------------


def running_executions(conn: Connection) -> list[Any]:
    found = conn.execute(select(executions).where(executions.c.status == "running"))
    return [rows.execution_from_row(r) for r in found]


def finished_batches_after(conn: Connection, after: str, limit: int) -> list[Any]:
    return conn.execute(
        select(batches.c.id, batches.c.completed, batches.c.failed, batches.c.cancelled)
        .where(batches.c.id > after, batches.c.status.in_(("completed", "cancelled")))
        .order_by(batches.c.id).limit(limit)).all()


def cell_counts(conn: Connection, batch_ids: list[str]) -> dict[str, dict[str, int]]:
    counts: dict[str, dict[str, int]] = {b: {} for b in batch_ids}
    for batch_id, status, n in conn.execute(
            select(executions.c.batch_id, executions.c.status, func.count())
            .where(executions.c.batch_id.in_(batch_ids))
            .group_by(executions.c.batch_id, executions.c.status)):
        counts[batch_id][status] = n
    return counts


def set_batch_counts(conn: Connection, batch_id: str, counts: dict[str, int], now: float
                     ) -> bool:
    return bool(conn.execute(update(batches).where(batches.c.id == batch_id)
                             .values(**counts, updated_at=now)).rowcount)


def stuck_outbox(conn: Connection, created_before: float, after: int, limit: int
                 ) -> list[Any]:
    return conn.execute(
        select(outbox.c.id, outbox.c.event_id, outbox.c.kind, outbox.c.aggregate_type,
               outbox.c.aggregate_id, outbox.c.attempts, outbox.c.available_at,
               outbox.c.claimed_by, outbox.c.created_at, outbox.c.last_error)
        .where(outbox.c.status == "pending", outbox.c.id > after,
               outbox.c.created_at < created_before)
        .order_by(outbox.c.id).limit(limit)).all()


def release_outbox(conn: Connection, ids: list[int], now: float, live_until: float
                   ) -> dict[int, str]:
    """Make pending rows deliverable now, except those a relay is delivering: a claim that
    ends by ``live_until`` is live (releasing it would let a second relay deliver the same
    events at once). Returns, per id, what held it: "claim" (a claim that had ended or could
    not be real), "backoff", "nothing", or "live" (left alone) or "gone" (not pending)."""
    held: dict[int, str] = {i: "gone" for i in ids}
    for row_id, claimed_by, available_at in conn.execute(
            select(outbox.c.id, outbox.c.claimed_by, outbox.c.available_at)
            .where(outbox.c.id.in_(ids), outbox.c.status == "pending").with_for_update()):
        if claimed_by is not None:
            held[row_id] = "live" if now < available_at <= live_until else "claim"
        else:
            held[row_id] = "backoff" if available_at > now else "nothing"
    release = [i for i, why in held.items() if why in ("claim", "backoff")]
    if release:
        conn.execute(update(outbox).where(outbox.c.id.in_(release))
                     .values(available_at=now, claimed_by=None))
    return held


# -- reports -------------------------------------------------------------------------------


def save_report(conn: Connection, report: dict[str, Any]) -> int:
    row = {k: report[k] for k in ("started_at", "finished_at", "trigger", "repair", "found",
                                  "repaired")}
    return conn.execute(insert(integrity_reports).values(**row, report=json.dumps(report))
                        .returning(integrity_reports.c.id)).scalar_one()


def reports(conn: Connection, limit: int) -> list[dict[str, Any]]:
    stmt = (select(integrity_reports.c.id, integrity_reports.c.started_at,
                   integrity_reports.c.finished_at, integrity_reports.c.trigger,
                   integrity_reports.c.repair, integrity_reports.c.found,
                   integrity_reports.c.repaired)
            .order_by(integrity_reports.c.id.desc()).limit(limit))
    return [dict(r._mapping) for r in conn.execute(stmt)]


def last_report(conn: Connection) -> dict[str, Any] | None:
    row = conn.execute(select(integrity_reports.c.id, integrity_reports.c.report)
                       .order_by(integrity_reports.c.id.desc()).limit(1)).first()
    return None if row is None else {**json.loads(row.report), "id": row.id}
