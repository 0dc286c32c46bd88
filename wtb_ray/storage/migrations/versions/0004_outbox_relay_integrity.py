"""Outbox relay and integrity checker: claims, applied events, relay lease, batch webhooks,
integrity reports, damaged checkpoints; the event stream's outbox indexes.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
PENDING = sa.text("status = 'pending'")


def upgrade() -> None:
    op.add_column("outbox", sa.Column("claimed_by", sa.String(200)))
    op.create_index("ix_outbox_pending_aggregate", "outbox",
                    ["aggregate_type", "aggregate_id", "id"],
                    sqlite_where=PENDING, postgresql_where=PENDING)
    op.create_index("ix_outbox_batch_id_id", "outbox", ["batch_id", "id"])
    op.create_index("ix_outbox_aggregate_type_aggregate_id_id", "outbox",
                    ["aggregate_type", "aggregate_id", "id"])

    op.create_table(
        "outbox_applied",
        sa.Column("event_id", sa.String(32), nullable=False),
        sa.Column("consumer", sa.String(40), nullable=False),
        sa.Column("applied_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("event_id", "consumer", name="pk_outbox_applied"),
    )
    op.create_table(
        "relay_leases",
        sa.Column("name", sa.String(40), nullable=False),
        sa.Column("owner", sa.String(200), nullable=False),
        sa.Column("expires_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_relay_leases"),
    )
    op.create_table(
        "batch_webhooks",
        sa.Column("batch_id", sa.String(32), nullable=False),
        sa.Column("url", sa.String(2000), nullable=False),
        sa.Column("secret", sa.String(500)),
        sa.Column("events", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(["batch_id"], ["batches.id"],
                                name="fk_batch_webhooks_batch_id_batches"),
        sa.PrimaryKeyConstraint("batch_id", name="pk_batch_webhooks"),
    )
    op.create_table(
        "integrity_reports",
        sa.Column("id", Id, autoincrement=True, nullable=False),
        sa.Column("started_at", sa.Float(), nullable=False),
        sa.Column("finished_at", sa.Float(), nullable=False),
        sa.Column("trigger", sa.String(16), nullable=False),
        sa.Column("repair", sa.Boolean(), nullable=False),
        sa.Column("found", sa.Integer(), nullable=False),
        sa.Column("repaired", sa.Integer(), nullable=False),
        sa.Column("report", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_integrity_reports"),
        sqlite_autoincrement=True,
    )
    op.create_table(
        "damaged_checkpoints",
        sa.Column("checkpoint_id", Id, autoincrement=False, nullable=False),
        sa.Column("execution_id", sa.String(32), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("found_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("checkpoint_id", name="pk_damaged_checkpoints"),
    )


def downgrade() -> None:
    for table in ("damaged_checkpoints", "integrity_reports", "batch_webhooks", "relay_leases",
                  "outbox_applied"):
        op.drop_table(table)
    for index in ("ix_outbox_aggregate_type_aggregate_id_id", "ix_outbox_batch_id_id",
                  "ix_outbox_pending_aggregate"):
        op.drop_index(index, table_name="outbox")
    with op.batch_alter_table("outbox") as batch:
        batch.drop_column("claimed_by")
