"""The store: one interface over SQLite and PostgreSQL for executions and their history.

Every change to an execution goes through :meth:`Store.commit`, which writes, in one
transaction: the new state blobs, the checkpoint, the node boundary, one audit entry and one
outbox row per event, and the execution row itself. The execution update is *fenced*: it only
applies if the writer still holds the lease (a runner) or saw the current version (an editor),
so two processes can never both advance one execution. The transaction itself, per dialect,
is written by change_writes.py; this class holds the connection and retries a dropped one.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

from sqlalchemy import Connection, Engine, insert, select, update
from sqlalchemy.exc import DBAPIError
from tenacity import Retrying, retry_if_exception, stop_after_delay, wait_exponential

from wtb_ray.domain.checkpoint import Checkpoint, NodeBoundary
from wtb_ray.domain.errors import ConcurrencyConflict, NotFound
from wtb_ray.domain.events import Event
from wtb_ray.domain.execution import Execution
from wtb_ray.latency import Latency
from wtb_ray.storage import (
    blob_io,
    change_sql,
    change_writes,
    codec,
    db,
    migrate,
    queries,
    raw_reads,
    rows,
)
from wtb_ray.storage.change import Change, CheckpointWrite, Committed
from wtb_ray.storage.packer import Packer
from wtb_ray.storage.schema import audit_log, executions, outbox

log = logging.getLogger(__name__)


def _insert_event(conn: Connection, event: Event) -> None:
    """The event's audit entry and outbox row, in the caller's transaction."""
    conn.execute(insert(audit_log), [rows.audit_row(event)])
    conn.execute(insert(outbox), [rows.outbox_row(event)])


class _Disconnected(Exception):
    """The hot connection dropped mid-transaction; the work is retried on another one."""


def _is_disconnect(exc: BaseException) -> bool:
    if isinstance(exc, _Disconnected):
        return True
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)


class Store:
    """Executions, checkpoints, blobs, boundaries, audit and outbox on one database."""

    def __init__(self, engine: Engine, *, reconnect_seconds: float = 30.0) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name
        self.reconnect_seconds = reconnect_seconds
        self._sql = change_sql.ChangeSQL()  # SQLite's statements
        self._raw_reads = raw_reads.RawReads(self.dialect)
        # The boundary write path keeps one DBAPI connection for the store's lifetime.
        self._hot: Any = None
        self._hot_timeout_ms: int | None = None  # its busy timeout if db.writer_connection
        self._hot_lock = threading.Lock()
        self.write_latency = Latency()  # of commits, for the metrics endpoint
        self._wal = db.wal_checkpointer(engine)  # SQLite: told of every commit
        self.packer = Packer(self._repack)  # compresses chunks committed raw

    @classmethod
    def open(cls, url: str, *, auto_migrate: bool | None = None, busy_timeout_ms: int = 30_000,
             pool_size: int = 5) -> Store:
        """Connect; migrate automatically on SQLite (or when asked), else require HEAD."""
        engine = db.make_engine(url, busy_timeout_ms=busy_timeout_ms, pool_size=pool_size)
        auto = db.is_sqlite(url) if auto_migrate is None else auto_migrate
        migrate.ensure_current(engine, auto=auto)
        return cls(engine)

    def close(self) -> None:
        self.packer.close()
        with self._hot_lock:
            if self._hot is not None:
                self._hot.close()
                self._hot = None
        self.engine.dispose()

    # -- transactions -------------------------------------------------------------------

    @contextmanager
    def write(self) -> Iterator[Connection]:
        with self.engine.connect() as conn:
            conn.info[db.WRITE_FLAG] = True
            with conn.begin():
                yield conn
            if self._wal is not None:
                self._wal.committed(conn.connection.driver_connection)

    @contextmanager
    def read(self) -> Iterator[Connection]:
        with self.engine.connect() as conn, conn.begin():
            yield conn

    def _retrying(self) -> Retrying:
        return Retrying(retry=retry_if_exception(_is_disconnect),
                        stop=stop_after_delay(self.reconnect_seconds),
                        wait=wait_exponential(multiplier=0.05, max=2.0), reraise=True)

    # -- writes -------------------------------------------------------------------------

    def commit(self, change: Change) -> Committed:
        """Write ``change`` atomically; raise ConcurrencyConflict if its fence fails."""
        outcome = self.commit_many([change])[0]
        if isinstance(outcome, ConcurrencyConflict):
            raise outcome
        return outcome

    def commit_many(self, changes: list[Change]) -> list[Committed | ConcurrencyConflict]:
        """Write several changes in one transaction (group commit).

        A change whose fence fails is left out; its slot holds the ConcurrencyConflict. A
        dropped connection (PgBouncer restart, failover) is retried; each change's first event
        id is the idempotency key that tells whether an interrupted attempt had committed.
        """
        if any(not c.events for c in changes):
            raise ValueError("a change must carry at least one event")
        outcomes = self._commit_retrying(changes)
        self.packer.add((h, data) for c, o in zip(changes, outcomes, strict=True)
                        if c.checkpoint is not None and not isinstance(o, ConcurrencyConflict)
                        for h, blob_codec, _, data in c.checkpoint.blobs
                        if blob_codec == codec.RAW_LATER)
        return outcomes

    def _commit_retrying(self, changes: list[Change]
                         ) -> list[Committed | ConcurrencyConflict]:
        try:
            return self._commit_batch(changes)  # the hot path: no retry machinery
        except _Disconnected:
            log.warning("database connection lost while committing %d change(s); retrying for "
                        "up to %.0f s", len(changes), self.reconnect_seconds)
        for attempt in self._retrying():
            with attempt:
                if self._committed_before(changes[0]) is None:
                    return self._commit_batch(changes)
                # The transaction landed; a change left out by its fence is tried again alone.
                return [self._committed_before(c) or self._commit_batch([c])[0]
                        for c in changes]
        raise AssertionError("unreachable")  # pragma: no cover

    def _committed_before(self, change: Change) -> Committed | None:
        with self.read() as conn:
            row = conn.execute(select(outbox.c.checkpoint_id)
                               .where(outbox.c.event_id == change.events[0].id)).first()
            if row is None:
                return None
            log.warning("commit for %s had landed before the connection dropped",
                        change.execution_id)
            ex = queries.execution(conn, change.execution_id)
            return Committed(row[0], ex.version, ex.control,
                             change_writes.with_checkpoint(change.events, row[0]))

    def _commit_batch(self, changes: list[Change]) -> list[Committed | ConcurrencyConflict]:
        started = time.perf_counter()
        with self._on_hot() as dbapi:
            if self.dialect == "postgresql":
                outcomes = change_writes.write_postgres(dbapi, changes)
            else:
                outcomes = change_writes.write_sqlite(
                    dbapi, self._sql, changes, self._exists,
                    self._wal.committed if self._wal is not None else None,
                    self._hot_timeout_ms)
        elapsed_ms = (time.perf_counter() - started) * 1000
        for _ in changes:  # each change waited for the whole transaction
            self.write_latency.observe(elapsed_ms)
        return [self._conflict(c) if o is None else o
                for c, o in zip(changes, outcomes, strict=True)]

    def _exists(self, execution_id: str) -> bool:
        return self.run(queries.exists, execution_id)

    def _conflict(self, change: Change) -> ConcurrencyConflict:
        current = self.execution(change.execution_id)
        return ConcurrencyConflict(
            f"execution {change.execution_id} changed under this process (now "
            f"{current.status.value}, version {current.version}, lease "
            f"{current.lease_owner or 'free'})")

    @contextmanager
    def _on_hot(self) -> Iterator[Any]:
        """The hot connection's DB-API connection, this thread's alone meanwhile; if it turns
        out to have dropped, it is let go (the next use opens another) and _Disconnected
        raised."""
        with self._hot_lock:
            raw = self._hot_connection()
            try:
                # dbapi_connection: the driver's own connection with both our (sync) drivers,
                # and still there once detached from the pool (db.writer_connection).
                yield raw.dbapi_connection
            except BaseException as exc:
                if self.engine.dialect.is_disconnect(exc, raw.dbapi_connection, None):
                    self._hot = None
                    raw.invalidate(exc)
                    raise _Disconnected(str(exc)) from exc
                raise

    def _hot_connection(self) -> Any:
        if self._hot is None:
            if self._wal is not None:  # an SQLite file: see db.writer_connection
                self._hot, self._hot_timeout_ms = db.writer_connection(self.engine)
                return self._hot
            self._hot = self.engine.raw_connection()
            if self.dialect == "postgresql":
                # Each commit's string is one transaction (change_writes.write_postgres).
                self._hot.driver_connection.autocommit = True
        return self._hot

    def request_control(self, execution_id: str, action: str, statuses: set[str],
                        event: Event) -> bool:
        """Leave a pause/stop request for the process running the execution.

        Does not bump the version: the runner's lease fence is what guards its writes.
        Returns False if the execution was no longer in one of ``statuses``.
        """
        with self.write() as conn:
            done = conn.execute(
                update(executions)
                .where(executions.c.id == execution_id, executions.c.status.in_(statuses))
                .values(control=action)).rowcount
            if done:
                _insert_event(conn, event)
            return bool(done)

    def record(self, event: Event) -> None:
        """An event that changes no column of its execution (a request refused after it was
        accepted): its audit entry and outbox row only. The version is left as it is, so a
        runner's fence is not failed by a note about it."""
        with self.write() as conn:
            _insert_event(conn, event)

    def renew_leases(self, owner: str, execution_ids: list[str], until: float) -> int:
        with self.write() as conn:
            return conn.execute(
                update(executions)
                .where(executions.c.id.in_(execution_ids), executions.c.lease_owner == owner,
                       executions.c.status.in_(("running", "rolling_back")))
                .values(lease_expires_at=until)).rowcount

    def _repack(self, rows: list[tuple[str, bytes, str]]) -> None:
        """The packer's rewrite. On SQLite it holds the hot lock, so this process's boundary
        commits wait on a lock instead of polling SQLite's (every 0.1-2 ms)."""
        with self._hot_lock if self.dialect == "sqlite" else nullcontext():
            self.run(blob_io.repack, rows, write=True)

    # -- reads (each in its own read transaction; see queries for the SQL) ----------------

    def run(self, fn, *args: Any, write: bool = False, **kwargs: Any) -> Any:
        """``fn(conn, *args)`` in a transaction of its own (a write one if asked), retried on a
        dropped connection: reads, and idempotent work off the boundary path (workspace
        blobs, undo bookkeeping, garbage collection)."""
        try:  # the common case, without building the retry machinery
            with (self.write() if write else self.read()) as conn:
                return fn(conn, *args, **kwargs)
        except Exception as exc:
            if not _is_disconnect(exc):
                raise
        for attempt in self._retrying():
            with attempt, (self.write() if write else self.read()) as conn:
                return fn(conn, *args, **kwargs)
        raise AssertionError("unreachable")  # pragma: no cover

    def execution(self, execution_id: str) -> Execution:
        return self.run(queries.execution, execution_id)

    def executions(self, **filters: Any) -> list[Execution]:
        return self.run(queries.executions_page, **filters)

    def checkpoint_with_state(self, execution_id: str, checkpoint_id: int | None
                              ) -> tuple[Execution, Checkpoint | None, queries.State | None]:
        """``queries.checkpoint_with_state`` on the hot connection (storage/raw_reads.py);
        through the pool, retried, if that connection has dropped."""
        try:
            with self._on_hot() as dbapi:
                return self._raw_reads.checkpoint_with_state(dbapi, execution_id, checkpoint_id)
        except _Disconnected:
            log.warning("database connection lost while reading execution %s; retrying for "
                        "up to %.0f s", execution_id, self.reconnect_seconds)
        return self.run(queries.checkpoint_with_state, execution_id, checkpoint_id)

    def checkpoint(self, checkpoint_id: int) -> Checkpoint:
        return self.run(queries.checkpoint, checkpoint_id)

    def checkpoints(self, execution_id: str) -> list[Checkpoint]:
        return self.run(queries.checkpoints_of, execution_id)

    def state_at(self, checkpoint_id: int) -> tuple[dict[str, Any], dict[str, str], int]:
        return self.run(queries.state_at, checkpoint_id)

    def boundaries(self, execution_id: str) -> list[NodeBoundary]:
        return self.run(queries.boundaries_of, execution_id)

    def node_totals(self, execution_ids: list[str]) -> dict[str, dict[str, Any]]:
        return self.run(queries.node_totals, execution_ids)

    def history(self, execution_id: str) -> list[Event]:
        return self.run(queries.history, execution_id)

    def outbox_events(self, aggregate_id: str | None = None) -> list[dict[str, Any]]:
        return self.run(queries.outbox_events, aggregate_id)

    def outbox_after(self, after_id: int, **filters: Any) -> list[dict[str, Any]]:
        return self.run(queries.outbox_after, after_id, **filters)

    def table_counts(self) -> dict[str, int]:
        return self.run(queries.table_counts)


__all__ = ["Change", "CheckpointWrite", "Committed", "NotFound", "Store"]
