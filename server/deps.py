"""FastAPI dependencies: one session per request (committed once), the current user."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from server.accounts import service as accounts
from server.accounts.models import User
from server.config import Settings
from server.db import session_scope
from server.nodes import service as nodes
from server.nodes.models import NodeToken
from server.storage import ArtifactStore

# Requests that only read: on SQLite their transaction takes no write lock, so a slow
# writer never holds them up (WAL readers see the last commit).
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def get_session(request: Request) -> Iterator[Session]:
    settings: Settings = request.app.state.settings
    with session_scope(settings, write=request.method not in READ_METHODS) as session:
        yield session


# scope="function": commit before the response is sent, so a client never reads ahead of it.
SessionDep = Annotated[Session, Depends(get_session, scope="function")]


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def _store(request: Request) -> ArtifactStore:
    return ArtifactStore(request.app.state.settings.artifacts_path)


SettingsDep = Annotated[Settings, Depends(_settings)]
StoreDep = Annotated[ArtifactStore, Depends(_store)]


def bearer_token(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value:
        return value.strip()
    return None


def get_current_user(request: Request, session: SessionDep) -> User:
    return accounts.authenticate(session, bearer_token(request))


CurrentUser = Annotated[User, Depends(get_current_user)]


def get_user_briefly(request: Request) -> User:
    """The current user, read in a session that is closed before the endpoint runs: for
    endpoints that stream a request body and must hold no transaction while they read it
    (on SQLite every transaction takes the write lock)."""
    with session_scope(request.app.state.settings, write=False) as session:
        return accounts.authenticate(session, bearer_token(request))


BriefUser = Annotated[User, Depends(get_user_briefly)]


def get_node_briefly(request: Request) -> NodeToken:
    """The calling worker node, by its node token (never a user's token), read in a session
    closed before the endpoint runs: artifact transfers hold no transaction."""
    with session_scope(request.app.state.settings, write=False) as session:
        row = nodes.authenticate_node(session, request.headers.get(nodes.NODE_TOKEN_HEADER))
        session.expunge(row)
        return row


CurrentNode = Annotated[NodeToken, Depends(get_node_briefly)]
