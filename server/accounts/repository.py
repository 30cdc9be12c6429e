from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from server.accounts.models import ApiToken, User
from server.challenges.models import ChallengeOrganizer


def get_user_by_name(session: Session, username: str) -> User | None:
    return session.scalar(select(User).where(User.username == username))


def get_token_by_hash(session: Session, token_hash: str) -> ApiToken | None:
    return session.scalar(
        select(ApiToken).where(ApiToken.token_hash == token_hash, ApiToken.revoked_at.is_(None))
    )


def is_organizer(session: Session, user_id: int, challenge_id: int) -> bool:
    row = session.scalar(
        select(ChallengeOrganizer.id).where(
            ChallengeOrganizer.user_id == user_id, ChallengeOrganizer.challenge_id == challenge_id
        )
    )
    return row is not None


def list_tokens(session: Session, user_id: int) -> list[ApiToken]:
    return list(session.scalars(select(ApiToken).where(ApiToken.user_id == user_id)))
