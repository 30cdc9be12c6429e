"""Re-inference after a test set edit: new infer jobs for the cases that need new outputs
(added or changed cases, or every case when the phase points at another test set), then the
usual evaluation. It never changes a charge (only a submission's first final state decides)
and old outputs are never scored against the new case set (`datasets.coverage`)."""

from __future__ import annotations

from sqlalchemy.orm import Session

from server.challenges.models import Phase
from server.datasets import coverage
from server.jobs import repository as jobs_repo
from server.jobs import service as jobs
from server.jobs.states import JobKind, JobStatus
from server.submissions import repository as submissions_repo
from server.submissions import service as submissions
from server.submissions.models import Submission
from server.submissions.states import SubmissionStatus

S = SubmissionStatus


def _ran_fully(session: Session, sub: Submission) -> bool:
    """Whether its last inference left an output for every case it ran (newest job per case
    or batch): only such a submission is re-run; one that failed on cases stays failed."""
    latest: dict[int | None, str] = {}
    for job in jobs_repo.for_submission(session, sub.id, JobKind.infer.value):
        if job.case_id is None:
            latest = {}
        latest[job.case_id] = job.status
    return bool(latest) and all(s == JobStatus.succeeded.value for s in latest.values())


def reinfer(
    session: Session, phase: Phase, cases: set[int] | None, *, dry_run: bool = False
) -> list[int]:
    """Schedule inference on `cases` of the phase's test set (None: all of them), plus any
    current case a submission has no output for, for each finished submission that ran in
    full and each one still inferring. Returns the submissions re-run."""
    if phase.test_dataset_id is None:
        return []
    current = coverage.current_case_ids(session, phase.test_dataset_id)
    wanted = current if cases is None else cases & current
    queue = "gpu" if phase.spec.limits.gpus else "cpu"
    batch = phase.spec.batch_mode
    queued: list[int] = []
    for sub in submissions_repo.list_for_phase(session, phase.id):
        status = S(sub.status)
        if status is S.inferring and not batch:
            pending = {
                j.case_id
                for j in jobs_repo.for_submission(session, sub.id, JobKind.infer.value)
                if j.status == JobStatus.pending.value
            }
            # A pending job reads its case when claimed; others need a new run.
            todo = sorted(wanted - pending)
            if todo:
                queued.append(sub.id)
                if not dry_run:
                    for case_id in todo:
                        jobs.create(session, sub, JobKind.infer, case_id=case_id, queue=queue)
            continue
        if status not in (S.succeeded, S.failed) or not _ran_fully(session, sub):
            continue
        todo = sorted(wanted | coverage.uncovered_cases(session, sub.id, phase.test_dataset_id))
        if not todo:
            continue
        queued.append(sub.id)
        if dry_run:
            continue
        submissions.transition(
            session, sub, S.inferring, note="re-inference: the test cases changed"
        )
        if batch:
            jobs.create(session, sub, JobKind.infer, queue=queue)
        else:
            for case_id in todo:
                jobs.create(session, sub, JobKind.infer, case_id=case_id, queue=queue)
    return queued
