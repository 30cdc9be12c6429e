"""Log review: logs of runs on sequestered data are held until an organizer reads them and
releases them (optionally redacted) or refuses them. Participants see only the classified
failure reason of a held run, through every endpoint."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from server.accounts import service as accounts
from server.accounts.models import User
from server.challenges.models import Phase
from server.db import utcnow
from server.errors import InvalidInput, NotFound, NotPermitted
from server.jobs import repository
from server.jobs.models import Job
from server.jobs.states import JobKind
from server.storage import ArtifactStore
from server.submissions import service as submissions
from server.submissions.models import Submission

PENDING, RELEASED, REFUSED = "pending", "released", "refused"


def held_for(kind: JobKind, phase: Phase) -> bool:
    """Whether a job's logs are withheld from participants until review."""
    spec = phase.spec
    if kind in (JobKind.validate, JobKind.build, JobKind.smoke_train, JobKind.canary):
        return False  # clone and build logs, and runs on public cases, hold no private data
    if kind is JobKind.train:
        return not spec.feedback_round
    if kind is JobKind.evaluate:
        return True  # the evaluator reads ground truth
    return not spec.participants_see_logs


def review_for(held: bool, failed: bool, phase: Phase) -> str | None:
    """A held log waits for review when its run failed, or when the phase asks for the
    successful runs' too; any held log can still be released or refused."""
    if held and (failed or phase.spec.review_successful_logs):
        return PENDING
    return None


def job_phase(session: Session, job: Job) -> tuple[Submission, Phase]:
    sub = session.get(Submission, job.submission_id)
    assert sub is not None
    phase = session.get(Phase, sub.phase_id)
    assert phase is not None
    return sub, phase


def pending(session: Session, user: User, challenge_id: int) -> list[dict[str, Any]]:
    """The review queue: one entry per submission step (validate, train, the per-case
    inference runs together, evaluate...), not one per case."""
    accounts.require_organizer(session, user, challenge_id)
    rows = session.execute(
        select(Job, Submission)
        .join(Submission, Submission.id == Job.submission_id)
        .join(Phase, Phase.id == Submission.phase_id)
        .where(Phase.challenge_id == challenge_id, Job.log_review == PENDING)
        .order_by(Job.id)
    ).all()
    steps: dict[tuple[int, str], dict[str, Any]] = {}
    for j, s in rows:
        step = steps.get((s.id, j.kind))
        if step is None:
            step = steps[(s.id, j.kind)] = {
                "job_id": j.id,  # the one to read first
                "job_ids": [],
                "submission_id": s.id,
                "kind": j.kind,
                "status": j.status,
                "failure_code": j.failure_code,
                "failed": 0,
                "finished_at": j.finished_at,
            }
        step["job_ids"].append(j.id)
        if j.status == "failed":
            if not step["failed"]:  # the step's first failed job is the one to read first
                step.update(job_id=j.id, status="failed", failure_code=j.failure_code)
            step["failed"] += 1
        if j.finished_at and (step["finished_at"] is None or j.finished_at > step["finished_at"]):
            step["finished_at"] = j.finished_at
    return list(steps.values())


def _visible_job(session: Session, user: User, job_id: int) -> tuple[Job, Phase]:
    """A job of a submission the user may see; to anyone else it is missing, alike."""
    job = session.get(Job, job_id)
    if job is None:
        raise NotFound(f"no job {job_id}", field="job")
    sub, phase = job_phase(session, job)
    try:
        submissions.get_visible(session, user, sub.id)
    except NotFound:
        raise NotFound(f"no job {job_id}", field="job") from None
    return job, phase


def read(session: Session, store: ArtifactStore, user: User, job_id: int) -> dict[str, Any]:
    job, phase = _visible_job(session, user, job_id)
    organizer = accounts.is_organizer(session, user, phase.challenge_id)
    view: dict[str, Any] = {"job_id": job.id, "kind": job.kind, "review": job.log_review}
    if organizer:
        view["log"] = _text(store, job.log_digest)
        if job.released_log_digest:
            view["released_log"] = _text(store, job.released_log_digest)
        build_log = (job.result or {}).get("inference_build_log_digest")
        if build_log:
            view["inference_build_log"] = _text(store, build_log)
        return view
    if not job.logs_held:
        view["log"] = _text(store, job.log_digest)
    elif job.log_review == RELEASED:
        view["log"] = _text(store, job.released_log_digest or job.log_digest)
    else:
        raise NotPermitted(held_note(job))
    build_log = (job.result or {}).get("inference_build_log_digest")
    if build_log:
        view["inference_build_log"] = _text(store, build_log)
    return view


def held_note(job: Job) -> str:
    return (
        "the logs of this run on sequestered data are held until an organizer reviews "
        f"them (review: {job.log_review or 'not requested'}); the classified reason is: "
        f"{job.failure_code or job.status}"
    )


def for_submission(
    session: Session,
    store: ArtifactStore,
    user: User,
    submission_id: int,
    job_id: int | None = None,
) -> list[dict[str, Any]]:
    """Every log of a submission the user may read, one entry per job (and one more for a
    T3 inference build after training, whose platform-written build log holds no private
    data): held logs say they are held, with the classified reason only. Another team's
    submission is missing (404), alike."""
    sub = submissions.get_visible(session, user, submission_id)
    phase = session.get(Phase, sub.phase_id)
    assert phase is not None
    organizer = accounts.is_organizer(session, user, phase.challenge_id)
    jobs = repository.for_submission(session, sub.id)
    if job_id is not None:
        jobs = [j for j in jobs if j.id == job_id]
        if not jobs:
            raise NotFound(f"submission {submission_id} has no job {job_id}", field="job")
    entries: list[dict[str, Any]] = []
    for job in jobs:
        entry = _entry(job, "run")
        if organizer or not job.logs_held:
            entry["log"] = _text(store, job.log_digest)
        elif job.log_review == RELEASED:
            entry["log"] = _text(store, job.released_log_digest or job.log_digest)
            entry["released"] = True
        else:
            entry.update(held=True, note=held_note(job))
        entries.append(entry)
        build_log = (job.result or {}).get("inference_build_log_digest")
        if build_log:
            entries.append({**_entry(job, "inference_build"), "log": _text(store, build_log)})
    return entries


def _entry(job: Job, part: str) -> dict[str, Any]:
    return {
        "job_id": job.id,
        "kind": job.kind,
        "part": part,
        "status": job.status,
        "attempt": job.attempt,
        "held": False,
        "released": False,
        "review": job.log_review if part == "run" else None,
        "log": None,
        "note": None,
    }


def _text(store: ArtifactStore, digest: str | None) -> str:
    return store.read_bytes(digest).decode("utf-8", "replace") if digest else ""


def release(
    session: Session,
    store: ArtifactStore,
    user: User,
    job_id: int,
    redactions: list[str] | None = None,
) -> Job:
    job = _reviewable(session, user, job_id)
    if redactions:
        text = _text(store, job.log_digest)
        for secret in redactions:
            if not secret:
                raise InvalidInput("a redaction cannot be empty", field="redactions")
            text = text.replace(secret, "[redacted]")
        job.released_log_digest = store.put_bytes(text.encode())
    job.log_review, job.reviewed_by, job.reviewed_at = RELEASED, user.id, utcnow()
    return job


def refuse(session: Session, user: User, job_id: int) -> Job:
    job = _reviewable(session, user, job_id)
    job.log_review, job.reviewed_by, job.reviewed_at = REFUSED, user.id, utcnow()
    return job


def _reviewable(session: Session, user: User, job_id: int) -> Job:
    job, phase = _visible_job(session, user, job_id)
    accounts.require_organizer(session, user, phase.challenge_id)
    if job.log_review is None and not job.logs_held:
        raise InvalidInput(f"job {job_id} has no held logs to review", field="job")
    return job
