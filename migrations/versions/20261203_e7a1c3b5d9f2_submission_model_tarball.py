"""an algorithm submission may carry a model tarball, mounted at /opt/ml/model

Revision ID: e7a1c3b5d9f2
Revises: d5e9f3b7a2c4
Create Date: 2026-12-03 12:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "e7a1c3b5d9f2"
down_revision: str | None = "d5e9f3b7a2c4"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("submissions") as batch:
        batch.add_column(sa.Column("model_digest", sa.String(71), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("submissions") as batch:
        batch.drop_column("model_digest")
