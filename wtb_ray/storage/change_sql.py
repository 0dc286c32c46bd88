"""The SQL of one Change (a node boundary, a pause, a new execution), for both dialects.

A boundary writes to up to seven tables. Built through SQLAlchemy's expression layer its
statements cost more than SQLite takes to run them, and sent as text to PostgreSQL each is
parsed and planned at every commit (about a third of a commit there). So:

* SQLite: the column lists come from schema.py, the text is rendered here once per shape of
  change (how many blobs and events, which fences) and cached, and the statements run one by
  one on the DBAPI connection inside BEGIN IMMEDIATE; the checkpoint id is the insert's rowid,
  and the fenced UPDATE goes last (a failed fence rolls the transaction back).
* PostgreSQL: the change is one call of the function wtb_commit_change (migration 0005), its
  rows as JSON keyed by column, in one simple-protocol round trip; the function's statements
  are planned once per server connection. A failed fence raises there, with FENCE_FAILED in
  its message, and aborts the transaction. The JSON is written by orjson: with the
  standard encoder and psycopg's cursor around it, the client's share of a 10-node run of
  trivial nodes was 3.1 ms of CPU, with orjson and the statement sent as it is 2.7.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import orjson

from wtb_ray.storage import rows
from wtb_ray.storage.schema import (
    BLOB_REFRESH_SECONDS,
    audit_log,
    blobs,
    checkpoints,
    compensations,
    executions,
    node_boundaries,
    outbox,
)

FENCE_FAILED = "wtb fence failed"


def _columns(table, *skip: str) -> tuple[str, ...]:
    # Plain str: SQLAlchemy's names are a subclass of it, which orjson refuses as a key.
    return tuple(str(c.name) for c in table.columns if c.name not in skip)


EXECUTION_COLS = _columns(executions, "head_checkpoint_id")
BLOB_COLS = _columns(blobs)
CHECKPOINT_COLS = _columns(checkpoints, "id")
BOUNDARY_COLS = _columns(node_boundaries, "id", "exit_checkpoint_id")
AUDIT_COLS = _columns(audit_log, "id", "checkpoint_id")
OUTBOX_COLS = _columns(outbox, "id", "checkpoint_id", "last_error", "delivered_at",
                       "claimed_by")
UNDO_COLS = _columns(compensations, "id", "checkpoint_id", "error", "started_at", "done_at")

# An existing blob is left alone unless it is old enough that garbage collection might be
# about to delete it; then its created_at is refreshed (see schema.blobs).
BLOB_CONFLICT = (f"ON CONFLICT (hash) DO UPDATE SET created_at = excluded.created_at "
                 f"WHERE blobs.created_at < excluded.created_at - {BLOB_REFRESH_SECONDS!r}")


class ChangeSQL:
    """SQLite: renders statements (cached by shape) and binds one change's parameters."""

    cid = ":cid"  # the new checkpoint's id, once its insert has made it

    @staticmethod
    def _ph(name: str) -> str:
        return f":{name}"

    def _row(self, prefix: str, cols: tuple[str, ...], extra: str = "") -> str:
        return "(" + ", ".join([*(self._ph(f"{prefix}_{c}") for c in cols),
                                *([extra] if extra else [])]) + ")"

    # -- statement text, cached per shape ------------------------------------------------

    @lru_cache(maxsize=1)  # noqa: B019 - one instance per store, a few stores per process
    def insert_execution(self) -> str:
        # The head is set once the checkpoint exists (the caller's last statement).
        return (f"INSERT INTO executions ({', '.join(EXECUTION_COLS)}, head_checkpoint_id) "
                f"VALUES {self._row('x', EXECUTION_COLS, 'NULL')}")

    @lru_cache(maxsize=256)  # noqa: B019
    def update_execution(self, columns: tuple[str, ...], by_version: bool, by_owner: bool,
                         sets_head: bool) -> str:
        sets = [f"{c} = {self._ph('set_' + c)}" for c in columns]
        if sets_head:
            sets.append(f"head_checkpoint_id = {self.cid}")
        fence = []
        if by_version:
            fence.append(f"version = {self._ph('fence_version')}")
        if by_owner:
            fence.append(f"lease_owner = {self._ph('fence_owner')} AND status = 'running'")
        sets.append("version = version + 1")
        where = [f"id = {self._ph('id')}", *fence]  # a failed fence: no row back, rolled back
        return (f"UPDATE executions SET {', '.join(sets)} WHERE {' AND '.join(where)} "
                "RETURNING version, control, head_checkpoint_id")

    @lru_cache(maxsize=64)  # noqa: B019
    def insert_blobs(self, n: int) -> str:
        return (f"INSERT INTO blobs ({', '.join(BLOB_COLS)}) VALUES "
                + ", ".join(self._row(f"b{i}", BLOB_COLS) for i in range(n))
                + " " + BLOB_CONFLICT)

    @lru_cache(maxsize=4)  # noqa: B019
    def insert_checkpoint(self) -> str:
        return (f"INSERT INTO checkpoints ({', '.join(CHECKPOINT_COLS)}) "
                f"VALUES {self._row('c', CHECKPOINT_COLS)}")

    @lru_cache(maxsize=4)  # noqa: B019
    def insert_boundary(self, with_checkpoint: bool) -> str:
        return (f"INSERT INTO node_boundaries ({', '.join(BOUNDARY_COLS)}, exit_checkpoint_id) "
                f"VALUES {self._row('nb', BOUNDARY_COLS, self.cid if with_checkpoint else 'NULL')}")

    @lru_cache(maxsize=32)  # noqa: B019
    def insert_compensations(self, n: int, with_checkpoint: bool) -> str:
        """Undo actions a node registered; they belong to its exit checkpoint, if any."""
        cid = self.cid if with_checkpoint else "NULL"
        return (f"INSERT INTO compensations ({', '.join(UNDO_COLS)}, checkpoint_id) VALUES "
                + ", ".join(self._row(f"u{i}", UNDO_COLS, cid) for i in range(n)))

    @lru_cache(maxsize=128)  # noqa: B019
    def insert_events(self, fills: tuple[bool, ...]) -> tuple[str, str]:
        """Audit and outbox rows; ``fills[i]``: event i takes the new checkpoint's id."""
        audits = [self._row(f"a{i}", AUDIT_COLS, self.cid if fill else self._ph(f"k{i}"))
                  for i, fill in enumerate(fills)]
        boxes = [self._row(f"o{i}", OUTBOX_COLS, self.cid if fill else self._ph(f"k{i}"))
                 for i, fill in enumerate(fills)]
        return (f"INSERT INTO audit_log ({', '.join(AUDIT_COLS)}, checkpoint_id) VALUES "
                + ", ".join(audits),
                f"INSERT INTO outbox ({', '.join(OUTBOX_COLS)}, checkpoint_id) VALUES "
                + ", ".join(boxes))

    # -- parameters -----------------------------------------------------------------------

    @staticmethod
    def bind(change: Any, values: dict[str, Any], now: float) -> dict[str, Any]:
        p: dict[str, Any] = {f"set_{k}": v for k, v in values.items()}
        p["id"], p["fence_version"], p["fence_owner"] = (
            change.execution_id, change.fence_version, change.fence_owner)
        if change.new_execution is not None:
            p.update({f"x_{c}": v for c, v in _new_execution_row(change).items()})
        if change.checkpoint is not None:
            for i, blob in enumerate(change.checkpoint.blobs):
                for c, v in zip(BLOB_COLS, (*blob, now), strict=True):
                    p[f"b{i}_{c}"] = v
            p.update({f"c_{c}": v for c, v in _checkpoint_row(change, now).items()})
        if change.boundary is not None:
            p.update({f"nb_{c}": v for c, v in _boundary_row(change).items()})
        for i, row in enumerate(_undo_rows(change, now)):
            for c in UNDO_COLS:
                p[f"u{i}_{c}"] = row[c]
        for i, event in enumerate(change.events):
            for k, v in rows.audit_row(event).items():
                p[f"a{i}_{k}"] = v
            for k, v in rows.outbox_row(event).items():
                p[f"o{i}_{k}"] = v
            p[f"k{i}"] = event.checkpoint_id
        return p

    def fills(self, change: Any) -> tuple[bool, ...]:
        has_checkpoint = change.checkpoint is not None
        return tuple(has_checkpoint and e.checkpoint_id is None for e in change.events)

# -- the rows of a change, as both dialects write them ------------------------------------

def _new_execution_row(change: Any) -> dict[str, Any]:
    row = rows.execution_row(change.new_execution)
    row["version"] += 1  # as the fenced update would have made it
    return {c: row[c] for c in EXECUTION_COLS}


def _checkpoint_row(change: Any, now: float) -> dict[str, Any]:
    ck = change.checkpoint
    return {"execution_id": change.execution_id, "parent_id": ck.parent_id, "step": ck.step,
            "kind": ck.kind, "node": ck.node, "next_node": ck.next_node, "is_full": ck.is_full,
            "manifest": ck.manifest, "created_at": now, "workspace_tree": ck.workspace_tree}


def _boundary_row(change: Any) -> dict[str, Any]:
    return {**change.boundary, "execution_id": change.execution_id}


def _undo_rows(change: Any, now: float) -> list[dict[str, Any]]:
    return [{**undo, "execution_id": change.execution_id, "status": "pending", "attempts": 0,
             "created_at": now} for undo in change.compensations or ()]


# -- PostgreSQL: the whole change as one function call ------------------------------------

def postgres_call(change: Any, values: dict[str, Any], now: float, escaping: Any) -> bytes:
    """The change as one call of wtb_commit_change (migration 0005), its rows as JSON
    keyed by column; the call returns the execution's version, control and head."""
    unknown = values.keys() - SETTABLE
    if unknown:  # the function would ignore them: a bug here, not bad input
        raise ValueError(f"not settable on an execution: {sorted(unknown)}")
    call: dict[str, Any] = {"id": change.execution_id, "set": values,
                            "fence_version": change.fence_version,
                            "fence_owner": change.fence_owner}
    if change.new_execution is not None:
        call["new"] = _new_execution_row(change)
    ck = change.checkpoint
    if ck is not None:
        if ck.blobs:
            call["blobs"] = [dict(zip(BLOB_COLS, (h, codec, size, _bytea(data), now),
                                      strict=True)) for h, codec, size, data in ck.blobs]
        call["checkpoint"] = _checkpoint_row(change, now)
    if change.boundary is not None:
        call["boundary"] = _boundary_row(change)
    if change.compensations:
        call["undo"] = _undo_rows(change, now)
    call["audits"] = [rows.audit_row(e) for e in change.events]
    call["outbox"] = [rows.outbox_row(e) for e in change.events]
    # Every float here is a time or a duration, and every value a node made is text already
    # (rows.dumps): orjson's ways (NaN written as null, no integers past 64 bits) never apply.
    text = orjson.dumps(call)
    if b"\\u0000" in text:  # a NUL in some string (a node's error message, say)
        text = orjson.dumps(_without_nul(call))
    return b"SELECT * FROM wtb_commit_change(" + escaping.escape_literal(text) + b")"


def _without_nul(value: Any) -> Any:
    """PostgreSQL's text cannot hold NUL: each one becomes U+FFFD (what it is shown as)."""
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, dict):
        return {k: _without_nul(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_nul(v) for v in value]
    return value


def _bytea(data: bytes) -> str:
    """bytea's text form, as jsonb_populate_record reads it."""
    return "\\x" + bytes(data).hex()


SETTABLE = frozenset(EXECUTION_COLS) - {"id", "version"} | {"head_checkpoint_id"}
