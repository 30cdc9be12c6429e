"""Teams per challenge. A user is in at most one team of a challenge; a user who submits
without one becomes a team of one.

Membership changes only with the user's consent: a member invites, the invitee accepts or
declines. A team that has submitted (a charged submission, or one still running) keeps its
members: no one leaves it, and a user whose own team has submitted cannot join another.
Quotas count per team, so without this a member could leave a team that used its quota and
submit again elsewhere (or bring a fresh quota into a team that spent its own). This is the
rule of the peer platforms that allow teams: members may leave or merge only before the team
has submitted.

A team is visible to its members, the challenge's organizers and administrators; to anyone
else it answers exactly as a missing team does (404), and so do invitations not addressed
to the caller."""

from __future__ import annotations

from sqlalchemy import delete
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from server.accounts import repository as accounts_repo
from server.accounts import service as accounts
from server.accounts.models import User
from server.codebases.models import RepositoryLink
from server.db import utcnow
from server.errors import Conflict, InvalidInput, NotFound, NotPermitted
from server.submissions import repository as submissions_repo
from server.teams import repository
from server.teams.models import JoinRequest, Team, TeamInvitation, TeamMember
from server.teams.repository import ACCEPTED, DECLINED, PENDING


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
    _leave_current(session, challenge_id, user, field="name")
    if repository.get_by_name(session, challenge_id, name) is not None:
        raise Conflict(f"a team named {name!r} exists in this challenge", field="name")
    team = Team(challenge_id=challenge_id, name=name)
    session.add(team)
    session.flush()
    _join(session, team, user, field="name")
    return team


def get_visible(session: Session, user: User, team_id: int) -> Team:
    team = session.get(Team, team_id)
    if team is None or not (
        repository.membership(session, team.id, user.id) is not None
        or accounts.is_organizer(session, user, team.challenge_id)
    ):
        raise NotFound(f"no team {team_id}", field="team")
    return team


def invite(session: Session, actor: User, team_id: int, username: str) -> TeamInvitation:
    team = get_visible(session, actor, team_id)
    if repository.membership(session, team.id, actor.id) is None:
        raise NotPermitted("only a member of the team may invite")
    # Usernames are public on heldout (team members, leaderboards): naming a missing one
    # reveals nothing that is not already shown.
    invitee = accounts_repo.get_user_by_name(session, username)
    if invitee is None:
        raise NotFound(f"no user named {username!r}", field="username")
    repository.lock(session, team.id)
    if repository.membership(session, team.id, invitee.id) is not None:
        raise Conflict(f"{username!r} is already a member of this team", field="username")
    existing = repository.pending_invitation(session, team.id, invitee.id)
    if existing is not None:
        return existing
    invitation = TeamInvitation(
        team_id=team.id,
        challenge_id=team.challenge_id,
        user_id=invitee.id,
        invited_by_id=actor.id,
        status=PENDING,
    )
    session.add(invitation)
    session.flush()
    return invitation


def _own_invitation(session: Session, user: User, invitation_id: int) -> TeamInvitation:
    invitation = session.get(TeamInvitation, invitation_id)
    if invitation is None or invitation.user_id != user.id:
        raise NotFound(f"no invitation {invitation_id}", field="invitation")
    if invitation.status != PENDING:
        raise Conflict(
            f"invitation {invitation_id} was already {invitation.status}", field="invitation"
        )
    return invitation


def accept(session: Session, user: User, invitation_id: int) -> Team:
    invitation = _own_invitation(session, user, invitation_id)
    team = session.get(Team, invitation.team_id)
    assert team is not None
    _leave_current(session, team.challenge_id, user, field="invitation")
    repository.lock(session, team.id)
    _join(session, team, user, field="invitation")
    team.solo = False
    invitation.status, invitation.answered_at = ACCEPTED, utcnow()
    return team


def decline(session: Session, user: User, invitation_id: int) -> TeamInvitation:
    invitation = _own_invitation(session, user, invitation_id)
    invitation.status, invitation.answered_at = DECLINED, utcnow()
    return invitation


def leave(session: Session, user: User, team_id: int) -> str:
    """Returns the name of the team left."""
    team = get_visible(session, user, team_id)
    if repository.membership(session, team.id, user.id) is None:
        raise Conflict("you are not a member of this team", field="team")
    name = team.name
    _leave(session, team, user)
    return name


def _leave_current(session: Session, challenge_id: int, user: User, *, field: str) -> None:
    """Before joining or founding a team: a team of one made by submitting is left
    silently if the rule allows; any other team must be left explicitly first."""
    current = repository.team_of(session, challenge_id, user.id)
    if current is None:
        return
    if not current.solo:
        raise Conflict(
            f"you are in team {current.name!r} of this challenge; a user is in at most one "
            "team per challenge: leave it first",
            field=field,
        )
    _leave(session, current, user, field=field)


def _leave(session: Session, team: Team, user: User, *, field: str = "team") -> None:
    # The team's lock orders this against its submissions, which are made under it.
    repository.lock(session, team.id)
    binding = submissions_repo.count_binding(session, team.id)
    if binding:
        raise Conflict(
            f"team {team.name!r} has submitted in this challenge ({binding} submission(s) "
            "charged or running): members of a team that has submitted cannot leave it or "
            "join another team of the challenge, so that no quota is used twice",
            field=field,
        )
    member = repository.membership(session, team.id, user.id)
    assert member is not None
    session.delete(member)
    # A repository link set up by the leaver submits as them: it goes with them.
    session.execute(
        delete(RepositoryLink).where(
            RepositoryLink.team_id == team.id, RepositoryLink.user_id == user.id
        )
    )
    session.flush()
    if not repository.members(session, team.id) and not submissions_repo.count_for_team(
        session, team.id
    ):
        session.delete(team)  # nobody left and nothing to keep: the name is free again
        session.flush()


def _join(session: Session, team: Team, user: User, *, field: str) -> None:
    try:
        # A savepoint: a concurrent submission of the same user creates their team of one,
        # and the unique key (challenge, user) must then refuse this join cleanly.
        with session.begin_nested():
            session.add(
                TeamMember(team_id=team.id, challenge_id=team.challenge_id, user_id=user.id)
            )
            session.flush()
    except IntegrityError as exc:
        raise Conflict(
            "you joined another team of this challenge meanwhile; a user is in at most one",
            field=field,
        ) from exc


def pending_for(session: Session, user: User) -> list[TeamInvitation]:
    return repository.pending_for_user(session, user.id)


def get_team(session: Session, team_id: int) -> Team:
    team = session.get(Team, team_id)
    if team is None:
        raise NotFound(f"no team {team_id}", field="team")
    return team


APPROVED = "approved"


def request_join(session: Session, challenge_id: int, user: User, message: str) -> JoinRequest:
    """Ask the organizers to let you in; asking again while one is pending returns it, so
    a user cannot flood the organizers' queue."""
    message = message.strip()
    if len(message) > 500:
        raise InvalidInput("a join request's message has at most 500 characters", field="message")
    mine = repository.join_requests(session, challenge_id, user_id=user.id)
    if any(r.status == APPROVED for r in mine):
        raise Conflict(
            "your request to join this challenge was already approved", field="challenge"
        )
    pending = [r for r in mine if r.status == PENDING]
    if pending:
        return pending[0]
    row = JoinRequest(challenge_id=challenge_id, user_id=user.id, message=message)
    session.add(row)
    session.flush()
    return row


def my_join_requests(session: Session, challenge_id: int, user: User) -> list[JoinRequest]:
    return repository.join_requests(session, challenge_id, user_id=user.id)


def pending_join_requests(session: Session, user: User, challenge_id: int) -> list[JoinRequest]:
    accounts.require_organizer(session, user, challenge_id)
    return repository.join_requests(session, challenge_id, status=PENDING)
