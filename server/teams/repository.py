from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from server.teams.models import JoinRequest, Team, TeamInvitation, TeamMember

PENDING, ACCEPTED, DECLINED = "pending", "accepted", "declined"


def team_of(session: Session, challenge_id: int, user_id: int) -> Team | None:
    return session.scalar(
        select(Team)
        .join(TeamMember, TeamMember.team_id == Team.id)
        .where(TeamMember.challenge_id == challenge_id, TeamMember.user_id == user_id)
    )


def get_by_name(session: Session, challenge_id: int, name: str) -> Team | None:
    return session.scalar(select(Team).where(Team.challenge_id == challenge_id, Team.name == name))


def members(session: Session, team_id: int) -> list[TeamMember]:
    return list(session.scalars(select(TeamMember).where(TeamMember.team_id == team_id)))


def list_teams(session: Session, challenge_id: int) -> list[Team]:
    return list(session.scalars(select(Team).where(Team.challenge_id == challenge_id)))


def lock(session: Session, team_id: int) -> Team | None:
    """Row lock on PostgreSQL; SQLite already serialises writers (BEGIN IMMEDIATE)."""
    return session.scalar(select(Team).where(Team.id == team_id).with_for_update())


def membership(session: Session, team_id: int, user_id: int) -> TeamMember | None:
    return session.scalar(
        select(TeamMember).where(TeamMember.team_id == team_id, TeamMember.user_id == user_id)
    )


def pending_invitation(session: Session, team_id: int, user_id: int) -> TeamInvitation | None:
    return session.scalar(
        select(TeamInvitation).where(
            TeamInvitation.team_id == team_id,
            TeamInvitation.user_id == user_id,
            TeamInvitation.status == PENDING,
        )
    )


def pending_for_user(session: Session, user_id: int) -> list[TeamInvitation]:
    stmt = select(TeamInvitation).where(
        TeamInvitation.user_id == user_id, TeamInvitation.status == PENDING
    )
    return list(session.scalars(stmt.order_by(TeamInvitation.id)))


def pending_for_team(session: Session, team_id: int) -> list[TeamInvitation]:
    stmt = select(TeamInvitation).where(
        TeamInvitation.team_id == team_id, TeamInvitation.status == PENDING
    )
    return list(session.scalars(stmt.order_by(TeamInvitation.id)))


def join_requests(
    session: Session, challenge_id: int, *, user_id: int | None = None, status: str | None = None
) -> list[JoinRequest]:
    stmt = select(JoinRequest).where(JoinRequest.challenge_id == challenge_id)
    if user_id is not None:
        stmt = stmt.where(JoinRequest.user_id == user_id)
    if status is not None:
        stmt = stmt.where(JoinRequest.status == status)
    return list(session.scalars(stmt.order_by(JoinRequest.id)))
