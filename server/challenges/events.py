"""Organizer events: failures the organizers caused or must hear about, recorded in the same
transaction as the failure so that "the organizers have been told" is true."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from server.challenges.models import OrganizerEvent


def notify(
    session: Session,
    challenge_id: int,
    kind: str,
    message: str,
    *,
    phase_id: int | None = None,
    submission_id: int | None = None,
) -> OrganizerEvent:
    event = OrganizerEvent(
        challenge_id=challenge_id,
        phase_id=phase_id,
        submission_id=submission_id,
        kind=kind,
        message=message,
    )
    session.add(event)
    return event


def list_for(session: Session, challenge_id: int, limit: int = 200) -> list[OrganizerEvent]:
    stmt = (
        select(OrganizerEvent)
        .where(OrganizerEvent.challenge_id == challenge_id)
        .order_by(OrganizerEvent.id.desc())
        .limit(limit)
    )
    return list(session.scalars(stmt))
