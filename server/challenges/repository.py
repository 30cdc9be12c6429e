from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from server.challenges.models import Challenge, ChallengeOrganizer, Phase, PhaseInvitation


def get_challenge(session: Session, slug: str) -> Challenge | None:
    return session.scalar(select(Challenge).where(Challenge.slug == slug))


def list_challenges(session: Session) -> list[Challenge]:
    return list(session.scalars(select(Challenge).order_by(Challenge.id)))


def get_phase(session: Session, challenge_id: int, slug: str) -> Phase | None:
    return session.scalar(
        select(Phase).where(Phase.challenge_id == challenge_id, Phase.slug == slug)
    )


def list_phases(session: Session, challenge_id: int) -> list[Phase]:
    """The challenge's phases, without the phases the tasks of multi-task phases run as."""
    return list(
        session.scalars(
            select(Phase)
            .where(Phase.challenge_id == challenge_id, Phase.parent_id.is_(None))
            .order_by(Phase.id)
        )
    )


def task_phases(session: Session, phase_id: int) -> list[Phase]:
    """The phases a multi-task phase's tasks run as, in the bundle's order of its tasks."""
    parent = session.get(Phase, phase_id)
    if parent is None or not parent.spec_json.get("tasks"):
        return []
    order = [t["slug"] for t in parent.spec_json["tasks"]]
    rows = session.scalars(select(Phase).where(Phase.parent_id == phase_id)).all()
    by_task = {r.task_slug: r for r in rows}
    return [by_task[t] for t in order if t in by_task]


def organizer_ids(session: Session, challenge_id: int) -> set[int]:
    return set(
        session.scalars(
            select(ChallengeOrganizer.user_id).where(
                ChallengeOrganizer.challenge_id == challenge_id
            )
        )
    )


def is_invited(session: Session, phase_id: int, team_id: int) -> bool:
    return (
        session.scalar(
            select(PhaseInvitation.id).where(
                PhaseInvitation.phase_id == phase_id, PhaseInvitation.team_id == team_id
            )
        )
        is not None
    )
