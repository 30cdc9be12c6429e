from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response

from server.accounts import service as accounts
from server.challenges import repository as challenges_repo
from server.challenges import service as challenges
from server.deps import CurrentUser, SessionDep
from server.leaderboards import boards, service

router = APIRouter(tags=["leaderboards"])

CACHED = {304: {"description": "the board has not changed since the ETag given in If-None-Match"}}


def _serve(request: Request, etag: str, body: str) -> Response:
    """The stored JSON as is, or 304 when the client holds this version already."""
    tag = f'"{etag}"'
    headers = {"ETag": tag, "Cache-Control": "private, no-cache"}
    sent = request.headers.get("if-none-match", "")
    if tag in {t.strip().removeprefix("W/") for t in sent.split(",")} or sent.strip() == "*":
        return Response(status_code=304, headers=headers)
    return Response(body, media_type="application/json", headers=headers)


@router.get(
    "/challenges/{challenge}/phases/{phase}/leaderboard",
    response_model=dict[str, Any],
    responses=CACHED,  # type: ignore[arg-type]
)
def leaderboard(
    challenge: str, phase: str, request: Request, user: CurrentUser, session: SessionDep
) -> Response:
    """Served from the stored board (recomputed when a result changes); send the ETag back
    in If-None-Match to get a 304 while it is unchanged."""
    _, ph = challenges.get_phase(session, challenge, phase)
    stored = boards.current(session, ph)
    return _serve(request, stored.etag, stored.leaderboard)


@router.get(
    "/challenges/{challenge}/phases/{phase}/leaderboard/statistics",
    response_model=dict[str, Any],
    responses=CACHED,  # type: ignore[arg-type]
)
def leaderboard_statistics(
    challenge: str, phase: str, request: Request, user: CurrentUser, session: SessionDep
) -> Response:
    """All-pairs DeLong p-values and ROC points with CI bands, for plots."""
    _, ph = challenges.get_phase(session, challenge, phase)
    stored = boards.current(session, ph)
    return _serve(request, stored.etag, stored.statistics)


@router.post("/challenges/{challenge}/phases/{phase}/reevaluate")
def reevaluate(
    challenge: str, phase: str, user: CurrentUser, session: SessionDep
) -> dict[str, Any]:
    """Re-score submissions lacking a current result, without re-running algorithms."""
    row, ph = challenges.get_phase(session, challenge, phase)
    accounts.require_organizer(session, user, row.id)
    queued = service.reevaluate(session, ph)
    for task_phase in challenges_repo.task_phases(session, ph.id):  # a multi-task phase's
        queued += service.reevaluate(session, task_phase)
    return {"queued": queued}
