"""Workspace trees on checkpoints, workspace config on executions, compensations.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.add_column("executions", sa.Column("workspace", sa.Text()))
    op.add_column("checkpoints", sa.Column("workspace_tree", sa.String(32)))
    op.create_table(
        "compensations",
        sa.Column("id", Id, autoincrement=True, nullable=False),
        sa.Column("execution_id", sa.String(32), nullable=False),
        sa.Column("entry_checkpoint_id", Id),
        sa.Column("checkpoint_id", Id),
        sa.Column("node", sa.String(100), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("fn", sa.String(300), nullable=False),
        sa.Column("args", sa.Text(), nullable=False),
        sa.Column("key", sa.String(32), nullable=False),
        sa.Column("status", sa.String(8), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text()),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("started_at", sa.Float()),
        sa.Column("done_at", sa.Float()),
        sa.ForeignKeyConstraint(["execution_id"], ["executions.id"],
                                name="fk_compensations_execution_id_executions"),
        sa.PrimaryKeyConstraint("id", name="pk_compensations"),
        sa.UniqueConstraint("key", name="uq_compensations_key"),
    )
    op.create_index("ix_compensations_execution_id", "compensations", ["execution_id"])


def downgrade() -> None:
    op.drop_table("compensations")
    with op.batch_alter_table("checkpoints") as batch:
        batch.drop_column("workspace_tree")
    with op.batch_alter_table("executions") as batch:
        batch.drop_column("workspace")
