"""multi-task phases: a task runs as a phase of its own under its multi-task phase
(phases.parent_id, phases.task_slug), and a submission to a multi-task phase runs as one
child submission per task (submissions.parent_id)

Revision ID: e7f1a3c5b9d2
Revises: d5e9f3b7a2c4
Create Date: 2026-12-03 12:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "e7f1a3c5b9d2"
down_revision: str | None = "d5e9f3b7a2c4"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("phases") as batch:
        batch.add_column(sa.Column("parent_id", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("task_slug", sa.String(length=63), nullable=True))
        batch.create_foreign_key(
            op.f("fk_phases_parent_id_phases"),
            "phases",
            ["parent_id"],
            ["id"],
            ondelete="CASCADE",
        )
        batch.create_index(op.f("ix_phases_parent_id"), ["parent_id"], unique=False)
    with op.batch_alter_table("submissions") as batch:
        batch.add_column(sa.Column("parent_id", sa.Integer(), nullable=True))
        batch.create_foreign_key(
            op.f("fk_submissions_parent_id_submissions"),
            "submissions",
            ["parent_id"],
            ["id"],
            ondelete="CASCADE",
        )
        batch.create_index(op.f("ix_submissions_parent_id"), ["parent_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("submissions") as batch:
        batch.drop_index(op.f("ix_submissions_parent_id"))
        batch.drop_constraint(op.f("fk_submissions_parent_id_submissions"), type_="foreignkey")
        batch.drop_column("parent_id")
    with op.batch_alter_table("phases") as batch:
        batch.drop_index(op.f("ix_phases_parent_id"))
        batch.drop_constraint(op.f("fk_phases_parent_id_phases"), type_="foreignkey")
        batch.drop_column("task_slug")
        batch.drop_column("parent_id")
