from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query
from fastapi.responses import Response

from server.accounts import service as accounts
from server.analysis import service
from server.challenges import service as challenges
from server.deps import CurrentUser, SessionDep

router = APIRouter(tags=["analysis"])


@router.get("/challenges/{challenge}/analysis")
def analysis(challenge: str, user: CurrentUser, session: SessionDep) -> dict[str, Any]:
    """Organizers only: rank uncertainty, ranking robustness, significance map per phase
    and the consensus over phases."""
    row = challenges.get_challenge(session, challenge)
    accounts.require_organizer(session, user, row.id)
    return service.as_json(service.analyse(session, row))


@router.get(
    "/challenges/{challenge}/analysis/report",
    response_class=Response,
    responses={200: {"content": {"application/zip": {}}, "description": "the report"}},
)
def analysis_report(challenge: str, user: CurrentUser, session: SessionDep) -> Response:
    """Organizers only: a zip of the report (self-contained HTML and PDF), every figure as
    PNG and SVG and its data as CSV."""
    row = challenges.get_challenge(session, challenge)
    accounts.require_organizer(session, user, row.id)
    # matplotlib only where a report is drawn: it would add 30 MB to every server worker.
    from server.analysis import report

    data = report.report_zip(service.analyse(session, row))
    return Response(
        content=data,
        media_type="application/zip",
        headers={"Content-Disposition": f'attachment; filename="{row.slug}-report.zip"'},
    )


@router.get("/challenges/{challenge}/phases/{phase}/analysis/shake-up")
def shake_up(
    challenge: str,
    phase: str,
    user: CurrentUser,
    session: SessionDep,
    public_fraction: float | None = Query(
        None,
        gt=0.0,
        lt=1.0,
        description="what-if: this share of public cases instead of the phase's own split",
    ),
) -> dict[str, Any]:
    """Organizers only: per team, the bootstrap probability that its rank differs between
    the public and the private part of the test set (the phase's private_fraction split)."""
    row, ph = challenges.get_phase(session, challenge, phase)
    accounts.require_organizer(session, user, row.id)
    return service.shake_up(session, ph, public_fraction)
