"""organizer events

Revision ID: a8c4e2f1b7d9
Revises: 662735a0e4d7
Create Date: 2026-12-02 16:50:00.000000
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import server.db

revision: str = 'a8c4e2f1b7d9'
down_revision: str | None = '662735a0e4d7'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('organizer_events',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('challenge_id', sa.Integer(), nullable=False),
    sa.Column('phase_id', sa.Integer(), nullable=True),
    sa.Column('submission_id', sa.Integer(), nullable=True),
    sa.Column('kind', sa.String(length=64), nullable=False),
    sa.Column('message', sa.Text(), nullable=False),
    sa.Column('created_at', server.db.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['challenge_id'], ['challenges.id'], name=op.f('fk_organizer_events_challenge_id_challenges'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['phase_id'], ['phases.id'], name=op.f('fk_organizer_events_phase_id_phases'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['submission_id'], ['submissions.id'], name=op.f('fk_organizer_events_submission_id_submissions'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_organizer_events'))
    )
    with op.batch_alter_table('organizer_events', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_organizer_events_challenge_id'), ['challenge_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('organizer_events', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_organizer_events_challenge_id'))
    op.drop_table('organizer_events')
