from __future__ import annotations

from fastapi import APIRouter

from server.accounts import repository, service
from server.accounts.schemas import TokenCreate, TokenCreated, TokenRead, UserCreate, UserRead
from server.deps import CurrentUser, SessionDep
from server.params import PathId

router = APIRouter(tags=["accounts"])


@router.get("/me", response_model=UserRead)
def me(user: CurrentUser) -> object:
    return user


@router.post("/users", response_model=UserRead, status_code=201)
def create_user(body: UserCreate, user: CurrentUser, session: SessionDep) -> object:
    service.require_admin(user)
    return service.create_user(session, body.username, email=body.email, is_admin=body.is_admin)


@router.post("/tokens", response_model=TokenCreated, status_code=201)
def create_token(body: TokenCreate, user: CurrentUser, session: SessionDep) -> object:
    row, token = service.create_token(session, user, body.name)
    return TokenCreated(**TokenRead.model_validate(row).model_dump(), token=token)


@router.get("/tokens", response_model=list[TokenRead])
def list_tokens(user: CurrentUser, session: SessionDep) -> object:
    return repository.list_tokens(session, user.id)


@router.delete("/tokens/{token_id}", status_code=204)
def revoke_token(token_id: PathId, user: CurrentUser, session: SessionDep) -> None:
    service.revoke_token(session, user, token_id)
