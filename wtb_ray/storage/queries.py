"""Read queries; each takes an open connection (the store wraps them in a transaction)."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import Connection, bindparam, func, select, text

from wtb_ray.domain.checkpoint import Checkpoint, NodeBoundary
from wtb_ray.domain.errors import NotFound, StorageError
from wtb_ray.domain.events import Event
from wtb_ray.domain.execution import Execution
from wtb_ray.storage import codec, rows
from wtb_ray.storage.schema import (
    audit_log,
    batches,
    blobs,
    checkpoints,
    compensations,
    executions,
    node_boundaries,
    outbox,
)

# Walk from a checkpoint to its nearest ancestor holding a full manifest (``{id}``: where
# the checkpoint's id goes, in the placeholder style of whoever runs it).
CHAIN_SQL = """
WITH RECURSIVE chain(id, parent_id, is_full, manifest, depth) AS (
    SELECT id, parent_id, is_full, manifest, 0 FROM checkpoints WHERE id = {id}
    UNION ALL
    SELECT c.id, c.parent_id, c.is_full, c.manifest, chain.depth + 1
    FROM checkpoints c JOIN chain ON c.id = chain.parent_id
    WHERE NOT chain.is_full AND chain.depth < 100000
)
SELECT id, is_full, manifest, depth FROM chain ORDER BY depth
"""
_CHAIN = text(CHAIN_SQL.format(id=":id"))

_BLOBS = select(blobs.c.hash, blobs.c.codec, blobs.c.data).where(
    blobs.c.hash.in_(bindparam("hashes", expanding=True)))


# Built once: building a select costs more than SQLite takes to run it (a batch executor
# reads an execution and its head for every cell it claims).
_EXECUTION = select(executions).where(executions.c.id == bindparam("id"))
_CHECKPOINT = select(checkpoints).where(checkpoints.c.id == bindparam("id"))


def execution(conn: Connection, execution_id: str) -> Execution:
    row = conn.execute(_EXECUTION, {"id": execution_id}).first()
    if row is None:
        raise NotFound("execution", execution_id)
    return rows.execution_from_row(row)


def exists(conn: Connection, execution_id: str) -> bool:
    return conn.execute(select(executions.c.id).where(executions.c.id == execution_id)
                        ).first() is not None  # off the hot path: built when asked


def executions_page(conn: Connection, *, status: str | None = None, batch_id: str | None = None,
                    limit: int = 50, offset: int = 0) -> list[Execution]:
    stmt = select(executions).order_by(executions.c.created_at.desc(), executions.c.id)
    if status:
        stmt = stmt.where(executions.c.status == status)
    if batch_id:
        stmt = stmt.where(executions.c.batch_id == batch_id)
    return [rows.execution_from_row(r) for r in conn.execute(stmt.limit(limit).offset(offset))]


def checkpoint(conn: Connection, checkpoint_id: int) -> Checkpoint:
    row = conn.execute(_CHECKPOINT, {"id": checkpoint_id}).first()
    if row is None:
        raise NotFound("checkpoint", checkpoint_id)
    return rows.checkpoint_from_row(row)


def checkpoints_of(conn: Connection, execution_id: str) -> list[Checkpoint]:
    stmt = select(checkpoints).where(checkpoints.c.execution_id == execution_id)
    return [rows.checkpoint_from_row(r) for r in conn.execute(stmt.order_by(checkpoints.c.id))]


def manifest(conn: Connection, checkpoint_id: int) -> tuple[dict[str, str], int]:
    """Full key -> entry mapping at a checkpoint, and how many deltas sit on a full one."""
    return merge_chain(checkpoint_id, conn.execute(_CHAIN, {"id": checkpoint_id}).all())


def merge_chain(checkpoint_id: int, chain: Any) -> tuple[dict[str, str], int]:
    """``manifest`` from the rows (id, is_full, manifest, depth) ``CHAIN_SQL`` returned."""
    if not chain:
        raise NotFound("checkpoint", checkpoint_id)
    if not chain[-1][1]:
        raise StorageError(f"checkpoint {checkpoint_id}: no full manifest among its ancestors "
                           f"(stopped at {chain[-1][0]}); run the integrity checker")
    merged: dict[str, str] = {}
    for link in reversed(chain):  # the full manifest first, then each delta over it
        merged.update(json.loads(link[2]))
    return merged, len(chain) - 1


def load_values(conn: Connection, hashes: list[str]) -> dict[str, Any]:
    """Decoded values by blob hash."""
    return decode_values(hashes, conn.execute(_BLOBS, {"hashes": sorted(set(hashes))}))


def decode_values(hashes: list[str], found_rows: Any) -> dict[str, Any]:
    """Decoded values by blob hash, from (hash, codec, data) rows; all of ``hashes`` must be
    there."""
    found = {h: codec.decode(codec.unpack(c, d)) for h, c, d in found_rows}
    missing = set(hashes) - found.keys()
    if missing:
        raise StorageError(f"blob(s) missing from the store: {', '.join(sorted(missing))}")
    return found


State = tuple[dict[str, Any], dict[str, str], int]  # state, manifest, deltas since full


def state_at(conn: Connection, checkpoint_id: int) -> State:
    """(state, manifest, deltas since the full manifest) at a checkpoint."""
    entries, since_full = manifest(conn, checkpoint_id)
    hashes = stored_hashes(entries)
    return state_from(entries, since_full, load_values(conn, hashes) if hashes else {})


def stored_hashes(entries: dict[str, str]) -> list[str]:
    """The blobs a manifest's values are in (the rest are inline)."""
    return [e for e in entries.values() if not codec.is_inline(e)]


def state_from(entries: dict[str, str], since_full: int, values: dict[str, Any]) -> State:
    state = {k: codec.inline_value(e) if codec.is_inline(e) else values[e]
             for k, e in entries.items()}
    return state, entries, since_full


def checkpoint_with_state(conn: Connection, execution_id: str, checkpoint_id: int | None
                          ) -> tuple[Execution, Checkpoint | None, State | None]:
    """An execution, its checkpoint ``checkpoint_id`` (its head if None; None if it has
    none) and the state there (None if that checkpoint is another execution's), all read
    in the caller's transaction: what a fork starts from (one snapshot, not three reads)
    and, for heads, what an executor resumes."""
    ex = execution(conn, execution_id)
    cid = ex.head_checkpoint_id if checkpoint_id is None else checkpoint_id
    if cid is None:
        return ex, None, None
    ckpt = checkpoint(conn, cid)
    return ex, ckpt, state_at(conn, cid) if ckpt.execution_id == ex.id else None


Head = tuple[Checkpoint, State]


def heads(conn: Connection, execution_ids: list[str]) -> list[tuple[Execution, Head | None]]:
    """Each execution with its head checkpoint and the state there (None if it has no head
    yet), in one transaction: an executor claims a chunk of cells at once, and three
    transactions per cell cost it a fifth of its time."""
    found: list[tuple[Execution, Head | None]] = []
    for execution_id in execution_ids:
        ex, head, state = checkpoint_with_state(conn, execution_id, None)
        found.append((ex, None if head is None or state is None else (head, state)))
    return found


def boundaries_of(conn: Connection, execution_id: str) -> list[NodeBoundary]:
    stmt = select(node_boundaries).where(node_boundaries.c.execution_id == execution_id)
    return [rows.boundary_from_row(r) for r in conn.execute(stmt.order_by(node_boundaries.c.id))]


def node_totals(conn: Connection, execution_ids: list[str]) -> dict[str, dict[str, Any]]:
    """Per execution, over its completed node runs: total ms, count, and usage sums."""
    totals: dict[str, dict[str, Any]] = {
        i: {"latency_ms": 0.0, "node_count": 0, "usage": {}} for i in execution_ids}
    stmt = (select(node_boundaries.c.execution_id, node_boundaries.c.duration_ms,
                   node_boundaries.c.usage)
            .where(node_boundaries.c.execution_id.in_(execution_ids),
                   node_boundaries.c.status == "completed"))
    for execution_id, duration_ms, usage in conn.execute(stmt):
        t = totals[execution_id]
        t["latency_ms"] += duration_ms
        t["node_count"] += 1
        for name, value in (rows.loads(usage) or {}).items():
            t["usage"][name] = t["usage"].get(name, 0) + value
    return totals


def history(conn: Connection, execution_id: str) -> list[Event]:
    stmt = select(audit_log).where(audit_log.c.execution_id == execution_id)
    return [rows.event_from_audit(r) for r in conn.execute(stmt.order_by(audit_log.c.id))]


def outbox_events(conn: Connection, aggregate_id: str | None = None) -> list[dict[str, Any]]:
    stmt = select(outbox).order_by(outbox.c.id)
    if aggregate_id:
        stmt = stmt.where(outbox.c.aggregate_id == aggregate_id)
    return [dict(r._mapping) for r in conn.execute(stmt)]


def outbox_after(conn: Connection, after_id: int, *, batch_id: str | None = None,
                 execution_id: str | None = None, written_before: float | None = None,
                 limit: int = 500) -> list[dict[str, Any]]:
    """Outbox events with id > after_id, in id order: the durable event log streams read.
    With ``written_before``, only events written before that time (see events.py)."""
    stmt = select(outbox).where(outbox.c.id > after_id).order_by(outbox.c.id).limit(limit)
    if written_before is not None:
        stmt = stmt.where(outbox.c.created_at <= written_before)
    if batch_id:
        stmt = stmt.where(outbox.c.batch_id == batch_id)
    if execution_id:
        stmt = stmt.where(outbox.c.aggregate_type == "execution",
                          outbox.c.aggregate_id == execution_id)
    # "id" is the outbox id (the stream's cursor); the event's own id is "event_id".
    return [{**rows.event_from_outbox(r).to_dict(), "id": r.id, "event_id": r.event_id}
            for r in conn.execute(stmt)]


def status_counts(conn: Connection, table_name: str) -> dict[str, int]:
    table = {"executions": executions, "batches": batches}[table_name]
    stmt = select(table.c.status, func.count()).group_by(table.c.status)
    return dict(conn.execute(stmt).all())


def outbox_backlog(conn: Connection) -> tuple[int, float | None]:
    """Undelivered events, and when the oldest of them was written."""
    row = conn.execute(select(func.count(), func.min(outbox.c.created_at))
                       .where(outbox.c.status == "pending")).one()
    return row[0], row[1]


def table_counts(conn: Connection) -> dict[str, int]:
    tables = (executions, checkpoints, blobs, node_boundaries, audit_log, outbox, compensations)
    return {t.name: conn.execute(select(func.count()).select_from(t)).scalar_one() for t in tables}
