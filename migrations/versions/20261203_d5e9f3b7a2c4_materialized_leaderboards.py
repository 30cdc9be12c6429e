"""materialized leaderboards: one stored board per phase and rule key, and the phase's
board generation that says when it is out of date

Revision ID: d5e9f3b7a2c4
Revises: c4d8e2a6f1b3
Create Date: 2026-12-03 08:00:00
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import server.db

revision: str = "d5e9f3b7a2c4"
down_revision: str | None = "c4d8e2a6f1b3"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("phases") as batch:
        batch.add_column(
            sa.Column("board_generation", sa.Integer(), nullable=False, server_default="0")
        )
    op.create_table(
        "leaderboard_boards",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("phase_id", sa.Integer(), nullable=False),
        sa.Column("rule_key", sa.String(length=64), nullable=False),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column("etag", sa.String(length=64), nullable=False),
        sa.Column("leaderboard_json", sa.Text(), nullable=False),
        sa.Column("statistics_json", sa.Text(), nullable=False),
        sa.Column("computed_at", server.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["phase_id"],
            ["phases.id"],
            name=op.f("fk_leaderboard_boards_phase_id_phases"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_leaderboard_boards")),
        sa.UniqueConstraint(
            "phase_id", "rule_key", name=op.f("uq_leaderboard_boards_phase_id_rule_key")
        ),
    )
    op.create_index(
        op.f("ix_leaderboard_boards_phase_id"), "leaderboard_boards", ["phase_id"], unique=False
    )


def downgrade() -> None:
    op.drop_table("leaderboard_boards")
    with op.batch_alter_table("phases") as batch:
        batch.drop_column("board_generation")
