"""How a submission advances when one of its jobs finishes: the rules of the pipeline,
database-only (the worker's step drivers call them with a job recorded; nothing here runs a
container). T2: validate -> [canary] -> infer per case -> evaluate. T3: validate -> build ->
[smoke-train] -> train -> [canary] -> infer -> evaluate."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from server import dispatch
from server.challenges.models import Phase
from server.config import Settings
from server.datasets import coverage
from server.datasets import repository as datasets_repo
from server.datasets.models import Case
from server.errors import NotFound
from server.jobs import repository as jobs_repo
from server.jobs import service as jobs
from server.jobs.models import Job
from server.jobs.states import FINAL as JOB_FINAL
from server.jobs.states import PLATFORM_FAILURES, JobKind, JobStatus
from server.leaderboards import reinference
from server.leaderboards import service as leaderboards
from server.submissions import multitask
from server.submissions import service as submissions
from server.submissions.models import Submission
from server.submissions.states import FINAL, SubmissionStatus

MAX_LISTED_CASES = 10


def retry_or_fail(session: Session, settings: Settings, job: Job, reason: str) -> None:
    """A failure the platform caused: retry while attempts remain, else fail uncharged."""
    if job.attempt < settings.max_attempts:
        jobs.retry(session, job, reason)
        return
    jobs.fail(
        session,
        job,
        "platform_error",
        f"The platform could not run this step after {job.attempt} attempts. "
        "It does not count against your team's limits.",
        operator_detail=f"attempt {job.attempt} failed: {reason}",
    )
    advance(session, job, platform_caused=True)


def _lock_submission(session: Session, submission_id: int) -> Submission:
    # FOR NO KEY UPDATE: it still serializes the submission's writers, but does not wait on
    # the FOR KEY SHARE locks that PostgreSQL's foreign-key checks take on it.
    sub = session.scalar(
        select(Submission).where(Submission.id == submission_id).with_for_update(key_share=True)
    )
    assert sub is not None
    return sub


def lock_for_record(session: Session, job_id: int) -> Job:
    """Lock a job's submission, then the job: the one order every writer of both follows.

    Locking the job first deadlocked on PostgreSQL when cases of one submission finished
    together: each updated its job row twice (which makes PostgreSQL re-check the foreign
    key and share-lock the submission) and then both wanted the submission exclusively.
    Cancelling (submission, then its jobs) could close the same cycle.
    """
    submission_id = session.scalar(select(Job.submission_id).where(Job.id == job_id))
    if submission_id is None:
        raise NotFound(f"no job {job_id}")
    _lock_submission(session, submission_id)
    job = jobs_repo.lock(session, job_id)
    assert job is not None
    return job


def advance(session: Session, job: Job, *, platform_caused: bool) -> None:
    """What a finished job means for its submission: the next state and the next jobs, or
    its failure. Called with the job recorded, in the same transaction. A task's submission
    that ends may end its multi-task phase's submission (server.submissions.multitask)."""
    _advance(session, job, platform_caused=platform_caused)
    submission = session.get(Submission, job.submission_id)
    assert submission is not None
    if submission.parent_id is not None and SubmissionStatus(submission.status) in FINAL:
        multitask.settle(session, submission)


def _advance(session: Session, job: Job, *, platform_caused: bool) -> None:
    # long: what follows each job kind, one branch each: the rules in one table
    submission = _lock_submission(session, job.submission_id)
    status = SubmissionStatus(submission.status)
    if status in (SubmissionStatus.cancelled,):
        return
    kind = JobKind(job.kind)
    failed = JobStatus(job.status) is JobStatus.failed

    if kind is JobKind.evaluate and reinference.outdated(session, submission, job.result):
        # The test set was edited while this evaluation ran: its outcome decides nothing
        # (no charge, no failure); the work the edit needs is scheduled instead.
        if not failed:
            _record_result(session, submission, job)
        reinference.catch_up(session, submission)
        return

    if failed and kind is JobKind.smoke_train:
        _smoke_train_failed(session, submission, job)
        return
    if failed and kind not in (JobKind.infer, JobKind.canary):
        submissions.fail(
            session,
            submission,
            job.failure_code or "failed",
            job.failure_message or "",
            platform_caused=platform_caused or job.failure_code in PLATFORM_FAILURES,
            operator_detail=job.operator_detail,
        )
        if kind is JobKind.evaluate:
            leaderboards.rescore_if_stale(session, submission, job.result)
        return

    if kind is JobKind.validate and submission.kind == "codebase":
        submissions.transition(session, submission, SubmissionStatus.queued)
        jobs.create(session, submission, JobKind.build)
        submissions.transition(session, submission, SubmissionStatus.building)
    elif kind is JobKind.validate:
        submission.image_id = job.result.get("image_id")
        submission.image_ref = job.result.get("image_ref")
        if not start_canary(session, submission):
            submissions.transition(session, submission, SubmissionStatus.queued)
            start_inference(session, submission)
    elif kind is JobKind.canary:
        _after_canary(session, submission)
    elif kind in (JobKind.build, JobKind.smoke_train):
        phase = session.get(Phase, submission.phase_id)
        assert phase is not None
        limits = phase.spec.training_limits or phase.spec.limits
        queue = dispatch.queue_for_gpus(limits.gpus)
        if kind is JobKind.build and phase.canary_dataset_id is not None:
            # Smoke-train on the public canary cases first (the submission stays building).
            jobs.create(session, submission, JobKind.smoke_train, queue=queue)
            return
        submissions.transition(session, submission, SubmissionStatus.training)
        jobs.create(session, submission, JobKind.train, queue=queue)
    elif kind is JobKind.train:
        submission.image_id = job.result["inference_image_id"]
        submission.image_ref = job.result.get("inference_image_ref")
        if not start_canary(session, submission):
            start_inference(session, submission)
    elif kind is JobKind.infer:
        _after_inference(session, submission)
    elif kind is JobKind.evaluate:
        _record_result(session, submission, job)
        submissions.transition(session, submission, SubmissionStatus.succeeded)
        leaderboards.rescore_if_stale(session, submission, job.result)


def _record_result(session: Session, submission: Submission, job: Job) -> None:
    """Store an evaluation's result under the ground truth it ran on."""
    phase = session.get(Phase, submission.phase_id)
    assert phase is not None
    gt = job.result.get("ground_truth") or leaderboards.ground_truth_digest(session, phase)
    assert gt is not None
    leaderboards.record(
        session,
        submission,
        phase,
        job.result.get("evaluator_version", "?"),
        gt,
        job.result["metrics"],
        metrics_version=job.result.get("metrics_version"),
    )


def _smoke_train_failed(session: Session, submission: Submission, job: Job) -> None:
    """Training on the public canary cases failed: free, and told in detail (the data is
    public; the job's log is the team's too). Private training never starts."""
    code = job.failure_code or "failed"
    submissions.fail(
        session,
        submission,
        f"canary:{code}",
        "The training image failed on the phase's public check cases before training on "
        "the private data; this does not count against your team's limits. "
        f"{job.failure_message or ''}".rstrip(),
        platform_caused=code in PLATFORM_FAILURES,
        operator_detail=job.operator_detail,
    )


def start_canary(session: Session, submission: Submission) -> bool:
    """Run the algorithm on the phase's public canary cases first, with the full limits; a
    failure there is reported at once and not charged. False when the phase has none."""
    phase = session.get(Phase, submission.phase_id)
    assert phase is not None
    if phase.canary_dataset_id is None:
        return False
    for case in datasets_repo.list_cases(session, phase.canary_dataset_id)[:2]:
        jobs.create(session, submission, JobKind.canary, case_id=case.id, queue=_run_queue(phase))
    return True


def _after_canary(session: Session, submission: Submission) -> None:
    canaries = jobs_repo.for_submission(session, submission.id, JobKind.canary.value)
    if any(JobStatus(j.status) not in JOB_FINAL for j in canaries):
        return
    failed = [j for j in canaries if j.status != JobStatus.succeeded.value]
    if failed and submission.kind == "codebase":
        # A T3 canary runs after training on the private training set: not free (else
        # training runs on private data would be unlimited), and told in fixed words.
        submissions.fail(
            session,
            submission,
            f"canary:{failed[0].failure_code or 'failed'}",
            "The trained algorithm failed on the phase's public check case(s) before the "
            "test set ran. It trained on private data, so this counts against your team's "
            "limits; the training job's log is held until the organizers review it.",
            team_caused=True,
        )
        return
    if failed:
        reasons = "; ".join(
            f"public case {name}: {msg}"
            for name, msg in case_failures(session, failed, public=True)
        )
        submissions.fail(
            session,
            submission,
            f"canary:{failed[0].failure_code or 'failed'}",
            "The algorithm failed on the phase's public check case(s) before the test set "
            f"ran; this does not count against your team's limits. {reasons}",
        )
        return
    if SubmissionStatus(submission.status) is SubmissionStatus.validating:
        submissions.transition(session, submission, SubmissionStatus.queued)
    start_inference(session, submission)


def start_inference(session: Session, submission: Submission) -> None:
    phase = session.get(Phase, submission.phase_id)
    assert phase is not None
    if phase.spec_json.get("tasks"):
        # A multi-task phase: each task runs as a child submission on its own cases.
        submissions.transition(session, submission, SubmissionStatus.inferring)
        for child in multitask.start(session, submission, phase):
            start_inference(session, child)
        return
    assert phase.test_dataset_id is not None
    submissions.transition(session, submission, SubmissionStatus.inferring)
    if phase.spec.batch_mode:
        jobs.create(session, submission, JobKind.infer, queue=_run_queue(phase))
        return
    for case in datasets_repo.list_cases(session, phase.test_dataset_id):
        jobs.create(session, submission, JobKind.infer, case_id=case.id, queue=_run_queue(phase))


def _run_queue(phase: Phase) -> str:
    """Runs that ask for GPUs go to the GPU nodes' queue."""
    return dispatch.queue_for_gpus(phase.spec.limits.gpus)


def _after_inference(session: Session, submission: Submission) -> None:
    if SubmissionStatus(submission.status) is not SubmissionStatus.inferring:
        return
    # Each finishing case gets here: count first, load the whole set only for the last one.
    if jobs_repo.count_open(session, submission.id, JobKind.infer.value):
        return
    phase = session.get(Phase, submission.phase_id)
    assert phase is not None
    # After a test set edit only the newest run of each present case counts.
    infer_jobs = coverage.effective_infer_jobs(session, submission.id, phase.test_dataset_id)
    failures = case_failures(session, infer_jobs)
    if failures:
        total = sum(len(j.result.get("cases", {})) if j.case_id is None else 1 for j in infer_jobs)
        listed = "; ".join(f"case {name}: {msg}" for name, msg in failures[:MAX_LISTED_CASES])
        more = len(failures) - MAX_LISTED_CASES
        if more > 0:
            listed += f"; and {more} more"
        # Charged only if some case failed for the algorithm's own reasons.
        submissions.fail(
            session,
            submission,
            "cases_failed",
            f"The algorithm failed on {len(failures)} of {total} cases. {listed}",
            platform_caused=all(
                j.failure_code in PLATFORM_FAILURES
                for j in infer_jobs
                if j.status == JobStatus.failed.value
            ),
            operator_detail=_case_details(session, infer_jobs),
        )
        return
    submissions.transition(session, submission, SubmissionStatus.evaluating)
    jobs.create(session, submission, JobKind.evaluate)


def _case_details(session: Session, infer_jobs: list[Job]) -> str:
    """Organizers' view of failed cases: the private case name and the full reason."""
    lines = []
    for j in infer_jobs:
        if j.status == JobStatus.succeeded.value:
            continue
        if j.case_id is not None:
            case = session.get(Case, j.case_id)
            lines.append(f"{case.name if case else j.case_id}: {j.operator_detail or j.status}")
        else:
            lines.append(f"batch job {j.id}: {j.operator_detail or j.status}")
            for name, entry in sorted(j.result.get("cases", {}).items()):
                if entry.get("failure"):
                    lines.append(f"  {name}: {entry['failure'].get('detail', '')}")
    return "\n".join(lines[: 10 * MAX_LISTED_CASES])


def case_failures(
    session: Session, infer_jobs: list[Job], *, public: bool = False
) -> list[tuple[str, str]]:
    """(case, classified message) for every case that failed. A private case is named by
    the UUID the algorithm saw; a public one (the canary's) by its name in the dataset, as
    `heldout run-local` names the same case."""

    def shown(case: Case | None, fallback: str) -> str:
        if case is None:
            return fallback
        return case.name if public else case.public_name

    out: list[tuple[str, str]] = []
    for j in infer_jobs:
        if j.case_id is not None:
            if j.status != JobStatus.succeeded.value:
                case = session.get(Case, j.case_id)
                out.append((shown(case, str(j.case_id)), j.failure_message or j.status))
        else:
            if j.status != JobStatus.succeeded.value and not j.result.get("cases"):
                out.append(("(all)", j.failure_message or j.status))
            for name, entry in sorted(j.result.get("cases", {}).items()):
                if entry.get("failure"):
                    case = session.scalar(select(Case).where(Case.public_name == name))
                    out.append((shown(case, name), entry["failure"]["message"]))
    return out
