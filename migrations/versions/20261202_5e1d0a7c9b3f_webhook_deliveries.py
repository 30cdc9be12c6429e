"""webhook deliveries: refuse a replayed push

Revision ID: 5e1d0a7c9b3f
Revises: c63046f209f9
Create Date: 2026-12-02 09:00:00.000000
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


import server.db

revision: str = '5e1d0a7c9b3f'
down_revision: str | None = 'c63046f209f9'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('webhook_deliveries',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('link_id', sa.Integer(), nullable=False),
    sa.Column('delivery_id', sa.String(length=100), nullable=True),
    sa.Column('body_sha256', sa.String(length=64), nullable=False),
    sa.Column('submission_id', sa.Integer(), nullable=True),
    sa.Column('received_at', server.db.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['link_id'], ['repository_links.id'], name=op.f('fk_webhook_deliveries_link_id_repository_links'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['submission_id'], ['submissions.id'], name=op.f('fk_webhook_deliveries_submission_id_submissions'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_webhook_deliveries')),
    sa.UniqueConstraint('link_id', 'body_sha256', name=op.f('uq_webhook_deliveries_link_id_body_sha256')),
    sa.UniqueConstraint('link_id', 'delivery_id', name=op.f('uq_webhook_deliveries_link_id_delivery_id'))
    )


def downgrade() -> None:
    op.drop_table('webhook_deliveries')
