"""Whether a submission counts against its team's limits: a function of its history.

The rule: a submission counts from the moment it is accepted, and keeps counting unless its
*first* run ended in one of these ways:
- cancelled before any work on private data (still `received` or `validating`);
- refused before any work on private data: failed while still `received` or `validating`
  (an image archive refused at intake, a T2 canary failure on public cases). Such a
  submission has learnt nothing about the sequestered data, so it costs the team nothing;
- failed for a reason the platform or the organizers caused (a platform failure code, a
  failed public canary, or every failed case failing for the platform's reasons). A T3
  canary is the exception: it runs after training on private data, so its failure counts
  (else training runs on private data would be free and unlimited).

Only the first entry into a final state decides. Re-evaluations (a finished submission
going back to `evaluating` for a new metric config or ground truth) never change it, in
either direction: a re-score neither refunds a submission that ran nor charges one the
platform failed. `decide` is the rule; `charged_from_history` recomputes it from the
recorded transitions, so the stored `charged` column can be checked against it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from server.jobs.states import PLATFORM_FAILURES
from server.submissions.states import FINAL, SubmissionStatus

S = SubmissionStatus
# Cancelled while still here: no work on private data has been done yet.
EARLY = frozenset({S.received, S.validating})
# Recorded in a transition's note when the caller knows the platform caused a failure
# whose code alone does not say so (e.g. "cases_failed" with only platform causes).
PLATFORM_NOTE = "platform-caused"
# Recorded when a failure whose code would be free is the team's (a T3 canary after training).
TEAM_NOTE = "team-caused"


def is_platform_failure(
    code: str | None, *, platform_caused: bool = False, team_caused: bool = False
) -> bool:
    code = code or ""
    if platform_caused or code in PLATFORM_FAILURES:
        return True
    if code.startswith("canary:"):
        return not team_caused or code.removeprefix("canary:") in PLATFORM_FAILURES
    return False


def decide(
    current: SubmissionStatus,
    target: SubmissionStatus,
    code: str | None,
    *,
    platform_caused: bool = False,
    team_caused: bool = False,
) -> bool:
    """The charge for a first run that goes from `current` to the final state `target`."""
    if target is S.cancelled:
        return current not in EARLY
    if target is S.failed:
        if current in EARLY and not team_caused:
            return False
        return not is_platform_failure(
            code, platform_caused=platform_caused, team_caused=team_caused
        )
    return True


@dataclass(frozen=True)
class Step:
    from_status: str | None
    to_status: str
    note: str = ""


def charged_from_history(steps: Sequence[Step]) -> bool:
    """Recompute the rule from a submission's transitions (in order)."""
    for step in steps:
        target = S(step.to_status)
        if target in FINAL:
            current = S(step.from_status) if step.from_status else S.received
            code, _, flag = step.note.partition(" ")
            return decide(
                current,
                target,
                code,
                platform_caused=flag == PLATFORM_NOTE,
                team_caused=flag == TEAM_NOTE,
            )
    return True  # still running: it counts
