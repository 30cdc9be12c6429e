from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column

from server.db import Base, UTCDateTime, utcnow


class Upload(Base):
    """A resumable upload: chunks are appended at `received` until `complete`."""

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
