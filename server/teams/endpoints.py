from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from server.accounts.models import User
from server.challenges import service as challenges
from server.deps import CurrentUser, SessionDep
from server.errors import NotFound
from server.teams import repository, service

router = APIRouter(tags=["teams"])


class TeamCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=100)


class MemberAdd(BaseModel):
    model_config = ConfigDict(extra="forbid")
    username: str


def _view(session: SessionDep, team_id: int) -> dict[str, Any]:
    team = service.get_team(session, team_id)
    names = [session.get(User, m.user_id) for m in repository.members(session, team.id)]
    return {
        "id": team.id,
        "name": team.name,
        "solo": team.solo,
        "members": sorted(u.username for u in names if u is not None),
    }


@router.post("/challenges/{challenge}/teams", status_code=201)
def create_team(
    challenge: str, body: TeamCreate, user: CurrentUser, session: SessionDep
) -> dict[str, Any]:
    row = challenges.get_challenge(session, challenge)
    team = service.create_team(session, row.id, user, body.name)
    return _view(session, team.id)


@router.get("/challenges/{challenge}/teams/mine")
def my_team(challenge: str, user: CurrentUser, session: SessionDep) -> dict[str, Any]:
    row = challenges.get_challenge(session, challenge)
    team = repository.team_of(session, row.id, user.id)
    if team is None:
        raise NotFound("you are not in a team of this challenge yet", field="team")
    return _view(session, team.id)


@router.post("/teams/{team_id}/members", status_code=201)
def add_member(
    team_id: int, body: MemberAdd, user: CurrentUser, session: SessionDep
) -> dict[str, Any]:
    team = service.get_team(session, team_id)
    service.add_member(session, user, team, body.username)
    return _view(session, team.id)
