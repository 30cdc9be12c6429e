"""Users, API tokens and roles. A token is `hld_<random>`; only its SHA-256 is stored."""

from __future__ import annotations

import hashlib
import logging
import queue
import re
import secrets
import threading
import time
from datetime import datetime, timedelta

from sqlalchemy import update
from sqlalchemy.orm import Session

from server.accounts import repository
from server.accounts.models import ApiToken, User
from server.config import Settings
from server.db import utcnow
from server.errors import AlreadyExists, InvalidInput, NotFound, NotPermitted, Unauthorized

log = logging.getLogger(__name__)
TOKEN_PREFIX = "hld_"
# A token's last_used_at is written at most this often, and never in the request's own
# transaction: a read must not take SQLite's write lock (nor wait for it) to say it ran.
TOUCH_EVERY = timedelta(seconds=60)
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
    settings = session.info.get("settings")
    if settings is not None:
        note_use(settings, row.id, row.last_used_at)
    return user


def note_use(settings: Settings, token_id: int, last_used_at: datetime | None) -> None:
    """The token was used now: its last_used_at is written later if it is a minute old."""
    now = utcnow()
    if last_used_at is None or now - last_used_at >= TOUCH_EVERY:
        _touch_later(settings, token_id, now)


_touches: queue.SimpleQueue[tuple[object, int, datetime]] = queue.SimpleQueue()
_queued_at: dict[int, float] = {}  # token id -> monotonic time its last touch was queued
_toucher_lock = threading.Lock()
_toucher: threading.Thread | None = None


def _touch_later(settings: Settings, token_id: int, now: datetime) -> None:
    """Queue the write of last_used_at for a background thread (at most once a minute per
    token in this process); a lost touch costs nothing but a staler timestamp."""
    global _toucher
    mono = time.monotonic()
    with _toucher_lock:
        if mono - _queued_at.get(token_id, -1e9) < TOUCH_EVERY.total_seconds():
            return
        _queued_at[token_id] = mono
        if _toucher is None or not _toucher.is_alive():
            # Daemon: a touch waiting on a busy database never delays the process's exit.
            _toucher = threading.Thread(target=_touch_forever, name="token-touch", daemon=True)
            _toucher.start()
    _touches.put((settings, token_id, now))


def _touch_forever() -> None:
    from server.db import session_scope

    while True:
        settings, token_id, now = _touches.get()
        try:
            with session_scope(settings) as session:  # type: ignore[arg-type]
                session.execute(
                    update(ApiToken)
                    .where(ApiToken.id == token_id)
                    .values(last_used_at=now)
                    .execution_options(synchronize_session=False)
                )
        except Exception as exc:  # best effort: the next use writes it again
            log.info("last_used_at of token %s not written: %s", token_id, exc)
            with _toucher_lock:
                _queued_at.pop(token_id, None)


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
