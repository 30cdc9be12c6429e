"""Which of a submission's inference jobs stand for its predictions on a test set now.

A dataset edit re-runs inference on new or changed cases only, so a submission may hold
several jobs for one case: the newest counts. A batch job covers every case of its time, so
nothing older than the newest batch job counts. A job on a case that is not (or no longer)
in the test set never counts: old predictions are never scored against another case set."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from server.datasets.models import Case
from server.jobs import repository as jobs_repo
from server.jobs.models import Job
from server.jobs.states import JobKind, JobStatus


def current_case_ids(session: Session, dataset_id: int) -> set[int]:
    return set(
        session.scalars(
            select(Case.id).where(Case.dataset_id == dataset_id, Case.retired.is_(False))
        )
    )


def effective_infer_jobs(session: Session, submission_id: int, dataset_id: int | None) -> list[Job]:
    """The jobs that make up the submission's outputs on `dataset_id`, oldest first."""
    if dataset_id is None:
        return []
    current = current_case_ids(session, dataset_id)
    kept: list[Job] = []
    seen: set[int] = set()
    for job in reversed(jobs_repo.for_submission(session, submission_id, JobKind.infer.value)):
        if job.case_id is None:
            kept.append(job)
            break
        if job.case_id in current and job.case_id not in seen:
            seen.add(job.case_id)
            kept.append(job)
    return kept[::-1]


def uncovered_cases(session: Session, submission_id: int, dataset_id: int) -> set[int]:
    """Current cases with no succeeded output among the effective jobs."""
    covered: set[int] = set()
    for job in effective_infer_jobs(session, submission_id, dataset_id):
        if job.status != JobStatus.succeeded.value:
            continue
        if job.case_id is not None:
            covered.add(job.case_id)
        else:
            covered |= {
                int(e["case_id"]) for e in job.result.get("cases", {}).values() if "outputs" in e
            }
    return current_case_ids(session, dataset_id) - covered
