"""A phase's board generation: bumped in every transaction that changes what its board
shows, so the stored board (server.leaderboards.boards) knows it is out of date. Its own
module so that writers of results and submissions need not import the board builder."""

from __future__ import annotations

from sqlalchemy import update
from sqlalchemy.orm import Session

from server.challenges.models import Phase


def changed(session: Session, phase_id: int) -> None:
    """What the phase's board shows changes with this transaction: its stored board is out
    of date once it commits."""
    session.execute(
        update(Phase)
        .where(Phase.id == phase_id)
        .values(board_generation=Phase.board_generation + 1)
        .execution_options(synchronize_session=False)
    )
