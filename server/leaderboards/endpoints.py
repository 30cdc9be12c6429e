from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from server.accounts import service as accounts
from server.challenges import service as challenges
from server.deps import CurrentUser, SessionDep
from server.leaderboards import service

router = APIRouter(tags=["leaderboards"])


@router.get("/challenges/{challenge}/phases/{phase}/leaderboard")
def leaderboard(
    challenge: str, phase: str, user: CurrentUser, session: SessionDep
) -> dict[str, Any]:
    _, ph = challenges.get_phase(session, challenge, phase)
    return service.leaderboard(session, ph)


@router.get("/challenges/{challenge}/phases/{phase}/leaderboard/statistics")
def leaderboard_statistics(
    challenge: str, phase: str, user: CurrentUser, session: SessionDep
) -> dict[str, Any]:
    """All-pairs DeLong p-values and ROC points with CI bands, for plots."""
    _, ph = challenges.get_phase(session, challenge, phase)
    return service.statistics(session, ph)


@router.post("/challenges/{challenge}/phases/{phase}/reevaluate")
def reevaluate(
    challenge: str, phase: str, user: CurrentUser, session: SessionDep
) -> dict[str, Any]:
    """Re-score submissions lacking a current result, without re-running algorithms."""
    row, ph = challenges.get_phase(session, challenge, phase)
    accounts.require_organizer(session, user, row.id)
    return {"queued": service.reevaluate(session, ph)}
