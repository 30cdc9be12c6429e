"""The job state machine. A job is one step of a submission (validate, build, train, infer a
case, evaluate); a finished job is never run again by a duplicate task."""

from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    pending = "pending"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"


class JobKind(StrEnum):
    validate = "validate"
    build = "build"
    # The training image on the phase's public canary cases, before any private training.
    smoke_train = "smoke_train"
    train = "train"
    canary = "canary"  # the algorithm on a public case or two, before the test set
    infer = "infer"
    evaluate = "evaluate"


J = JobStatus
TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    # running -> pending is an infrastructure retry (worker lost, engine error).
    J.pending: frozenset({J.running, J.cancelled, J.failed}),
    J.running: frozenset({J.succeeded, J.failed, J.pending, J.cancelled}),
    J.succeeded: frozenset(),
    J.failed: frozenset(),
    J.cancelled: frozenset(),
}
FINAL = frozenset({J.succeeded, J.failed, J.cancelled})

# Failure codes that mean the platform or the organizers, not the algorithm, failed:
# never charged.
PLATFORM_FAILURES = frozenset(
    {"platform_error", "internal_error", "evaluation_config_error", "base_image_mismatch"}
)
# Failures whose participant message says the organizers have been told: each is recorded
# as an organizer event (server.challenges.events).
NOTIFIED_FAILURES = frozenset({"evaluation_config_error", "internal_error"})
