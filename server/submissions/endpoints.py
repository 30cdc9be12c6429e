from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from sqlalchemy.orm import Session

from server.challenges import service as challenges
from server.challenges.models import Challenge, Phase
from server.db import utcnow
from server.deps import CurrentUser, SessionDep, SettingsDep
from server.jobs import queue
from server.jobs import service as jobs
from server.params import PathId
from server.submissions import repository, rules, service
from server.submissions.models import Submission
from server.submissions.schemas import (
    JobSummary,
    SubmissionCreate,
    SubmissionPrecheck,
    SubmissionRead,
    TaskRun,
    TransitionRead,
)
from server.teams import repository as teams_repo
from server.teams.models import Team

router = APIRouter(tags=["submissions"])


def view(
    session: Session, submission: Submission, *, detail: bool = False, operator: bool = False
) -> SubmissionRead:
    """operator: the viewer organizes the challenge (or is an admin) and reads the
    operator-only failure detail."""
    phase = session.get(Phase, submission.phase_id)
    assert phase is not None
    challenge = session.get(Challenge, phase.challenge_id)
    team = session.get(Team, submission.team_id)
    assert challenge is not None and team is not None
    computed = {
        "challenge",
        "phase",
        "team",
        "transitions",
        "jobs",
        "queue",
        "operator_detail",
        "tasks",
    }
    data: dict[str, Any] = {
        c: getattr(submission, c) for c in SubmissionRead.model_fields if c not in computed
    }
    data.update(challenge=challenge.slug, phase=phase.slug, team=team.name)
    if operator:
        data["operator_detail"] = submission.operator_detail
    if detail:
        data["transitions"] = [
            TransitionRead.model_validate(t) for t in repository.transitions(session, submission.id)
        ]
        data["jobs"] = [JobSummary(**j) for j in jobs.summary(session, submission.id)]
        data["queue"] = queue.position(session, submission.id)
        data["tasks"] = [
            TaskRun(
                task=phase_of.task_slug or phase_of.slug,
                submission_id=child.id,
                status=child.status,
                failure_code=child.failure_code,
                failure_message=child.failure_message,
                jobs=[JobSummary(**j) for j in jobs.summary(session, child.id)],
            )
            for child in repository.children(session, submission.id)
            if (phase_of := session.get(Phase, child.phase_id)) is not None
        ]
    return SubmissionRead(**data)


@router.post(
    "/challenges/{challenge}/phases/{phase}/submissions",
    response_model=SubmissionRead,
    status_code=201,
)
def create_submission(
    challenge: str,
    phase: str,
    body: SubmissionCreate,
    user: CurrentUser,
    session: SessionDep,
    settings: SettingsDep,
) -> SubmissionRead:
    submission = service.create(session, settings, user, challenge, phase, body)
    return view(session, submission, detail=True)


@router.post("/challenges/{challenge}/phases/{phase}/submissions/precheck")
def precheck_submission(
    challenge: str, phase: str, body: SubmissionPrecheck, user: CurrentUser, session: SessionDep
) -> dict[str, Any]:
    """The refusals a submission would meet, asked before its upload; changes nothing."""
    service.precheck(session, user, challenge, phase, body)
    return {"ok": True}


@router.get(
    "/challenges/{challenge}/phases/{phase}/submissions", response_model=list[SubmissionRead]
)
def list_submissions(
    challenge: str, phase: str, user: CurrentUser, session: SessionDep
) -> list[SubmissionRead]:
    row, ph = challenges.get_phase(session, challenge, phase)
    rows = service.list_visible(session, user, row, ph)
    operator = bool(rows) and service.sees_operator_detail(session, user, rows[0])
    return [view(session, s, operator=operator) for s in rows]


@router.get("/challenges/{challenge}/phases/{phase}/rules")
def phase_rules(
    challenge: str, phase: str, user: CurrentUser, session: SessionDep
) -> dict[str, Any]:
    row, ph = challenges.get_phase(session, challenge, phase)
    team = teams_repo.team_of(session, row.id, user.id)
    return {
        "rules": ph.spec.rules.model_dump(),
        "text": rules.describe(ph),
        "opens_at": ph.spec.opens_at,
        "closes_at": ph.spec.closes_at,
        # The caller's team, counted as the rules count (charged submissions only).
        "usage": rules.usage(session, ph, team, utcnow()),
    }


@router.get("/challenges/{challenge}/phases/{phase}/usage")
def phase_usage(
    challenge: str, phase: str, user: CurrentUser, session: SessionDep
) -> dict[str, Any]:
    """Your team's use of the phase's limits: used, whether you may submit now, and when next."""
    from server.db import utcnow
    from server.teams import repository as teams

    row, ph = challenges.get_phase(session, challenge, phase)
    return rules.usage(session, ph, teams.team_of(session, row.id, user.id), utcnow())


@router.get("/submissions/{submission_id}", response_model=SubmissionRead)
def get_submission(submission_id: PathId, user: CurrentUser, session: SessionDep) -> SubmissionRead:
    sub = service.get_visible(session, user, submission_id)
    return view(
        session, sub, detail=True, operator=service.sees_operator_detail(session, user, sub)
    )


@router.post("/submissions/{submission_id}/cancel", response_model=SubmissionRead)
def cancel_submission(
    submission_id: PathId, user: CurrentUser, session: SessionDep
) -> SubmissionRead:
    return view(session, service.cancel(session, user, submission_id), detail=True)


@router.post("/submissions/{submission_id}/renounce", response_model=SubmissionRead)
def renounce_submission(
    submission_id: PathId, user: CurrentUser, session: SessionDep
) -> SubmissionRead:
    return view(session, service.renounce(session, user, submission_id), detail=True)
