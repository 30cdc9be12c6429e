"""a submission's image reference by digest in the installation's registry

Revision ID: c8e2a4f6b1d3
Revises: b4d6f8a0c2e4
Create Date: 2026-12-04 18:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "c8e2a4f6b1d3"
down_revision: str | None = "b4d6f8a0c2e4"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # T3's training and inference-base images are referenced from the build job's result
    # (like their ids); only the image jobs run, the submission's own, needs a column.
    with op.batch_alter_table("submissions") as batch:
        batch.add_column(sa.Column("image_ref", sa.String(500), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("submissions") as batch:
        batch.drop_column("image_ref")
