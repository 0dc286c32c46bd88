"""The SQL of one Change (a node boundary, a pause, a new execution), for both dialects.

A boundary writes up to seven statements. Built through SQLAlchemy's expression layer they
cost more than SQLite takes to run them, and sent one by one through PgBouncer each costs a
round trip (~0.2 ms here). So the column lists come from schema.py, the text is rendered here
once per shape of change (how many blobs and events, which fences) and cached, and the
statements run on the DBAPI connection:

* SQLite: one by one inside BEGIN IMMEDIATE; the checkpoint id is the insert's rowid, and the
  fenced UPDATE goes last (a failed fence rolls the transaction back).
* PostgreSQL: the whole transaction as one string with every value inlined as a literal
  escaped by libpq, sent in one simple-protocol round trip. The fenced UPDATE goes first and
  allocates the checkpoint id; if it matches no row, a guarded SELECT raises and PostgreSQL
  aborts the rest.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any

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
_NEXT_ID = "nextval(pg_get_serial_sequence('checkpoints', 'id'))"
_CURRENT_ID = "currval(pg_get_serial_sequence('checkpoints', 'id'))"


def _columns(table, *skip: str) -> tuple[str, ...]:
    return tuple(c.name for c in table.columns if c.name not in skip)


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


def pg_literal(value: Any, escaping: Any) -> str:
    """A PostgreSQL literal; strings and bytes are escaped by libpq for this connection."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else f"'{value!r}'::float8"
    if isinstance(value, str):
        return escaping.escape_literal(value.encode()).decode()
    if isinstance(value, (bytes, bytearray, memoryview)):
        return "'" + escaping.escape_bytea(bytes(value)).decode() + "'::bytea"
    raise TypeError(f"no PostgreSQL literal for {type(value).__name__}")


class ChangeSQL:
    """Renders statements (cached by shape) and binds one change's parameters."""

    def __init__(self, dialect: str) -> None:
        self.pg = dialect == "postgresql"
        self.new_id = _NEXT_ID if self.pg else ":cid"  # where the new checkpoint id is made
        self.cid = _CURRENT_ID if self.pg else ":cid"  # where it is used afterwards

    def _ph(self, name: str) -> str:
        return f"%({name})s" if self.pg else f":{name}"

    def _row(self, prefix: str, cols: tuple[str, ...], extra: str = "") -> str:
        return "(" + ", ".join([*(self._ph(f"{prefix}_{c}") for c in cols),
                                *([extra] if extra else [])]) + ")"

    # -- statement text, cached per shape ------------------------------------------------

    @lru_cache(maxsize=32)  # noqa: B019 - two instances per process at most
    def insert_execution(self, with_checkpoint: bool) -> str:
        head = self.new_id if (self.pg and with_checkpoint) else "NULL"
        return (f"INSERT INTO executions ({', '.join(EXECUTION_COLS)}, head_checkpoint_id) "
                f"VALUES {self._row('x', EXECUTION_COLS, head)}")

    @lru_cache(maxsize=256)  # noqa: B019
    def update_execution(self, columns: tuple[str, ...], by_version: bool, by_owner: bool,
                         sets_head: bool) -> str:
        sets = [f"{c} = {self._ph('set_' + c)}" for c in columns]
        if sets_head:
            sets.append(f"head_checkpoint_id = {self.new_id}")
        fence = []
        if by_version:
            fence.append(f"version = {self._ph('fence_version')}")
        if by_owner:
            fence.append(f"lease_owner = {self._ph('fence_owner')} AND status = 'running'")
        where = [f"id = {self._ph('id')}"]
        if self.pg and fence:
            # The statements after this one are already on the wire, so a failed fence must
            # abort the transaction: the ELSE raises (it reads the row, so it cannot be
            # folded at plan time).
            sets.append(f"version = CASE WHEN {' AND '.join(fence)} THEN version + 1 "
                        f"ELSE CAST('{FENCE_FAILED} ' || id AS int) END")
        else:
            sets.append("version = version + 1")
            where.extend(fence)  # SQLite: no row back, and the caller rolls back
        return (f"UPDATE executions SET {', '.join(sets)} WHERE {' AND '.join(where)} "
                "RETURNING version, control, head_checkpoint_id")

    @lru_cache(maxsize=64)  # noqa: B019
    def insert_blobs(self, n: int) -> str:
        return (f"INSERT INTO blobs ({', '.join(BLOB_COLS)}) VALUES "
                + ", ".join(self._row(f"b{i}", BLOB_COLS) for i in range(n))
                + " " + BLOB_CONFLICT)

    @lru_cache(maxsize=4)  # noqa: B019
    def insert_checkpoint(self) -> str:
        if self.pg:
            return (f"INSERT INTO checkpoints ({', '.join(CHECKPOINT_COLS)}, id) "
                    f"VALUES {self._row('c', CHECKPOINT_COLS, self.cid)}")
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
            row = rows.execution_row(change.new_execution)
            row["version"] += 1
            p.update({f"x_{c}": row[c] for c in EXECUTION_COLS})
        ck = change.checkpoint
        if ck is not None:
            for i, blob in enumerate(ck.blobs):
                for c, v in zip(BLOB_COLS, (*blob, now), strict=True):
                    p[f"b{i}_{c}"] = v
            p.update(c_execution_id=change.execution_id, c_parent_id=ck.parent_id,
                     c_step=ck.step, c_kind=ck.kind, c_node=ck.node, c_next_node=ck.next_node,
                     c_is_full=ck.is_full, c_manifest=ck.manifest, c_created_at=now,
                     c_workspace_tree=ck.workspace_tree)
        if change.boundary is not None:
            for k, v in change.boundary.items():
                p[f"nb_{k}"] = v
            p["nb_execution_id"] = change.execution_id
        for i, undo in enumerate(change.compensations or ()):
            row = {**undo, "execution_id": change.execution_id, "status": "pending",
                   "attempts": 0, "created_at": now}
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

    # -- PostgreSQL: the whole change as one string ---------------------------------------

    def postgres_statements(self, change: Any, values: dict[str, Any], now: float,
                            escaping: Any) -> str:
        """The change as statements (no BEGIN/COMMIT) with every value inlined as a literal.

        Exactly one of them returns a row: the fenced UPDATE, or the new execution's SELECT.
        """
        ck = change.checkpoint
        statements = []
        if change.new_execution is not None:
            statements.append(self.insert_execution(ck is not None))
            statements.append(f"SELECT %(x_version)s, NULL, {self.cid if ck else 'NULL'}")
        else:
            statements.append(self.update_execution(
                tuple(values), change.fence_version is not None, change.fence_owner is not None,
                ck is not None))
        if ck is not None:
            if ck.blobs:
                statements.append(self.insert_blobs(len(ck.blobs)))
            statements.append(self.insert_checkpoint())
        if change.boundary is not None:
            statements.append(self.insert_boundary(ck is not None))
        if change.compensations:
            statements.append(self.insert_compensations(len(change.compensations), ck is not None))
        statements.extend(self.insert_events(self.fills(change)))
        params = self.bind(change, values, now)
        # Every "%" in the text is a placeholder: the statements above contain no other.
        return ";\n".join(statements) % {k: pg_literal(v, escaping) for k, v in params.items()}
