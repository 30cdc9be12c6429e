from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from server.db import Base, UTCDateTime, utcnow


class Upload(Base):
    """A resumable upload: verified chunks are appended at `received` until `complete`.

    `received` only ever moves past a chunk whose bytes are written and logged in
    `upload_chunks`; `digest` is set once, from the stored bytes, when the upload completes."""

    __tablename__ = "uploads"

    id: Mapped[int] = mapped_column(primary_key=True)
    key: Mapped[str] = mapped_column(String(36), unique=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    filename: Mapped[str] = mapped_column(String(255))
    size: Mapped[int] = mapped_column(BigInteger)
    received: Mapped[int] = mapped_column(BigInteger, default=0)
    expected_digest: Mapped[str | None] = mapped_column(String(71))
    digest: Mapped[str | None] = mapped_column(String(71))
    status: Mapped[str] = mapped_column(String(16), default="open")  # open | complete
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class UploadChunk(Base):
    """One stored chunk of an upload: where it starts, its length and the SHA-256 of its
    bytes as received. The log lets completion check every stored byte against it."""

    __tablename__ = "upload_chunks"
    __table_args__ = (UniqueConstraint("upload_id", "offset"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    upload_id: Mapped[int] = mapped_column(ForeignKey("uploads.id", ondelete="CASCADE"))
    offset: Mapped[int] = mapped_column(BigInteger)
    length: Mapped[int] = mapped_column(BigInteger)
    digest: Mapped[str] = mapped_column(String(71))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
