from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from server.jobs.models import Job
from server.jobs.states import FINAL


def for_submission(session: Session, submission_id: int, kind: str | None = None) -> list[Job]:
    stmt = select(Job).where(Job.submission_id == submission_id)
    if kind is not None:
        stmt = stmt.where(Job.kind == kind)
    return list(session.scalars(stmt.order_by(Job.id)))


def lock(session: Session, job_id: int) -> Job | None:
    return session.scalar(select(Job).where(Job.id == job_id).with_for_update())


def count_open(session: Session, submission_id: int, kind: str) -> int:
    """Jobs of this kind not yet finished: a cheap check before loading them all."""
    stmt = select(func.count()).where(
        Job.submission_id == submission_id,
        Job.kind == kind,
        Job.status.not_in([s.value for s in FINAL]),
    )
    return int(session.scalar(stmt) or 0)
