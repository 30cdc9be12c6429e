"""Users, API tokens and roles. A token is `hld_<random>`; only its SHA-256 is stored."""

from __future__ import annotations

import hashlib
import re
import secrets

from sqlalchemy.orm import Session

from server.accounts import repository
from server.accounts.models import ApiToken, User
from server.db import utcnow
from server.errors import AlreadyExists, InvalidInput, NotFound, NotPermitted, Unauthorized

TOKEN_PREFIX = "hld_"
USERNAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_user(
    session: Session, username: str, *, email: str | None = None, is_admin: bool = False
) -> User:
    if not USERNAME_RE.match(username):
        raise InvalidInput("username must be 1-64 letters, digits, '_', '.', '-'", field="username")
    if repository.get_user_by_name(session, username):
        raise AlreadyExists(f"user {username!r} already exists", field="username")
    user = User(username=username, email=email, is_admin=is_admin)
    session.add(user)
    session.flush()
    return user


def get_or_create_user(session: Session, username: str, *, is_admin: bool = False) -> User:
    user = repository.get_user_by_name(session, username)
    if user is None:
        return create_user(session, username, is_admin=is_admin)
    if is_admin and not user.is_admin:
        user.is_admin = True
    return user


def get_user(session: Session, username: str) -> User:
    user = repository.get_user_by_name(session, username)
    if user is None:
        raise NotFound(f"no user named {username!r}", field="username")
    return user


def create_token(session: Session, user: User, name: str = "default") -> tuple[ApiToken, str]:
    """Returns the row and the token itself, which is never stored and shown only now."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    row = ApiToken(
        user_id=user.id, name=name[:100], prefix=token[:12], token_hash=hash_token(token)
    )
    session.add(row)
    session.flush()
    return row, token


def authenticate(session: Session, token: str | None) -> User:
    if not token:
        raise Unauthorized("an API token is required: 'Authorization: Bearer hld_...'")
    row = repository.get_token_by_hash(session, hash_token(token))
    if row is None:
        raise Unauthorized("the API token is unknown or revoked")
    user = session.get(User, row.user_id)
    if user is None:
        raise Unauthorized("the API token's user no longer exists")
    row.last_used_at = utcnow()
    return user


def revoke_token(session: Session, user: User, token_id: int) -> None:
    row = session.get(ApiToken, token_id)
    if row is None or (row.user_id != user.id and not user.is_admin):
        raise NotFound(f"no token {token_id}")
    row.revoked_at = utcnow()


def is_organizer(session: Session, user: User, challenge_id: int) -> bool:
    return user.is_admin or repository.is_organizer(session, user.id, challenge_id)


def require_organizer(session: Session, user: User, challenge_id: int) -> None:
    if not is_organizer(session, user, challenge_id):
        raise NotPermitted("only an organizer of this challenge may do this")


def require_admin(user: User) -> None:
    if not user.is_admin:
        raise NotPermitted("only an administrator may do this")
