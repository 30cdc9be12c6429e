"""The submission and job state tables: every state reachable, finals final, and the
transition function refusing moves the table does not allow."""

from __future__ import annotations

from server.jobs import states as job_states
from server.submissions.states import FINAL, TRANSITIONS, SubmissionStatus, can_transition


def test_every_submission_state_is_reachable_from_received() -> None:
    seen = {SubmissionStatus.received}
    frontier = [SubmissionStatus.received]
    while frontier:
        for nxt in TRANSITIONS[frontier.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                frontier.append(nxt)
    assert seen == set(SubmissionStatus)


def test_no_way_back_from_cancelled_and_only_rerunning_from_finished() -> None:
    assert TRANSITIONS[SubmissionStatus.cancelled] == frozenset()
    for final in FINAL - {SubmissionStatus.cancelled}:
        # Re-evaluation, or re-inference after a test set edit.
        assert TRANSITIONS[final] == {SubmissionStatus.evaluating, SubmissionStatus.inferring}
    assert not can_transition(SubmissionStatus.succeeded, SubmissionStatus.queued)
    assert not can_transition(SubmissionStatus.received, SubmissionStatus.succeeded)
    assert can_transition(SubmissionStatus.queued, SubmissionStatus.inferring)
    assert can_transition(SubmissionStatus.training, SubmissionStatus.inferring)


def test_job_states() -> None:
    j = job_states.JobStatus
    for final in job_states.FINAL:
        assert job_states.TRANSITIONS[final] == frozenset()
    # Only a running job can go back to pending (an infrastructure retry).
    assert j.pending in job_states.TRANSITIONS[j.running]
    assert all(j.pending not in job_states.TRANSITIONS[s] for s in j if s is not j.running)
