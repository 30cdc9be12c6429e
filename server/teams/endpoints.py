from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.orm import Session

from server.accounts.models import User
from server.challenges import service as challenges
from server.challenges.models import Challenge
from server.deps import CurrentUser, SessionDep
from server.errors import NotFound
from server.params import PathId
from server.teams import repository, service
from server.teams.models import JoinRequest, Team, TeamInvitation

router = APIRouter(tags=["teams"])

Id = PathId


class TeamCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=100)


class JoinRequestCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    message: str = Field("", max_length=500, description="why you want to take part")


class InvitationCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    username: str = Field(min_length=1, max_length=100)


def _name(session: Session, user_id: int | None) -> str | None:
    user = session.get(User, user_id) if user_id is not None else None
    return user.username if user is not None else None


def _view(session: Session, team: Team) -> dict[str, Any]:
    names = [_name(session, m.user_id) for m in repository.members(session, team.id)]
    invited = [_name(session, i.user_id) for i in repository.pending_for_team(session, team.id)]
    return {
        "id": team.id,
        "name": team.name,
        "solo": team.solo,
        "members": sorted(n for n in names if n),
        "invited": sorted(n for n in invited if n),
    }


def _invitation_view(session: Session, inv: TeamInvitation) -> dict[str, Any]:
    team = session.get(Team, inv.team_id)
    challenge = session.get(Challenge, inv.challenge_id)
    assert team is not None and challenge is not None
    return {
        "id": inv.id,
        "team_id": team.id,
        "team": team.name,
        "challenge": challenge.slug,
        "invitee": _name(session, inv.user_id),
        "invited_by": _name(session, inv.invited_by_id),
        "status": inv.status,
        "created_at": inv.created_at,
        "answered_at": inv.answered_at,
    }


@router.post("/challenges/{challenge}/teams", status_code=201)
def create_team(
    challenge: str, body: TeamCreate, user: CurrentUser, session: SessionDep
) -> dict[str, Any]:
    row = challenges.get_challenge(session, challenge)
    return _view(session, service.create_team(session, row.id, user, body.name))


@router.get("/challenges/{challenge}/teams/mine")
def my_team(challenge: str, user: CurrentUser, session: SessionDep) -> dict[str, Any]:
    row = challenges.get_challenge(session, challenge)
    team = repository.team_of(session, row.id, user.id)
    if team is None:
        raise NotFound("you are not in a team of this challenge yet", field="team")
    return _view(session, team)


@router.get("/teams/{team_id}")
def get_team(team_id: Id, user: CurrentUser, session: SessionDep) -> dict[str, Any]:
    """Members and pending invitees; seen by members and the challenge's organizers."""
    return _view(session, service.get_visible(session, user, team_id))


@router.post("/teams/{team_id}/invitations", status_code=201)
def invite(
    team_id: Id, body: InvitationCreate, user: CurrentUser, session: SessionDep
) -> dict[str, Any]:
    """Invite a user; they join only if they accept. Inviting again returns the pending one."""
    return _invitation_view(session, service.invite(session, user, team_id, body.username))


@router.post("/teams/{team_id}/leave")
def leave(team_id: Id, user: CurrentUser, session: SessionDep) -> dict[str, Any]:
    """Leave a team; refused once the team has submitted (no quota is used twice)."""
    return {"left": service.leave(session, user, team_id)}


@router.get("/team-invitations")
def my_invitations(user: CurrentUser, session: SessionDep) -> list[dict[str, Any]]:
    """Your pending invitations, in every challenge."""
    return [_invitation_view(session, i) for i in service.pending_for(session, user)]


@router.post("/team-invitations/{invitation_id}/accept")
def accept(invitation_id: Id, user: CurrentUser, session: SessionDep) -> dict[str, Any]:
    """Join the inviting team (a team of one that never submitted is left on the way)."""
    return _view(session, service.accept(session, user, invitation_id))


@router.post("/team-invitations/{invitation_id}/decline")
def decline(invitation_id: Id, user: CurrentUser, session: SessionDep) -> dict[str, Any]:
    return _invitation_view(session, service.decline(session, user, invitation_id))


def _join_view(session: Session, slug: str, row: JoinRequest) -> dict[str, Any]:
    return {
        "id": row.id,
        "challenge": slug,
        "user": _name(session, row.user_id),
        "message": row.message,
        "status": row.status,
        "created_at": row.created_at,
        "decided_at": row.decided_at,
    }


@router.post("/challenges/{challenge}/join-requests", status_code=201)
def request_join(
    challenge: str, body: JoinRequestCreate, user: CurrentUser, session: SessionDep
) -> dict[str, Any]:
    """Ask this challenge's organizers to let you in (to its invite-only phases); asking
    again while a request is pending returns that one."""
    row = challenges.get_challenge(session, challenge)
    return _join_view(session, row.slug, service.request_join(session, row.id, user, body.message))


@router.get("/challenges/{challenge}/join-requests/mine")
def my_join_requests(
    challenge: str, user: CurrentUser, session: SessionDep
) -> list[dict[str, Any]]:
    row = challenges.get_challenge(session, challenge)
    return [
        _join_view(session, row.slug, r) for r in service.my_join_requests(session, row.id, user)
    ]


@router.get("/challenges/{challenge}/join-requests")
def pending_join_requests(
    challenge: str, user: CurrentUser, session: SessionDep
) -> list[dict[str, Any]]:
    """Pending requests, for this challenge's organizers only."""
    row = challenges.get_challenge(session, challenge)
    return [
        _join_view(session, row.slug, r)
        for r in service.pending_join_requests(session, user, row.id)
    ]


@router.post("/challenges/{challenge}/join-requests/{request_id}/approve")
def approve_join(
    challenge: str, request_id: Id, user: CurrentUser, session: SessionDep
) -> dict[str, Any]:
    """Approve: the requester's team (a team of one if they have none) is invited to every
    invite-only phase of the challenge. Organizers only."""
    row = challenges.get_challenge(session, challenge)
    decided = challenges.decide_join(session, user, row.id, request_id, approve=True)
    return _join_view(session, row.slug, decided)


@router.post("/challenges/{challenge}/join-requests/{request_id}/decline")
def decline_join(
    challenge: str, request_id: Id, user: CurrentUser, session: SessionDep
) -> dict[str, Any]:
    row = challenges.get_challenge(session, challenge)
    decided = challenges.decide_join(session, user, row.id, request_id, approve=False)
    return _join_view(session, row.slug, decided)
