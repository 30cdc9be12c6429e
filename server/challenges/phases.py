"""Looking up challenges and phases, and whether a phase is open: what other domains need
of challenges, apart from the service that applies specs (and so imports them)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.orm import Session

from server.challenges import repository
from server.challenges.models import Challenge, Phase
from server.errors import NotFound


def get_challenge(session: Session, slug: str) -> Challenge:
    challenge = repository.get_challenge(session, slug)
    if challenge is None:
        raise NotFound(f"no challenge {slug!r}", field="challenge")
    return challenge


def get_phase(session: Session, challenge_slug: str, phase_slug: str) -> tuple[Challenge, Phase]:
    challenge = get_challenge(session, challenge_slug)
    phase = repository.get_phase(session, challenge.id, phase_slug)
    # A task's own phase is reached through its multi-task phase only.
    if phase is None or phase.parent_id is not None:
        raise NotFound(f"challenge {challenge_slug!r} has no phase {phase_slug!r}", field="phase")
    return challenge, phase


def is_open(phase: Phase, now: datetime) -> tuple[bool, str]:
    spec = phase.spec
    if spec.opens_at and now < spec.opens_at:
        return False, f"phase opens at {spec.opens_at.isoformat()}"
    if spec.closes_at and now >= spec.closes_at:
        return False, f"phase closed at {spec.closes_at.isoformat()}"
    return True, ""
