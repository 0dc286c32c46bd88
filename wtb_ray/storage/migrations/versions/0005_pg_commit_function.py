"""PostgreSQL: a node boundary (any Change) written by one server-side function.

Sent as text, the boundary's five to eight statements were parsed, analysed and planned at
every commit: about a third of a commit's time. PL/pgSQL keeps the plans of a function's
statements for the life of the server connection, so a call costs one short statement to
parse. The change arrives as one JSON object (see change_sql.postgres_call); rows are typed
by jsonb_populate_record(set) against the tables themselves. SQLite is untouched.

Revision ID: 0005
Revises: 0004
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

# Frozen with this revision: a migration that adds a column to one of these tables replaces
# the function (tests/integration/test_migrations.py compares these lists with the
# tables').
SETTABLE = ("workflow_ref", "workflow_name", "workflow_version", "status", "variants",
            "breakpoints", "step", "control", "error", "parent_execution_id",
            "forked_from_checkpoint_id", "batch_id", "lease_owner", "lease_expires_at",
            "attempts", "labels", "created_at", "updated_at", "workspace")
EXECUTION = ("id", *SETTABLE, "version")
BLOB = ("hash", "codec", "size", "data", "created_at")
CHECKPOINT = ("execution_id", "parent_id", "step", "kind", "node", "next_node", "is_full",
              "manifest", "created_at", "workspace_tree")
BOUNDARY = ("execution_id", "step", "node", "variant", "attempt", "entry_checkpoint_id",
            "status", "started_at", "duration_ms", "error", "usage")
AUDIT = ("execution_id", "kind", "node", "detail", "at")
OUTBOX = ("event_id", "aggregate_type", "aggregate_id", "kind", "batch_id", "node", "payload",
          "status", "attempts", "available_at", "created_at")
UNDO = ("execution_id", "entry_checkpoint_id", "node", "step", "seq", "fn", "args", "key",
        "status", "attempts", "created_at")
BLOB_REFRESH_SECONDS = 600.0  # schema.BLOB_REFRESH_SECONDS when this revision was made


def _insert(table: str, cols: tuple[str, ...], source: str, extra: str = "",
            extra_value: str = "") -> str:
    names = ", ".join(cols) + (f", {extra}" if extra else "")
    values = ", ".join(f"r.{c}" for c in cols) + (f", {extra_value}" if extra else "")
    return f"INSERT INTO {table} ({names}) SELECT {values} FROM {source} r"


def _function() -> str:
    sets = ",\n      ".join(f"{c} = CASE WHEN s ? '{c}' THEN r.{c} ELSE e.{c} END"
                           for c in SETTABLE)
    return f"""
CREATE OR REPLACE FUNCTION wtb_commit_change(c jsonb)
RETURNS TABLE (out_version integer, out_control text, out_head bigint)
LANGUAGE plpgsql AS $fn$
DECLARE
  s jsonb := c->'set';
  fence_version integer := (c->>'fence_version')::integer;
  fence_owner text := c->>'fence_owner';
  cid bigint;
BEGIN
  IF c ? 'checkpoint' THEN
    cid := nextval(pg_get_serial_sequence('checkpoints', 'id'));
  END IF;
  IF c ? 'new' THEN
    {_insert("executions", EXECUTION, "jsonb_populate_record(NULL::executions, c->'new')",
             "head_checkpoint_id", "cid")};
    out_version := (c->'new'->>'version')::integer;
    out_control := NULL;
    out_head := cid;
  ELSE
    -- The fence: a version and/or a lease this process must still hold. A failed one
    -- raises (the caller tells it by this message) and aborts the transaction.
    UPDATE executions e SET
      {sets},
      head_checkpoint_id = CASE WHEN cid IS NOT NULL THEN cid
                                WHEN s ? 'head_checkpoint_id' THEN r.head_checkpoint_id
                                ELSE e.head_checkpoint_id END,
      version = CASE WHEN (fence_version IS NULL OR e.version = fence_version)
                      AND (fence_owner IS NULL OR (e.lease_owner = fence_owner
                                                   AND e.status = 'running'))
                THEN e.version + 1
                ELSE CAST('wtb fence failed ' || e.id AS integer) END
    FROM jsonb_populate_record(NULL::executions, s) r
    WHERE e.id = c->>'id'
    RETURNING e.version, e.control, e.head_checkpoint_id
    INTO out_version, out_control, out_head;
    IF NOT FOUND THEN
      RAISE EXCEPTION 'wtb execution not found: %', c->>'id' USING ERRCODE = 'no_data_found';
    END IF;
  END IF;
  IF c ? 'blobs' THEN
    {_insert("blobs", BLOB, "jsonb_populate_recordset(NULL::blobs, c->'blobs')")}
    ON CONFLICT (hash) DO UPDATE SET created_at = excluded.created_at
    WHERE blobs.created_at < excluded.created_at - {BLOB_REFRESH_SECONDS!r};
  END IF;
  IF cid IS NOT NULL THEN
    {_insert("checkpoints", CHECKPOINT,
             "jsonb_populate_record(NULL::checkpoints, c->'checkpoint')", "id", "cid")};
  END IF;
  IF c ? 'boundary' THEN
    {_insert("node_boundaries", BOUNDARY,
             "jsonb_populate_record(NULL::node_boundaries, c->'boundary')",
             "exit_checkpoint_id", "cid")};
  END IF;
  IF c ? 'undo' THEN
    {_insert("compensations", UNDO, "jsonb_populate_recordset(NULL::compensations, c->'undo')",
             "checkpoint_id", "cid")};
  END IF;
  -- An event names its checkpoint, or takes the new one (NULL without one).
  {_insert("audit_log", AUDIT, "jsonb_populate_recordset(NULL::audit_log, c->'audits')",
           "checkpoint_id", "COALESCE(r.checkpoint_id, cid)")};
  {_insert("outbox", OUTBOX, "jsonb_populate_recordset(NULL::outbox, c->'outbox')",
           "checkpoint_id", "COALESCE(r.checkpoint_id, cid)")};
  RETURN NEXT;
END
$fn$"""


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_function())


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS wtb_commit_change(jsonb)")
