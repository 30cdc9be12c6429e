from __future__ import annotations

from typing import Any

from fastapi import APIRouter

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
