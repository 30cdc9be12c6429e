from __future__ import annotations

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from server.uploads.models import Upload, UploadChunk

OPEN, COMPLETE = "open", "complete"


def by_key(session: Session, key: str) -> Upload | None:
    return session.scalar(select(Upload).where(Upload.key == key))


def own_with_digest(session: Session, user_id: int, digest: str, status: str) -> Upload | None:
    """The user's latest upload of this content: completed (`digest`) or still open
    (`expected_digest`)."""
    column = Upload.digest if status == COMPLETE else Upload.expected_digest
    return session.scalar(
        select(Upload)
        .where(Upload.user_id == user_id, Upload.status == status, column == digest)
        .order_by(Upload.id.desc())
        .limit(1)
    )


def chunks(session: Session, upload_id: int) -> list[UploadChunk]:
    stmt = select(UploadChunk).where(UploadChunk.upload_id == upload_id)
    return list(session.scalars(stmt.order_by(UploadChunk.offset)))


def advance(session: Session, upload_id: int, offset: int, length: int, digest: str) -> bool:
    """Record a stored chunk; false if the upload is no longer open at `offset`."""
    result = session.execute(
        update(Upload)
        .where(Upload.id == upload_id, Upload.status == OPEN, Upload.received == offset)
        .values(received=offset + length)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        return False
    session.add(UploadChunk(upload_id=upload_id, offset=offset, length=length, digest=digest))
    session.flush()
    return True


def roll_back(session: Session, upload_id: int, to: int) -> None:
    """Forget every chunk from byte `to` on."""
    session.execute(
        delete(UploadChunk).where(UploadChunk.upload_id == upload_id, UploadChunk.offset >= to)
    )
    session.execute(
        update(Upload)
        .where(Upload.id == upload_id, Upload.status == OPEN)
        .values(received=to)
        .execution_options(synchronize_session=False)
    )


def complete(session: Session, upload_id: int, size: int, digest: str) -> bool:
    result = session.execute(
        update(Upload)
        .where(Upload.id == upload_id, Upload.status == OPEN, Upload.received == size)
        .values(status=COMPLETE, digest=digest)
        .execution_options(synchronize_session=False)
    )
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]
