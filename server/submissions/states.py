"""The submission state machine: one table of allowed transitions, applied in one place."""

from __future__ import annotations

from enum import StrEnum


class SubmissionStatus(StrEnum):
    received = "received"
    validating = "validating"
    queued = "queued"
    building = "building"
    training = "training"
    inferring = "inferring"
    evaluating = "evaluating"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"


S = SubmissionStatus
_STOP = {S.failed, S.cancelled}

TRANSITIONS: dict[SubmissionStatus, frozenset[SubmissionStatus]] = {
    S.received: frozenset({S.validating, *_STOP}),
    S.validating: frozenset({S.queued, *_STOP}),
    # T2 goes straight to inference; T3 builds first.
    S.queued: frozenset({S.building, S.inferring, *_STOP}),
    S.building: frozenset({S.training, *_STOP}),
    S.training: frozenset({S.inferring, *_STOP}),
    S.inferring: frozenset({S.evaluating, *_STOP}),
    # Re-evaluation (new metric config or ground truth) runs from a finished submission;
    # so does re-inference (new or changed test cases, another test set).
    # Back to inference when the test set gains cases while an evaluation is open.
    S.evaluating: frozenset({S.succeeded, S.failed, S.inferring}),
    S.succeeded: frozenset({S.evaluating, S.inferring}),
    S.failed: frozenset({S.evaluating, S.inferring}),
    S.cancelled: frozenset(),
}

ACTIVE = frozenset(
    {
        S.received,
        S.validating,
        S.queued,
        S.building,
        S.training,
        S.inferring,
        S.evaluating,
    }
)
FINAL = frozenset({S.succeeded, S.failed, S.cancelled})


def can_transition(current: SubmissionStatus, target: SubmissionStatus) -> bool:
    return target in TRANSITIONS[current]
