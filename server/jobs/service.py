"""Jobs: one step of a submission each. Created and enqueued in the same transaction (the
task is sent after commit); claimed by a worker under a row lock with the state re-checked,
so a redelivered task never runs a finished job twice."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import update
from sqlalchemy.orm import Session

from server import dispatch
from server.db import utcnow
from server.errors import InvalidTransition, NotFound
from server.jobs import repository
from server.jobs.models import Job
from server.jobs.states import FINAL, NOTIFIED_FAILURES, TRANSITIONS, JobKind, JobStatus
from server.submissions.models import Submission

RUN_JOB = "heldout.run_job"
QUEUE_FOR = {
    JobKind.validate: "build",
    JobKind.build: "build",
    JobKind.smoke_train: "gpu",
    JobKind.train: "gpu",
    JobKind.canary: "cpu",
    JobKind.infer: "cpu",
    JobKind.evaluate: "evaluation",
}


def create(
    session: Session,
    submission: Submission,
    kind: JobKind,
    *,
    case_id: int | None = None,
    queue: str | None = None,
    enqueue: bool = True,
) -> Job:
    job = Job(
        submission_id=submission.id,
        kind=kind.value,
        case_id=case_id,
        queue=queue or QUEUE_FOR[kind],
        status=JobStatus.pending.value,
        result={},
    )
    session.add(job)
    session.flush()
    if enqueue:
        dispatch.enqueue(session, RUN_JOB, job.id, queue=job.queue)
    return job


def requeue(session: Session, job: Job) -> None:
    dispatch.enqueue(session, RUN_JOB, job.id, queue=job.queue)


def set_status(session: Session, job: Job, target: JobStatus, **values: Any) -> None:
    current = JobStatus(job.status)
    if target not in TRANSITIONS[current]:
        raise InvalidTransition(f"job {job.id} cannot go from {current} to {target}")
    res = session.execute(
        update(Job)
        .where(Job.id == job.id, Job.status == current.value)
        .values(status=target.value, **values)
        .execution_options(synchronize_session=False)
    )
    if res.rowcount != 1:  # type: ignore[attr-defined]
        raise InvalidTransition(f"job {job.id} changed state concurrently")
    session.refresh(job)


def claim(
    session: Session,
    job_id: int,
    worker_id: str,
    wall_time_s: int,
    margin_s: int,
    *,
    node: str | None = None,
) -> Job | None:
    """Lock the job and mark it running for this worker on `node`; None if there is nothing
    to do (finished, cancelled, or running under a live owner)."""
    job = repository.lock(session, job_id)
    if job is None:
        raise NotFound(f"no job {job_id}")
    if JobStatus(job.status) is not JobStatus.pending:
        return None
    now = utcnow()
    set_status(
        session,
        job,
        JobStatus.running,
        attempt=job.attempt + 1,
        worker_id=worker_id,
        node=node,
        heartbeat_at=now,
        started_at=now,
        deadline_at=now + timedelta(seconds=wall_time_s + margin_s),
    )
    return job


def touch_waiting(session: Session, job_id: int) -> None:
    """A worker holds this pending job's message and waits (for a GPU): its heartbeat says
    so, and the reaper does not re-send the message as lost."""
    session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.pending.value)
        .values(heartbeat_at=utcnow())
        .execution_options(synchronize_session=False)
    )


def heartbeat(session: Session, job_id: int, worker_id: str) -> bool:
    res = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.running.value, Job.worker_id == worker_id)
        .values(heartbeat_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    return bool(res.rowcount)  # type: ignore[attr-defined]


def succeed(
    session: Session, job: Job, result: dict[str, Any], log_digest: str | None = None
) -> None:
    set_status(
        session,
        job,
        JobStatus.succeeded,
        result=result,
        log_digest=log_digest,
        finished_at=utcnow(),
    )


def fail(
    session: Session,
    job: Job,
    code: str,
    message: str,
    *,
    result: dict[str, Any] | None = None,
    log_digest: str | None = None,
    operator_detail: str | None = None,
) -> None:
    """`message` is what the participant reads; `operator_detail` what organizers read."""
    set_status(
        session,
        job,
        JobStatus.failed,
        failure_code=code,
        failure_message=message,
        operator_detail=operator_detail,
        result=result if result is not None else job.result,
        log_digest=log_digest,
        finished_at=utcnow(),
    )
    if code in NOTIFIED_FAILURES:
        _notify_organizers(session, job, code, message)


def _notify_organizers(session: Session, job: Job, code: str, message: str) -> None:
    """The participant's message says the organizers have been told: tell them, in the
    failure's own transaction."""
    from server.challenges import events
    from server.challenges.models import Phase

    submission = session.get(Submission, job.submission_id)
    assert submission is not None
    phase = session.get(Phase, submission.phase_id)
    assert phase is not None
    events.notify(
        session,
        phase.challenge_id,
        code,
        f"phase {phase.slug}: the {job.kind} step of submission {submission.id} failed: {message}",
        phase_id=phase.id,
        submission_id=submission.id,
    )


RETRIED_MESSAGE = (
    "retried: the platform could not complete this step and runs it again; "
    "this does not count against your team's limits."
)


def retry(session: Session, job: Job, reason: str) -> None:
    """An infrastructure failure: back to pending and onto the queue again. The reason
    (engine errors, evaluator stderr, worker host names) is for operators only."""
    set_status(
        session,
        job,
        JobStatus.pending,
        worker_id=None,
        node=None,
        heartbeat_at=None,
        deadline_at=None,
        failure_message=RETRIED_MESSAGE,
        operator_detail=f"attempt {job.attempt} retried: {reason}",
    )
    requeue(session, job)


def cancel_open(session: Session, submission: Submission) -> None:
    for job in repository.for_submission(session, submission.id):
        if JobStatus(job.status) not in FINAL:
            set_status(session, job, JobStatus.cancelled, finished_at=utcnow())


def summary(session: Session, submission_id: int) -> list[dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for job in repository.for_submission(session, submission_id):
        entry = out.setdefault(job.kind, {"kind": job.kind, "total": 0, "by_status": {}})
        entry["total"] += 1
        entry["by_status"][job.status] = entry["by_status"].get(job.status, 0) + 1
    return list(out.values())
