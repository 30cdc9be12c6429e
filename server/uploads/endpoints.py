from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any

import anyio
import anyio.from_thread
from fastapi import APIRouter, Header, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import ClientDisconnect

from server.deps import BriefUser, CurrentUser, SessionDep, SettingsDep, StoreDep
from server.errors import Conflict
from server.storage import ArtifactStore
from server.uploads import service
from server.uploads.models import Upload

router = APIRouter(tags=["uploads"])

# A chunk whose bytes stop arriving for this long is given up (its lock released), as a
# proxy's body timeout would: a half-open connection must not block the upload's resume.
IDLE_TIMEOUT_S = 60.0
# Bytes handed from the event loop to the writing thread at a time: bounds memory per
# request and the number of thread hops.
BATCH_BYTES = 1024 * 1024


class UploadStart(BaseModel):
    model_config = ConfigDict(extra="forbid")
    filename: str = Field(min_length=1, max_length=255)
    size: int = Field(gt=0, le=2**63 - 1)
    sha256: str | None = Field(
        None,
        pattern=r"^sha256:[0-9a-f]{64}$",
        description="the file's digest: the server then resumes your open upload of it, or "
        "completes at once if you uploaded it before, and refuses bytes that differ",
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
    """`received` is where the next chunk starts."""
    return _view(service.get_own(session, user, key))


@router.put(
    "/uploads/{key}",
    responses={
        409: {"description": "offset is not the server's (see `received`), the chunk was cut "
              "off or damaged, or another chunk of this upload is arriving: resume at "
              "`received`"},
        413: {"description": "the chunk runs past the declared size; nothing of it was kept"},
    },
)  # fmt: skip
def append(
    key: str,
    request: Request,
    user: BriefUser,
    settings: SettingsDep,
    offset: Annotated[int, Query(ge=0, le=2**63 - 1)] = 0,
    upload_checksum: Annotated[
        str | None, Header(description="tus checksum extension: 'sha256 <base64 digest>'")
    ] = None,
    # The transport's own header, not a parameter to document: a client sending one that
    # disagrees with its body breaks HTTP framing before the app sees the request.
    content_length: Annotated[
        int | None, Header(ge=0, le=2**63 - 1, include_in_schema=False)
    ] = None,
) -> dict[str, Any]:
    """Append the raw body at `offset`. A sync endpoint (in the threadpool): the body is
    streamed to disk and hashed there, never on the event loop and never whole in memory,
    and no database transaction is open while it arrives."""
    upload = service.append(
        settings,
        ArtifactStore(settings.artifacts_path),
        user,
        key,
        offset,
        _body(request),
        length=content_length,
        checksum=service.parse_checksum(upload_checksum),
    )
    return _view(upload)


def _body(request: Request) -> Iterator[bytes]:
    """The request body in batches of up to BATCH_BYTES, read on the event loop from this
    worker thread."""
    stream = request.stream().__aiter__()

    async def batch() -> tuple[bytes, bool]:
        buf = bytearray()
        while len(buf) < BATCH_BYTES:
            try:
                with anyio.fail_after(IDLE_TIMEOUT_S):
                    buf += await stream.__anext__()
            except StopAsyncIteration:
                return bytes(buf), True
        return bytes(buf), False

    done = False
    while not done:
        try:
            data, done = anyio.from_thread.run(batch)
        except ClientDisconnect:
            raise Conflict(
                "the connection closed before the chunk was complete", field="offset"
            ) from None
        except TimeoutError:
            raise Conflict(
                f"no bytes of the chunk arrived for {IDLE_TIMEOUT_S:g} s; it was given up",
                field="offset",
            ) from None
        if data:
            yield data
