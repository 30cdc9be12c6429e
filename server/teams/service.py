"""Teams per challenge. A user is in at most one team of a challenge; a user who submits
without one becomes a team of one."""

from __future__ import annotations

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from server.accounts import repository as accounts_repo
from server.accounts.models import User
from server.errors import Conflict, InvalidInput, NotFound, NotPermitted
from server.teams import repository
from server.teams.models import Team, TeamMember


def team_for(session: Session, challenge_id: int, user: User) -> Team:
    team = repository.team_of(session, challenge_id, user.id)
    if team is not None:
        return team
    name = user.username
    n = 1
    while repository.get_by_name(session, challenge_id, name) is not None:
        n += 1
        name = f"{user.username}-{n}"
    try:
        # A savepoint: two first submissions of one user race to create the solo team, and
        # the loser must read the winner's team rather than fail.
        with session.begin_nested():
            team = Team(challenge_id=challenge_id, name=name, solo=True)
            session.add(team)
            session.flush()
            session.add(TeamMember(team_id=team.id, challenge_id=challenge_id, user_id=user.id))
            session.flush()
    except IntegrityError:
        team = repository.team_of(session, challenge_id, user.id)
        if team is None:
            raise
    return team


def create_team(session: Session, challenge_id: int, user: User, name: str) -> Team:
    name = name.strip()
    if not 1 <= len(name) <= 100:
        raise InvalidInput("a team name has 1 to 100 characters", field="name")
    if repository.team_of(session, challenge_id, user.id) is not None:
        raise Conflict(
            "you are already in a team of this challenge; a user is in at most one",
            field="name",
        )
    if repository.get_by_name(session, challenge_id, name) is not None:
        raise Conflict(f"a team named {name!r} exists in this challenge", field="name")
    team = Team(challenge_id=challenge_id, name=name)
    session.add(team)
    session.flush()
    session.add(TeamMember(team_id=team.id, challenge_id=challenge_id, user_id=user.id))
    session.flush()
    return team


def add_member(session: Session, actor: User, team: Team, username: str) -> TeamMember:
    if repository.team_of(session, team.challenge_id, actor.id) != team and not actor.is_admin:
        raise NotPermitted("only a member of the team may add members")
    user = accounts_repo.get_user_by_name(session, username)
    if user is None:
        raise NotFound(f"no user named {username!r}", field="username")
    if repository.team_of(session, team.challenge_id, user.id) is not None:
        raise Conflict(
            f"{username!r} is already in a team of this challenge; teams may not overlap",
            field="username",
        )
    member = TeamMember(team_id=team.id, challenge_id=team.challenge_id, user_id=user.id)
    session.add(member)
    team.solo = False
    session.flush()
    return member


def get_team(session: Session, team_id: int) -> Team:
    team = session.get(Team, team_id)
    if team is None:
        raise NotFound(f"no team {team_id}", field="team")
    return team
