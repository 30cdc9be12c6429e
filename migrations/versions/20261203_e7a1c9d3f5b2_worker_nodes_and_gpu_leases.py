"""worker nodes, GPU leases per node, and the node running each job

Revision ID: e7a1c9d3f5b2
Revises: e7a1c3b5d9f2
Create Date: 2026-12-03 12:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import server.db

revision: str = "e7a1c9d3f5b2"
down_revision: str | None = "e7a1c3b5d9f2"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "nodes",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("queues", sa.JSON(), nullable=False),
        sa.Column("devices", sa.JSON(), nullable=False),
        sa.Column("free_disk_bytes", sa.BigInteger(), nullable=False),
        sa.Column("cache_bytes", sa.BigInteger(), nullable=False),
        sa.Column("heartbeat_at", server.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("started_at", server.db.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_nodes")),
        sa.UniqueConstraint("name", name=op.f("uq_nodes_name")),
    )
    op.create_table(
        "gpu_leases",
        sa.Column("node", sa.String(length=200), nullable=False),
        sa.Column("device", sa.String(length=64), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("leased_at", server.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("heartbeat_at", server.db.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("node", "device", name=op.f("pk_gpu_leases")),
    )
    op.create_index(op.f("ix_gpu_leases_job_id"), "gpu_leases", ["job_id"], unique=False)
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("node", sa.String(length=200), nullable=True))
        batch.create_index(batch.f("ix_jobs_node"), ["node"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_index(batch.f("ix_jobs_node"))
        batch.drop_column("node")
    op.drop_index(op.f("ix_gpu_leases_job_id"), table_name="gpu_leases")
    op.drop_table("gpu_leases")
    op.drop_table("nodes")
