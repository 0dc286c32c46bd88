"""Batch rows, per-cell results and batch events (outbox), over the store's engine."""

from __future__ import annotations

import json
import time
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from wtb_ray.domain.batch import Batch
from wtb_ray.domain.errors import NotFound
from wtb_ray.domain.events import Event
from wtb_ray.storage import outbox_sql, rows
from wtb_ray.storage.schema import batch_results, batches, executions, outbox
from wtb_ray.storage.store import Store

_COUNTS = ("completed", "failed", "cancelled")


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
