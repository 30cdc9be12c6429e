"""operator-only failure detail on jobs and submissions

Revision ID: b3a7c1d2e4f5
Revises: a8c4e2f1b7d9
Create Date: 2026-12-02 17:00:00
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "b3a7c1d2e4f5"
down_revision: str | None = "a8c4e2f1b7d9"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("operator_detail", sa.Text(), nullable=True))
    op.add_column("submissions", sa.Column("operator_detail", sa.Text(), nullable=True))


def downgrade() -> None:
    op.drop_column("submissions", "operator_detail")
    op.drop_column("jobs", "operator_detail")
