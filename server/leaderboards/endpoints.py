from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response

from server.accounts import service as accounts
from server.challenges import repository as challenges_repo
from server.challenges import service as challenges
from server.db import session_scope
from server.deps import CurrentUser, SessionDep, bearer_token
from server.leaderboards import boards, lane, service, tasks

router = APIRouter(tags=["leaderboards"])

CACHED = {304: {"description": "the board has not changed since the ETag given in If-None-Match"}}
PHASE_BOARD = {
    **CACHED,
    409: {
        "description": "a multi-task phase has no board of its own: the problem document names "
        "each task's board (`tasks`: slug -> path) and the consensus board (`consensus`)"
    },
}


def _serve(request: Request, etag: str, body: bytes) -> Response:
    """The stored JSON as is, or 304 when the client holds this version already."""
    tag = f'"{etag}"'
    headers = {"ETag": tag, "Cache-Control": lane.CACHE_CONTROL}
    if lane.not_modified(tag, request.headers.get("if-none-match", "")):
        return Response(status_code=304, headers=headers)
    return Response(body, media_type="application/json", headers=headers)


def _board(request: Request, challenge: str, phase: str) -> boards.Stored:
    """The phase's stored board for a signed-in caller, by the full path: a board this
    process holds and the database says is current was served by `lane.HeldBoards` before
    the request got here, so this path is taken by the first look after a change, and by
    requests that fail (401 before 404, as every endpoint). A multi-task phase answers 409
    naming its task boards and its consensus board (`tasks.refuse_phase_board`)."""
    settings = request.app.state.settings
    with session_scope(settings, write=False) as session:
        accounts.authenticate(session, bearer_token(request))
        _, ph = challenges.get_phase(session, challenge, phase)
        tasks.refuse_phase_board(ph, request.url.path.rsplit("/leaderboard", 1)[0])
        return boards.current(session, ph)


# Sync endpoints without dependencies: one hop to the threadpool per request, and the
# authentication is done in `_board` (the routes are no less protected than CurrentUser's).
@router.get(
    "/challenges/{challenge}/phases/{phase}/leaderboard",
    response_model=dict[str, Any],
    responses=PHASE_BOARD,  # type: ignore[arg-type]
)
def leaderboard(challenge: str, phase: str, request: Request) -> Response:
    """Served from the stored board (recomputed when a result changes); send the ETag back
    in If-None-Match to get a 304 while it is unchanged. A multi-task phase has no board of
    its own: 409, the problem document naming each task's board (`tasks`: slug -> path) and
    the consensus board (`consensus`: path)."""
    stored = _board(request, challenge, phase)
    return _serve(request, stored.etag, stored.leaderboard_bytes)


@router.get(
    "/challenges/{challenge}/phases/{phase}/leaderboard/statistics",
    response_model=dict[str, Any],
    responses=PHASE_BOARD,  # type: ignore[arg-type]
)
def leaderboard_statistics(challenge: str, phase: str, request: Request) -> Response:
    """All-pairs DeLong p-values and ROC points with CI bands, for plots."""
    stored = _board(request, challenge, phase)
    return _serve(request, stored.etag, stored.statistics_bytes)


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
