from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field

from server.challenges import service as challenges
from server.deps import CurrentUser, SessionDep, StoreDep
from server.jobs import logs, repository
from server.params import MAX_ID, PathId
from server.submissions import service as submissions

router = APIRouter(tags=["jobs"])


class ReleaseBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    redactions: list[str] = Field(default_factory=list, description="strings to blank out")


@router.get("/submissions/{submission_id}/jobs")
def list_jobs(
    submission_id: PathId, user: CurrentUser, session: SessionDep
) -> list[dict[str, Any]]:
    sub = submissions.get_visible(session, user, submission_id)
    operator = submissions.sees_operator_detail(session, user, sub)
    return [
        {
            "id": j.id,
            "kind": j.kind,
            "status": j.status,
            "attempt": j.attempt,
            "failure_code": j.failure_code,
            "failure_message": j.failure_message,
            # Engine errors, evaluator output, private case names: organizers only.
            "operator_detail": j.operator_detail if operator else None,
            "node": j.node if operator else None,
            "logs_held": j.logs_held,
            "log_review": j.log_review,
            "started_at": j.started_at,
            "finished_at": j.finished_at,
        }
        for j in repository.for_submission(session, sub.id)
    ]


class LogEntry(BaseModel):
    job_id: int
    kind: str
    part: Literal["run", "inference_build"] = Field(
        description="the job's own run, or (T3) the build adding the trained artifacts"
    )
    status: str
    attempt: int
    held: bool = Field(description="held from you until an organizer reviews it")
    released: bool = Field(description="held, then released (perhaps redacted) by an organizer")
    review: str | None
    log: str | None = Field(description="the text, or null while it is held")
    note: str | None = Field(description="why a held log is not shown")


@router.get("/submissions/{submission_id}/logs", response_model=list[LogEntry])
def submission_logs(
    submission_id: PathId,
    user: CurrentUser,
    session: SessionDep,
    store: StoreDep,
    job: Annotated[int | None, Query(ge=1, le=MAX_ID, description="only this job")] = None,
) -> list[dict[str, Any]]:
    """Every log of the submission the rules let you read: build, canary, feedback-round
    training, the T3 inference build, and logs an organizer released; held ones say so."""
    return logs.for_submission(session, store, user, submission_id, job)


@router.get("/jobs/{job_id}/logs")
def job_logs(
    job_id: PathId, user: CurrentUser, session: SessionDep, store: StoreDep
) -> dict[str, Any]:
    return logs.read(session, store, user, job_id)


@router.get("/challenges/{challenge}/log-reviews")
def pending_reviews(challenge: str, user: CurrentUser, session: SessionDep) -> list[dict[str, Any]]:
    row = challenges.get_challenge(session, challenge)
    return logs.pending(session, user, row.id)


@router.post("/jobs/{job_id}/logs/release")
def release_logs(
    job_id: PathId, body: ReleaseBody, user: CurrentUser, session: SessionDep, store: StoreDep
) -> dict[str, Any]:
    job = logs.release(session, store, user, job_id, body.redactions)
    return {"job_id": job.id, "review": job.log_review}


@router.post("/jobs/{job_id}/logs/refuse")
def refuse_logs(job_id: PathId, user: CurrentUser, session: SessionDep) -> dict[str, Any]:
    job = logs.refuse(session, user, job_id)
    return {"job_id": job.id, "review": job.log_review}
