"""Submissions to multi-task phases: one submission (validated and charged once) runs as
one child submission per task, on the phase that task runs as, and ends when they all have.

- After validation the parent enters `inferring` and each child starts at `queued`, with
  the parent's image, and runs as any T2 submission does (per-case inference under the
  task's interfaces, evaluation under the task's metrics, a result on the task's board).
- When every child has ended, the parent succeeds if all succeeded; otherwise it fails
  naming the failed tasks (code `task_failed:<task>`), and is charged unless every failed
  task failed for the platform's reasons. A task that succeeded keeps its board entry: the
  team is then incomplete on the consensus board.
- Cancelling or renouncing the parent does the same to its running children."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from server.challenges import repository as challenges_repo
from server.challenges.models import Phase
from server.submissions import repository
from server.submissions import service as submissions
from server.submissions.models import Submission, SubmissionTransition
from server.submissions.states import ACTIVE, SubmissionStatus


def start(session: Session, parent: Submission, phase: Phase) -> list[Submission]:
    """One queued child per task of `phase`, carrying the parent's validated image."""
    children = []
    for task_phase in challenges_repo.task_phases(session, phase.id):
        child = Submission(
            phase_id=task_phase.id,
            team_id=parent.team_id,
            user_id=parent.user_id,
            kind=parent.kind,
            status=SubmissionStatus.queued.value,
            charged=False,
            comment=parent.comment,
            archive_digest=parent.archive_digest,
            archive_size=parent.archive_size,
            image_id=parent.image_id,
            image_ref=parent.image_ref,
            parent_id=parent.id,
        )
        session.add(child)
        session.flush()
        session.add(
            SubmissionTransition(
                submission_id=child.id,
                from_status=None,
                to_status=SubmissionStatus.queued.value,
                note=f"task {task_phase.task_slug} of submission {parent.id}",
            )
        )
        children.append(child)
    return children


def task_of(session: Session, child: Submission) -> str:
    phase = session.get(Phase, child.phase_id)
    assert phase is not None
    return phase.task_slug or phase.slug


def settle(session: Session, child: Submission) -> None:
    """A child ended: end the parent once every child has."""
    assert child.parent_id is not None
    parent = session.scalar(
        select(Submission).where(Submission.id == child.parent_id).with_for_update(key_share=True)
    )
    assert parent is not None
    if SubmissionStatus(parent.status) is not SubmissionStatus.inferring:
        return  # cancelled, or already ended (a later re-score of a task changes nothing)
    children = repository.children(session, parent.id)
    if any(SubmissionStatus(c.status) in ACTIVE for c in children):
        return
    failed = [c for c in children if c.status != SubmissionStatus.succeeded.value]
    if not failed:
        submissions.transition(session, parent, SubmissionStatus.evaluating)
        submissions.transition(session, parent, SubmissionStatus.succeeded)
        return
    names = [task_of(session, c) for c in failed]
    reasons = " ".join(
        f"Task {name}: {c.failure_message or c.status}"
        for name, c in zip(names, failed, strict=True)
    )
    submissions.fail(
        session,
        parent,
        f"task_failed:{names[0]}" if len(names) == 1 else "task_failed",
        f"The submission failed on {len(failed)} of {len(children)} tasks "
        f"({', '.join(names)}). {reasons}",
        platform_caused=not any(c.charged for c in failed),
        operator_detail="\n".join(
            f"task {name} (submission {c.id}): {c.operator_detail or c.failure_code or c.status}"
            for name, c in zip(names, failed, strict=True)
        ),
    )
