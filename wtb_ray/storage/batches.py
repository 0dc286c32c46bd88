"""Batch rows, per-cell results and batch events (outbox), over the store's engine."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import Connection, Select, delete, insert, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from wtb_ray.domain.batch import Batch
from wtb_ray.domain.errors import BatchNotDeletable, NotFound
from wtb_ray.domain.events import Event
from wtb_ray.domain.execution import Execution
from wtb_ray.domain.listing import some
from wtb_ray.storage import outbox_sql, rows
from wtb_ray.storage.gc import delete_events, delete_execution_rows
from wtb_ray.storage.schema import (
    batch_results,
    batch_webhooks,
    batches,
    executions,
    outbox,
)
from wtb_ray.storage.store import Store

_COUNTS = ("completed", "failed", "cancelled")
_SHOWN = 5  # ids an error names before "and N more"


def _batch(row: Any) -> Batch:
    m = dict(row._mapping)
    m["spec"] = json.loads(m["spec"])
    return Batch(**m)


class Batches:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._insert = (sqlite_insert if store.dialect == "sqlite" else pg_insert)(batch_results)

    def create(self, batch: Batch, webhook: dict[str, Any] | None = None) -> None:
        """Insert the batch (and its webhook: url, secret, events) with its first event."""
        row = {k: v for k, v in batch.__dict__.items()}
        row["spec"] = json.dumps(batch.spec, sort_keys=True)
        with self.store.write() as conn:
            conn.execute(insert(batches), row)
            if webhook is not None:
                outbox_sql.add_webhook(conn, batch.id, **webhook)
            conn.execute(insert(outbox), rows.outbox_row(batch.event(
                "batch.created", name=batch.name, total=batch.total)))

    def get(self, batch_id: str) -> Batch:
        with self.store.read() as conn:
            row = conn.execute(select(batches).where(batches.c.id == batch_id)).first()
        if row is None:
            raise NotFound("batch", batch_id)
        return _batch(row)

    def page(self, *, status: str | None = None, limit: int = 50, offset: int = 0
             ) -> list[Batch]:
        stmt = select(batches).order_by(batches.c.created_at.desc(), batches.c.id)
        if status:
            stmt = stmt.where(batches.c.status == status)
        with self.store.read() as conn:
            return [_batch(r) for r in conn.execute(stmt.limit(limit).offset(offset))]

    def unfinished(self) -> list[Batch]:
        with self.store.read() as conn:
            found = conn.execute(select(batches).where(batches.c.status.in_(("pending",
                                                                             "running"))))
            return [_batch(r) for r in found.all()]

    def finished_before(self, when: float) -> list[str]:
        """Batches that finished (completed or cancelled) before ``when``, oldest first."""
        stmt = (select(batches.c.id).where(batches.c.status.in_(("completed", "cancelled")),
                                           batches.c.finished_at < when)
                .order_by(batches.c.finished_at, batches.c.id))
        with self.store.read() as conn:
            return list(conn.execute(stmt).scalars())

    def pending_ids(self) -> list[str]:
        """Batches not started yet, oldest first."""
        stmt = (select(batches.c.id).where(batches.c.status == "pending")
                .order_by(batches.c.created_at, batches.c.id))
        with self.store.read() as conn:
            return list(conn.execute(stmt).scalars())

    def save(self, batch: Batch, event: Event | None = None) -> None:
        """Write status and counts (the orchestrator is the only writer of these)."""
        batch.updated_at = time.time()
        values = {k: getattr(batch, k) for k in ("status", *_COUNTS, "started_at",
                                                 "finished_at", "updated_at")}
        with self.store.write() as conn:
            conn.execute(update(batches).where(batches.c.id == batch.id).values(**values))
            if event is not None:
                conn.execute(insert(outbox), rows.outbox_row(event))

    def cancel_requested(self, batch_id: str) -> bool:
        with self.store.read() as conn:
            found = conn.execute(select(batches.c.cancel_requested)
                                 .where(batches.c.id == batch_id)).first()
        if found is None:
            raise NotFound("batch", batch_id)
        return bool(found[0])

    def request_cancel(self, batch_id: str) -> Batch:
        with self.store.write() as conn:
            done = conn.execute(update(batches).where(batches.c.id == batch_id)
                                .values(cancel_requested=True, updated_at=time.time())).rowcount
        if not done:
            raise NotFound("batch", batch_id)
        return self.get(batch_id)

    def cells(self, batch_id: str) -> list[dict[str, Any]]:
        """Every execution of the batch: id, status, attempts and its cell labels."""
        stmt = (select(executions.c.id, executions.c.status, executions.c.attempts,
                       executions.c.labels, executions.c.error)
                .where(executions.c.batch_id == batch_id)
                .order_by(executions.c.created_at, executions.c.id))  # the spec's order
        with self.store.read() as conn:
            return [{"id": r.id, "status": r.status, "attempts": r.attempts,
                     "error": rows.loads(r.error), **json.loads(r.labels)}
                    for r in conn.execute(stmt)]

    def save_results(self, results: list[dict[str, Any]]) -> None:
        """Upsert per-cell results (a cell evaluated again after a retry replaces its row)."""
        if not results:
            return
        stmt = self._insert.on_conflict_do_update(
            index_elements=["execution_id"],
            set_={c: self._insert.excluded[c] for c in (
                "status", "passed", "latency_ms", "node_count", "metrics", "error",
                "evaluated_at")})
        with self.store.write() as conn:
            conn.execute(stmt, [{**r, "metrics": json.dumps(r["metrics"], sort_keys=True)}
                                for r in results])

    def result_ids(self, batch_id: str) -> set[str]:
        stmt = select(batch_results.c.execution_id).where(batch_results.c.batch_id == batch_id)
        with self.store.read() as conn:
            return set(conn.execute(stmt).scalars())

    def results(self, batch_id: str, *, limit: int | None = None, offset: int = 0
                ) -> list[dict[str, Any]]:
        stmt = (select(batch_results).where(batch_results.c.batch_id == batch_id)
                .order_by(batch_results.c.combo, batch_results.c.case_id,
                          batch_results.c.repeat))
        if limit is not None:
            stmt = stmt.limit(limit).offset(offset)
        with self.store.read() as conn:
            return [{**dict(r._mapping), "metrics": json.loads(r.metrics)}
                    for r in conn.execute(stmt)]

    def cell_forks(self, batch_id: str) -> list[str]:
        """Forks of the batch's cells: while one exists the batch cannot be deleted."""
        return self.store.run(_cell_forks, batch_id)

    def delete(self, batch_id: str, may_go: Callable[[Execution], bool]) -> list[str]:
        """Delete a finished batch whole, in one transaction: its cells with their histories,
        its results, events and webhook, and the batch. Refused (nothing deleted) while it has
        not finished, while a cell ``may_go`` does not allow (one rolled back and resumed by
        hand, say) or while a fork of a cell exists. Returns the cells' ids."""
        return self.store.run(_delete_batch, batch_id, may_go, write=True)


def _delete_batch(conn: Connection, batch_id: str, may_go: Callable[[Execution], bool]
                  ) -> list[str]:
    # Locked, then decided: no claim, resume or rollback of a cell (each updates its row)
    # lands until this commits. A fork committed meanwhile does not need its origin: its
    # first checkpoint holds the whole state, and its blobs are reachable from it.
    status = conn.execute(select(batches.c.status).where(batches.c.id == batch_id)
                          .with_for_update()).scalar()
    if status is None:
        raise NotFound("batch", batch_id)
    if status not in ("completed", "cancelled"):
        raise BatchNotDeletable(batch_id, f"it is {status} (cancel it with `wtb batch cancel "
                                          f"{batch_id}` and wait for it to finish)")
    found = [rows.execution_from_row(r) for r in conn.execute(
        select(executions).where(executions.c.batch_id == batch_id)
        .order_by(executions.c.id).with_for_update())]
    busy = [ex.id for ex in found if not may_go(ex)]
    if busy:
        raise BatchNotDeletable(batch_id, f"cells of it are running ({some(busy, _SHOWN)}): stop "
                                          "them first")
    forks = _cell_forks(conn, batch_id)
    if forks:
        raise forked(batch_id, forks)
    delete_execution_rows(conn, _cells(batch_id))
    # The batch's own events (and any event of a cell not caught above) carry its id.
    delete_events(conn, outbox.c.batch_id == batch_id)
    for table in (batch_results, batch_webhooks):
        conn.execute(delete(table).where(table.c.batch_id == batch_id))
    conn.execute(delete(batches).where(batches.c.id == batch_id))
    return [ex.id for ex in found]


def forked(batch_id: str, forks: list[str]) -> BatchNotDeletable:
    """The refusal to delete a batch while these forks of its cells exist."""
    return BatchNotDeletable(batch_id, f"forks of its cells depend on their checkpoints "
                                       f"({some(forks, _SHOWN)}): delete them first")


def _cells(batch_id: str) -> Select:
    return select(executions.c.id).where(executions.c.batch_id == batch_id)


def _cell_forks(conn: Connection, batch_id: str) -> list[str]:
    """Executions forked from the batch's cells that are not cells of it themselves."""
    return list(conn.execute(select(executions.c.id).where(
        executions.c.parent_execution_id.in_(_cells(batch_id)),
        or_(executions.c.batch_id.is_(None), executions.c.batch_id != batch_id))).scalars())
