from __future__ import annotations

from datetime import datetime

from sqlalchemy import Select, func, or_, select
from sqlalchemy.orm import Session

from server.submissions.models import Penalty, Submission, SubmissionTransition
from server.submissions.states import ACTIVE, FINAL


def charged(phase_id: int, team_id: int) -> Select[Submission]:
    return select(Submission).where(
        Submission.phase_id == phase_id,
        Submission.team_id == team_id,
        Submission.charged.is_(True),
    )


def charged_since(
    session: Session, phase_id: int, team_id: int, since: datetime
) -> list[Submission]:
    stmt = charged(phase_id, team_id).where(Submission.created_at >= since)
    return list(session.scalars(stmt.order_by(Submission.created_at)))


def last_charged(session: Session, phase_id: int, team_id: int) -> Submission | None:
    stmt = charged(phase_id, team_id).order_by(Submission.created_at.desc()).limit(1)
    last: Submission | None = session.scalar(stmt)
    return last


def count_standing(session: Session, phase_id: int, team_id: int) -> int:
    """Charged submissions not renounced: what a single-shot phase allows one of."""
    stmt = (
        select(func.count())
        .select_from(Submission)
        .where(
            Submission.phase_id == phase_id,
            Submission.team_id == team_id,
            Submission.charged.is_(True),
            Submission.renounced.is_(False),
        )
    )
    return int(session.scalar(stmt) or 0)


def active_penalty(session: Session, phase_id: int, team_id: int, now: datetime) -> Penalty | None:
    stmt = (
        select(Penalty)
        .where(Penalty.phase_id == phase_id, Penalty.team_id == team_id, Penalty.until > now)
        .order_by(Penalty.until.desc())
        .limit(1)
    )
    return session.scalar(stmt)


def list_for_phase(session: Session, phase_id: int, team_id: int | None = None) -> list[Submission]:
    stmt = select(Submission).where(Submission.phase_id == phase_id)
    if team_id is not None:
        stmt = stmt.where(Submission.team_id == team_id)
    return list(session.scalars(stmt.order_by(Submission.id)))


def transitions(session: Session, submission_id: int) -> list[SubmissionTransition]:
    stmt = (
        select(SubmissionTransition)
        .where(SubmissionTransition.submission_id == submission_id)
        .order_by(SubmissionTransition.id)
    )
    return list(session.scalars(stmt))


def count_binding(session: Session, team_id: int) -> int:
    """A team's submissions that tie its members to it: charged ones, and those still
    running (which may yet be charged)."""
    stmt = (
        select(func.count())
        .select_from(Submission)
        .where(
            Submission.team_id == team_id,
            or_(Submission.charged.is_(True), Submission.status.in_([s.value for s in ACTIVE])),
        )
    )
    return int(session.scalar(stmt) or 0)


def count_for_team(session: Session, team_id: int) -> int:
    stmt = select(func.count()).select_from(Submission).where(Submission.team_id == team_id)
    return int(session.scalar(stmt) or 0)


def has_finished(session: Session, submission_id: int) -> bool:
    """Whether the submission has been in a final state before (its first run is over)."""
    stmt = (
        select(SubmissionTransition.id)
        .where(
            SubmissionTransition.submission_id == submission_id,
            SubmissionTransition.to_status.in_([s.value for s in FINAL]),
        )
        .limit(1)
    )
    return session.scalar(stmt) is not None


def children(session: Session, parent_id: int) -> list[Submission]:
    """The per-task submissions of a multi-task phase's submission, in task order."""
    return list(
        session.scalars(
            select(Submission).where(Submission.parent_id == parent_id).order_by(Submission.id)
        )
    )
