"""The tables, one schema for SQLite and PostgreSQL. Alembic migrations create them.

Times are epoch seconds (float) so both backends store and compare them the same way.
Checkpoint manifests are deltas against the parent (key -> blob hash of each changed key)
with a full manifest every ``FULL_MANIFEST_EVERY`` steps along a path, so a checkpoint costs
bytes in proportion to what changed, and reading one walks a bounded number of ancestors.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    text,
)

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# SQLite only aliases the rowid (no extra index, auto-assigned) for "INTEGER PRIMARY KEY".
Id = BigInteger().with_variant(Integer(), "sqlite")
ExecId = String(32)
NodeName = String(100)

executions = Table(
    "executions", metadata,
    Column("id", ExecId, primary_key=True),
    Column("workflow_ref", String(300)),
    Column("workflow_name", String(200), nullable=False),
    Column("workflow_version", String(64), nullable=False),
    Column("status", String(16), nullable=False),
    Column("variants", Text, nullable=False),  # JSON node -> variant (non-default only)
    Column("breakpoints", Text, nullable=False),  # JSON {"before": [...], "after": [...]}
    Column("head_checkpoint_id", Id),
    Column("step", Integer, nullable=False),
    Column("control", String(8)),  # a pending "pause" / "stop" request from another process
    Column("error", Text),  # JSON {node, type, message} of the last failure
    Column("parent_execution_id", ExecId),
    Column("forked_from_checkpoint_id", Id),
    Column("batch_id", ExecId),
    Column("lease_owner", String(200)),
    Column("lease_expires_at", Float),
    Column("attempts", Integer, nullable=False),
    Column("version", Integer, nullable=False),  # optimistic concurrency / fencing
    Column("labels", Text, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("workspace", Text),  # JSON {"path", "ignore"} of a tracked workspace directory
    Index(None, "status"),
    Index(None, "batch_id"),
    Index(None, "parent_execution_id"),
)

checkpoints = Table(
    "checkpoints", metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("execution_id", ExecId, ForeignKey("executions.id"), nullable=False),
    Column("parent_id", Id),
    Column("step", Integer, nullable=False),
    Column("kind", String(8), nullable=False),
    Column("node", NodeName),
    Column("next_node", NodeName),
    Column("is_full", Boolean, nullable=False),
    Column("manifest", Text, nullable=False),
    Column("created_at", Float, nullable=False),
    # Root tree (a blob) of the execution's workspace files at this checkpoint, if tracked.
    Column("workspace_tree", String(32)),
    Index(None, "execution_id"),
    sqlite_autoincrement=True,  # ids are never reused, even after checkpoints are deleted
)

# State values, workspace file chunks and workspace trees, by content hash. ``created_at`` is
# when the row was written or last *refreshed*: a writer that finds a row older than
# BLOB_REFRESH_SECONDS sets it to now, so garbage collection (which only deletes unreachable
# rows older than its grace period) cannot delete a blob a writer is about to reference.
blobs = Table(
    "blobs", metadata,
    Column("hash", String(32), primary_key=True),
    Column("codec", String(1), nullable=False),
    Column("size", Integer, nullable=False),
    Column("data", LargeBinary, nullable=False),
    Column("created_at", Float, nullable=False),
)
BLOB_REFRESH_SECONDS = 600.0

node_boundaries = Table(
    "node_boundaries", metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("execution_id", ExecId, ForeignKey("executions.id"), nullable=False),
    Column("step", Integer, nullable=False),
    Column("node", NodeName, nullable=False),
    Column("variant", String(100), nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("entry_checkpoint_id", Id),
    Column("exit_checkpoint_id", Id),
    Column("status", String(16), nullable=False),
    Column("started_at", Float, nullable=False),
    Column("duration_ms", Float, nullable=False),
    Column("error", Text),
    Column("usage", Text),
    Index(None, "execution_id"),
)

audit_log = Table(
    "audit_log", metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("execution_id", ExecId, nullable=False),
    Column("kind", String(40), nullable=False),
    Column("node", NodeName),
    Column("checkpoint_id", Id),
    Column("detail", Text),
    Column("at", Float, nullable=False),
    Index(None, "execution_id"),
)

outbox = Table(
    "outbox", metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("event_id", String(32), nullable=False, unique=True),
    Column("aggregate_type", String(16), nullable=False),
    Column("aggregate_id", ExecId, nullable=False),
    Column("kind", String(40), nullable=False),
    Column("batch_id", ExecId),  # set on a batch's events and on its executions' events
    Column("node", NodeName),
    Column("checkpoint_id", Id),  # a column, not in payload: it is known only inside the txn
    Column("payload", Text, nullable=False),  # the event's data (JSON)
    Column("status", String(12), nullable=False),  # pending | delivered | dead
    Column("attempts", Integer, nullable=False),
    Column("available_at", Float, nullable=False),
    Column("last_error", Text),
    Column("created_at", Float, nullable=False),
    Column("delivered_at", Float),
    # The relay holding the row while it delivers it (until available_at); NULL otherwise.
    Column("claimed_by", String(200)),
    # Only undelivered rows are indexed: the relay's work queue stays small as rows drain.
    Index("ix_outbox_pending", "id", sqlite_where=text("status = 'pending'"),
          postgresql_where=text("status = 'pending'")),
    # The relay finds each aggregate's oldest pending row through this one.
    Index("ix_outbox_pending_aggregate", "aggregate_type", "aggregate_id", "id",
          sqlite_where=text("status = 'pending'"), postgresql_where=text("status = 'pending'")),
    # The HTTP event stream reads a batch's or an execution's events after a cursor.
    Index(None, "batch_id", "id"),
    Index(None, "aggregate_type", "aggregate_id", "id"),
    sqlite_autoincrement=True,  # ids are event-stream cursors: never reused
)

batches = Table(
    "batches", metadata,
    Column("id", ExecId, primary_key=True),
    Column("name", String(200), nullable=False),
    Column("workflow_ref", String(300), nullable=False),
    Column("spec", Text, nullable=False),  # JSON, cases expanded: the cluster needs no files
    Column("status", String(16), nullable=False),  # pending|running|completed|cancelled
    Column("total", Integer, nullable=False),
    Column("completed", Integer, nullable=False),
    Column("failed", Integer, nullable=False),
    Column("cancelled", Integer, nullable=False),
    Column("cancel_requested", Boolean, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("started_at", Float),
    Column("finished_at", Float),
    Column("updated_at", Float, nullable=False),
    Index(None, "status"),
)

batch_results = Table(
    "batch_results", metadata,
    Column("execution_id", ExecId, ForeignKey("executions.id"), primary_key=True),
    Column("batch_id", ExecId, nullable=False),
    Column("combo", String(2000), nullable=False),  # canonical JSON of the variant choice
    Column("case_id", String(200), nullable=False),
    Column("repeat", Integer, nullable=False),
    Column("status", String(16), nullable=False),
    Column("passed", Boolean, nullable=False),
    Column("latency_ms", Float),
    Column("node_count", Integer, nullable=False),
    Column("metrics", Text, nullable=False),  # JSON name -> number
    Column("error", Text),
    Column("evaluated_at", Float, nullable=False),
    Index(None, "batch_id"),
)

# Undo actions nodes registered for their side effects (``ctx.on_rollback``), written with the
# node boundary. ``checkpoint_id`` is the node run's exit checkpoint (NULL if the run failed).
# status: pending -> started (claimed by a rollback) -> done; a failure returns it to pending.
compensations = Table(
    "compensations", metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("execution_id", ExecId, ForeignKey("executions.id"), nullable=False),
    Column("entry_checkpoint_id", Id),
    Column("checkpoint_id", Id),
    Column("node", NodeName, nullable=False),
    Column("step", Integer, nullable=False),
    Column("seq", Integer, nullable=False),
    Column("fn", String(300), nullable=False),  # import reference module:qualname
    Column("args", Text, nullable=False),  # canonical JSON list
    Column("key", String(32), nullable=False, unique=True),  # idempotency key given to fn
    Column("status", String(8), nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("error", Text),
    Column("created_at", Float, nullable=False),
    Column("started_at", Float),
    Column("done_at", Float),
    Index(None, "execution_id"),
)

# -- the outbox relay and the integrity checker (migration 0004) ------------------------------

# Consumers that have applied an event the relay could not yet mark delivered (another consumer
# failed): a retry goes only to the consumers still missing it. Deleted with the delivery.
outbox_applied = Table(
    "outbox_applied", metadata,
    Column("event_id", String(32), primary_key=True),
    Column("consumer", String(40), primary_key=True),
    Column("applied_at", Float, nullable=False),
)

# On SQLite one relay at a time claims events: the one holding this lease.
relay_leases = Table(
    "relay_leases", metadata,
    Column("name", String(40), primary_key=True),
    Column("owner", String(200), nullable=False),
    Column("expires_at", Float, nullable=False),
)

# A batch's webhook, kept out of batches.spec so the secret is never shown with the spec.
batch_webhooks = Table(
    "batch_webhooks", metadata,
    Column("batch_id", ExecId, ForeignKey("batches.id"), primary_key=True),
    Column("url", String(2000), nullable=False),
    Column("secret", String(500)),  # NULL: the relay signs with WTB_WEBHOOK_SECRET
    Column("events", Text, nullable=False),  # JSON list of event-kind patterns
)

integrity_reports = Table(
    "integrity_reports", metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("started_at", Float, nullable=False),
    Column("finished_at", Float, nullable=False),
    Column("trigger", String(16), nullable=False),  # cli | cron
    Column("repair", Boolean, nullable=False),
    Column("found", Integer, nullable=False),
    Column("repaired", Integer, nullable=False),
    Column("report", Text, nullable=False),  # JSON: counts by kind and the findings
    sqlite_autoincrement=True,
)

# Checkpoints whose stored values are gone (a blob they name is missing): nothing can bring
# the values back, so the integrity checker records them here and stops reporting them.
damaged_checkpoints = Table(
    "damaged_checkpoints", metadata,
    Column("checkpoint_id", Id, primary_key=True, autoincrement=False),
    Column("execution_id", ExecId, nullable=False),
    Column("reason", Text, nullable=False),
    Column("found_at", Float, nullable=False),
)

FULL_MANIFEST_EVERY = 32
