"""What a participant may read about a run on private (sequestered) data.

On private cases everything the participant's code chose is a channel out: file names,
stdout and stderr lines, exact exit codes, which directory it filled. A failure there is
reported as a fixed class in fixed words; the full classification goes to the job's
operator-only `operator_detail`. Public cases (canary) keep the detailed message.
Output validation messages are built from slugs, declared limits and fixed rule words
(worker/outputs.py), so they stay, keyed by the public interface slug.
"""

from __future__ import annotations

from worker.executor.base import Failure, FailureKind

EXIT_CODE_MESSAGE = (
    "The algorithm exited with an error on this private case (a non-zero exit code). "
    "Exit codes and logs of private cases are not shown; run it on the public cases or "
    "with `heldout run-local` to see why."
)
DISK_FULL_MESSAGE = "The algorithm filled one of its size-capped directories."
# The organizers' own evaluation image failed (worker/evaluation_container.py): its logs
# and reason name private cases and ground truth, so they are the organizers' alone.
EVALUATION_FAILED_MESSAGE = (
    "The phase's evaluation (the organizers' evaluation image) failed on this submission; "
    "the organizers have been told. This does not count against your team's limits."
)


def private_failure(failure: Failure) -> tuple[str, str]:
    """(code, message) of a failure on a private case: a fixed class."""
    kind = failure.kind
    if kind is FailureKind.exit_code:
        return "exit_code", EXIT_CODE_MESSAGE
    if kind is FailureKind.disk_full:
        return "disk_full", DISK_FULL_MESSAGE
    if kind in (FailureKind.invalid_output, FailureKind.missing_output):
        # reason is "<kind>:<slug>[: why]"; slugs hold no colon.
        slug = failure.reason.split(":", 2)[1].strip()
        return f"{kind.value}:{slug}", failure.message
    return kind.value, failure.message


def operator_detail(failure: Failure) -> str:
    return f"{failure.reason}: {failure.message}"
