"""Re-inference after a test set edit: new infer jobs for the cases that need new outputs
(added or changed cases, or every case when the phase points at another test set), then the
usual evaluation. It never changes a charge (only a submission's first final state decides)
and old outputs are never scored against the new case set (`datasets.coverage`)."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from server import dispatch
from server.challenges.models import Phase
from server.datasets import coverage
from server.db import utcnow
from server.jobs import repository as jobs_repo
from server.jobs import service as jobs
from server.jobs.states import FINAL as JOB_FINAL
from server.jobs.states import JobKind, JobStatus
from server.leaderboards import service as leaderboards
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


def _create(session: Session, sub: Submission, phase: Phase, todo: list[int]) -> None:
    queue = dispatch.queue_for_gpus(phase.spec.limits.gpus)
    if phase.spec.batch_mode:
        jobs.create(session, sub, JobKind.infer, queue=queue)
        return
    for case_id in todo:
        jobs.create(session, sub, JobKind.infer, case_id=case_id, queue=queue)


def reinfer(
    session: Session, phase: Phase, cases: set[int] | None, *, dry_run: bool = False
) -> list[int]:
    # long: one pass: which submissions re-run, what to cancel, what to schedule
    """Schedule inference on `cases` of the phase's test set (None: all of them), plus any
    current case a submission has no output for, for each finished submission that ran in
    full and each one still inferring or evaluating. Returns the submissions re-run.

    An evaluation not yet started is cancelled (it would score outputs missing the new
    cases); one running is left to finish: its outcome is then outdated (`catch_up`)."""
    if phase.test_dataset_id is None:
        return []
    current = coverage.current_case_ids(session, phase.test_dataset_id)
    wanted = current if cases is None else cases & current
    batch = phase.spec.batch_mode
    queued: list[int] = []
    for sub in submissions_repo.list_for_phase(session, phase.id):
        status = S(sub.status)
        if status is S.inferring:
            pending = {
                j.case_id
                for j in jobs_repo.for_submission(session, sub.id, JobKind.infer.value)
                if j.status == JobStatus.pending.value
            }
            # A pending job reads its case(s) when claimed; others need a new run.
            todo = sorted(wanted - pending)
            if todo and not (batch and None in pending):
                queued.append(sub.id)
                if not dry_run:
                    _create(session, sub, phase, todo)
            continue
        if status is S.evaluating:
            todo = sorted(wanted | coverage.uncovered_cases(session, sub.id, phase.test_dataset_id))
            if not todo:
                continue
            queued.append(sub.id)
            if dry_run:
                continue
            evaluations = jobs_repo.for_submission(session, sub.id, JobKind.evaluate.value)
            waiting = [j for j in evaluations if j.status == JobStatus.pending.value]
            running = any(j.status == JobStatus.running.value for j in evaluations)
            for job in waiting:
                jobs.set_status(session, job, JobStatus.cancelled, finished_at=utcnow())
            if not running:
                submissions.transition(
                    session, sub, S.inferring, note="re-inference: the test cases changed"
                )
            _create(session, sub, phase, todo)
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
        _create(session, sub, phase, todo)
    return queued


def outdated(session: Session, sub: Submission, result: dict[str, Any]) -> bool:
    """Whether an evaluation ran on a test set that has changed since."""
    used = result.get("ground_truth")
    phase = session.get(Phase, sub.phase_id)
    assert phase is not None
    return used is not None and used != leaderboards.ground_truth_digest(session, phase)


def catch_up(session: Session, sub: Submission) -> None:
    """After an outdated evaluation (the submission is still `evaluating`): wait for the
    re-runs an apply scheduled meanwhile, run the cases still without outputs, or, when
    every present case has one, evaluate again."""
    phase = session.get(Phase, sub.phase_id)
    assert phase is not None and phase.test_dataset_id is not None
    infer = jobs_repo.for_submission(session, sub.id, JobKind.infer.value)
    open_cases = {j.case_id for j in infer if JobStatus(j.status) not in JOB_FINAL}
    todo = sorted(coverage.uncovered_cases(session, sub.id, phase.test_dataset_id) - open_cases)
    note = "re-inference: the test cases changed during the evaluation"
    if open_cases or todo:
        submissions.transition(session, sub, S.inferring, note=note)
        if todo and not (phase.spec.batch_mode and open_cases):
            _create(session, sub, phase, todo)
        return
    jobs.create(session, sub, JobKind.evaluate)
