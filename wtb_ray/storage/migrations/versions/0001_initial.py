"""Initial schema: executions, checkpoints, blobs, node boundaries, audit log, outbox.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "executions",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("workflow_ref", sa.String(300)),
        sa.Column("workflow_name", sa.String(200), nullable=False),
        sa.Column("workflow_version", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("variants", sa.Text(), nullable=False),
        sa.Column("breakpoints", sa.Text(), nullable=False),
        sa.Column("head_checkpoint_id", Id),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("control", sa.String(8)),
        sa.Column("error", sa.Text()),
        sa.Column("parent_execution_id", sa.String(32)),
        sa.Column("forked_from_checkpoint_id", Id),
        sa.Column("batch_id", sa.String(32)),
        sa.Column("lease_owner", sa.String(200)),
        sa.Column("lease_expires_at", sa.Float()),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("labels", sa.Text(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_executions"),
    )
    op.create_index("ix_executions_status", "executions", ["status"])
    op.create_index("ix_executions_batch_id", "executions", ["batch_id"])
    op.create_index("ix_executions_parent_execution_id", "executions", ["parent_execution_id"])

    op.create_table(
        "checkpoints",
        sa.Column("id", Id, autoincrement=True, nullable=False),
        sa.Column("execution_id", sa.String(32), nullable=False),
        sa.Column("parent_id", Id),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("node", sa.String(100)),
        sa.Column("next_node", sa.String(100)),
        sa.Column("is_full", sa.Boolean(), nullable=False),
        sa.Column("manifest", sa.Text(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(["execution_id"], ["executions.id"],
                                name="fk_checkpoints_execution_id_executions"),
        sa.PrimaryKeyConstraint("id", name="pk_checkpoints"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_checkpoints_execution_id", "checkpoints", ["execution_id"])

    op.create_table(
        "blobs",
        sa.Column("hash", sa.String(32), nullable=False),
        sa.Column("codec", sa.String(1), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("hash", name="pk_blobs"),
    )

    op.create_table(
        "node_boundaries",
        sa.Column("id", Id, autoincrement=True, nullable=False),
        sa.Column("execution_id", sa.String(32), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("node", sa.String(100), nullable=False),
        sa.Column("variant", sa.String(100), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("entry_checkpoint_id", Id),
        sa.Column("exit_checkpoint_id", Id),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("started_at", sa.Float(), nullable=False),
        sa.Column("duration_ms", sa.Float(), nullable=False),
        sa.Column("error", sa.Text()),
        sa.Column("usage", sa.Text()),
        sa.ForeignKeyConstraint(["execution_id"], ["executions.id"],
                                name="fk_node_boundaries_execution_id_executions"),
        sa.PrimaryKeyConstraint("id", name="pk_node_boundaries"),
    )
    op.create_index("ix_node_boundaries_execution_id", "node_boundaries", ["execution_id"])

    op.create_table(
        "audit_log",
        sa.Column("id", Id, autoincrement=True, nullable=False),
        sa.Column("execution_id", sa.String(32), nullable=False),
        sa.Column("kind", sa.String(40), nullable=False),
        sa.Column("node", sa.String(100)),
        sa.Column("checkpoint_id", Id),
        sa.Column("detail", sa.Text()),
        sa.Column("at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_audit_log"),
    )
    op.create_index("ix_audit_log_execution_id", "audit_log", ["execution_id"])

    op.create_table(
        "outbox",
        sa.Column("id", Id, autoincrement=True, nullable=False),
        sa.Column("event_id", sa.String(32), nullable=False),
        sa.Column("aggregate_type", sa.String(16), nullable=False),
        sa.Column("aggregate_id", sa.String(32), nullable=False),
        sa.Column("kind", sa.String(40), nullable=False),
        sa.Column("batch_id", sa.String(32)),
        sa.Column("node", sa.String(100)),
        sa.Column("checkpoint_id", Id),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("status", sa.String(12), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("available_at", sa.Float(), nullable=False),
        sa.Column("last_error", sa.Text()),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("delivered_at", sa.Float()),
        sa.PrimaryKeyConstraint("id", name="pk_outbox"),
        sa.UniqueConstraint("event_id", name="uq_outbox_event_id"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_outbox_pending", "outbox", ["id"],
                    sqlite_where=sa.text("status = 'pending'"),
                    postgresql_where=sa.text("status = 'pending'"))


def downgrade() -> None:
    for table in ("outbox", "audit_log", "node_boundaries", "blobs", "checkpoints", "executions"):
        op.drop_table(table)
