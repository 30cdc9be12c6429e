"""Where a submission stands in the queue, and when its next job is likely to start.

Position counts the submissions with pending jobs ahead of this one's first pending job on
the same queue; the estimate spreads the jobs ahead over the workers seen recently, at the
mean duration of the queue's recent jobs."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from server.db import utcnow
from server.jobs.models import Job
from server.jobs.states import JobStatus

RECENT_JOBS = 50
WORKER_SEEN = timedelta(minutes=2)


def position(session: Session, submission_id: int) -> dict[str, Any] | None:
    # long: each queue figure read in one place so the figures agree
    pending = JobStatus.pending.value
    first = session.execute(
        select(Job.id, Job.queue)
        .where(Job.submission_id == submission_id, Job.status == pending)
        .order_by(Job.id)
        .limit(1)
    ).first()
    if first is None:
        return None
    first_id, queue = first
    ahead = (
        Job.queue == queue,
        Job.status == pending,
        Job.id < first_id,
        Job.submission_id != submission_id,
    )
    jobs_ahead = int(session.scalar(select(func.count()).where(*ahead)) or 0)
    subs_ahead = int(
        session.scalar(select(func.count(func.distinct(Job.submission_id))).where(*ahead)) or 0
    )
    mine = int(
        session.scalar(
            select(func.count()).where(Job.submission_id == submission_id, Job.status == pending)
        )
        or 0
    )
    now = utcnow()
    recent = session.execute(
        select(Job.started_at, Job.finished_at)
        .where(
            Job.queue == queue,
            Job.status == JobStatus.succeeded.value,
            Job.started_at.is_not(None),
            Job.finished_at.is_not(None),
        )
        .order_by(Job.id.desc())
        .limit(RECENT_JOBS)
    ).all()
    workers = int(
        session.scalar(
            select(func.count(func.distinct(Job.worker_id))).where(
                Job.worker_id.is_not(None), Job.heartbeat_at > now - WORKER_SEEN
            )
        )
        or 0
    )
    estimate = None
    mean_s = None
    if recent:
        mean_s = sum((f - s).total_seconds() for s, f in recent if s and f) / len(recent)
        running = int(
            session.scalar(
                select(func.count()).where(
                    Job.queue == queue, Job.status == JobStatus.running.value
                )
            )
            or 0
        )
        slots = max(1, workers)
        estimate = now + timedelta(seconds=(jobs_ahead + running) * mean_s / slots)
    return {
        "queue": queue,
        "position": subs_ahead + 1,
        "jobs_ahead": jobs_ahead,
        "pending_jobs": mine,
        "workers_seen": workers,
        "mean_job_s": round(mean_s, 1) if mean_s is not None else None,
        "estimated_start_at": estimate,
    }
