"""Resumable, streamed uploads into the artifact store. Chunks are appended at the offset the
server has, the SHA-256 is computed while streaming, and content already in the store (same
digest) is never stored twice."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from server.accounts.models import User
from server.errors import Conflict, InvalidInput, NotFound, TooLarge
from server.storage import ArtifactStore, sha256_file
from server.uploads.models import Upload

# Running hashes of uploads streamed in order by this process; a resumed upload whose hash
# state was lost is hashed again from disk at completion.
_hashers: dict[str, tuple[int, hashlib._Hash]] = {}


def _part(store: ArtifactStore, key: str) -> Path:
    return store.root / "uploads" / key


def start(
    session: Session,
    store: ArtifactStore,
    user: User,
    filename: str,
    size: int,
    max_bytes: int,
    expected_digest: str | None = None,
) -> Upload:
    if size <= 0:
        raise InvalidInput("size must be positive", field="size")
    if size > max_bytes:
        raise TooLarge(f"{size} bytes is over the upload limit of {max_bytes}", field="size")
    upload = Upload(
        key=str(uuid.uuid4()),
        user_id=user.id,
        filename=filename[:255],
        size=size,
        expected_digest=expected_digest,
    )
    if expected_digest and store.exists(expected_digest):
        # Same content already stored: nothing to send.
        upload.status, upload.digest, upload.received = "complete", expected_digest, size
    else:
        _part(store, upload.key).parent.mkdir(parents=True, exist_ok=True)
        _part(store, upload.key).touch()
    session.add(upload)
    session.flush()
    return upload


def get_own(session: Session, user: User, key: str) -> Upload:
    upload = session.scalar(select(Upload).where(Upload.key == key))
    if upload is None or upload.user_id != user.id:
        raise NotFound(f"no upload {key!r}", field="upload")
    return upload


def get_complete(session: Session, user: User, key: str) -> Upload:
    upload = get_own(session, user, key)
    if upload.status != "complete" or not upload.digest:
        raise InvalidInput(
            f"upload {key!r} is not complete ({upload.received} of {upload.size} bytes)",
            field="upload",
        )
    return upload


async def append(
    session: Session,
    store: ArtifactStore,
    upload: Upload,
    offset: int,
    body: AsyncIterator[bytes],
) -> Upload:
    if upload.status == "complete":
        return upload
    if offset != upload.received:
        raise Conflict(
            f"chunk starts at byte {offset}, the server has {upload.received}: resume there",
            field="offset",
            received=upload.received,
        )
    part = _part(store, upload.key)
    pos, hasher = _hashers.get(upload.key, (0, hashlib.sha256()))
    in_order = pos == offset
    received = offset
    with part.open("r+b") as f:
        f.seek(offset)
        f.truncate()
        async for chunk in body:
            received += len(chunk)
            if received > upload.size:
                raise TooLarge(
                    f"upload {upload.key} sent more than its declared {upload.size} bytes",
                    field="size",
                )
            f.write(chunk)
            if in_order:
                hasher.update(chunk)
    upload.received = received
    if in_order:
        _hashers[upload.key] = (received, hasher)
    else:
        _hashers.pop(upload.key, None)
    if received == upload.size:
        _finish(store, upload)
    return upload


def _finish(store: ArtifactStore, upload: Upload) -> None:
    part = _part(store, upload.key)
    state = _hashers.pop(upload.key, None)
    if state is not None and state[0] == upload.size:
        digest = "sha256:" + state[1].hexdigest()
    else:
        digest = sha256_file(part)
    if upload.expected_digest and digest != upload.expected_digest:
        part.unlink(missing_ok=True)
        upload.received = 0
        part.touch()
        raise Conflict(
            f"upload {upload.key}: content digest {digest} differs from the declared "
            f"{upload.expected_digest}; start again",
            field="expected_digest",
        )
    store.adopt(part, digest)
    upload.digest, upload.status = digest, "complete"
