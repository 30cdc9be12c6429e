from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from server.deps import CurrentUser, SessionDep, SettingsDep, StoreDep
from server.uploads import service
from server.uploads.models import Upload

router = APIRouter(tags=["uploads"])


class UploadStart(BaseModel):
    model_config = ConfigDict(extra="forbid")
    filename: str = Field(min_length=1, max_length=255)
    size: int = Field(gt=0)
    sha256: str | None = Field(
        None,
        pattern=r"^sha256:[0-9a-f]{64}$",
        description="if the server already holds this content, nothing needs sending",
    )


def _view(upload: Upload) -> dict[str, Any]:
    return {
        "key": upload.key,
        "filename": upload.filename,
        "size": upload.size,
        "received": upload.received,
        "status": upload.status,
        "digest": upload.digest,
    }


@router.post("/uploads", status_code=201)
def start(
    body: UploadStart,
    user: CurrentUser,
    session: SessionDep,
    store: StoreDep,
    settings: SettingsDep,
) -> dict[str, Any]:
    upload = service.start(
        session, store, user, body.filename, body.size, settings.max_upload_bytes, body.sha256
    )
    return _view(upload)


@router.get("/uploads/{key}")
def status(key: str, user: CurrentUser, session: SessionDep) -> dict[str, Any]:
    return _view(service.get_own(session, user, key))


@router.put("/uploads/{key}")
async def append(
    key: str,
    request: Request,
    user: CurrentUser,
    session: SessionDep,
    store: StoreDep,
    offset: int = Query(0, ge=0),
) -> dict[str, Any]:
    """Raw body, streamed to disk: the server never holds a whole chunk in memory."""
    upload = service.get_own(session, user, key)
    upload = await service.append(session, store, upload, offset, request.stream())
    return _view(upload)
