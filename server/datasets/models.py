from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Boolean, ForeignKey, Integer, String, UniqueConstraint, false
from sqlalchemy.orm import Mapped, mapped_column

from server.db import Base, UTCDateTime, utcnow


class Dataset(Base):
    """Cases (images per interface) plus a labels table, stored content-addressed.

    `digest` covers every file and the labels; `version` is bumped when the content changes,
    which is what makes scores keyed by ground-truth version go stale.
    """

    __tablename__ = "datasets"
    __table_args__ = (UniqueConstraint("challenge_id", "slug"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    challenge_id: Mapped[int] = mapped_column(
        ForeignKey("challenges.id", ondelete="CASCADE"), index=True
    )
    slug: Mapped[str] = mapped_column(String(63))
    title: Mapped[str] = mapped_column(String(200), default="")
    public: Mapped[bool] = mapped_column(Boolean, default=False)
    digest: Mapped[str] = mapped_column(String(71))
    labels_digest: Mapped[str] = mapped_column(String(71))
    label_columns: Mapped[list[str]] = mapped_column(JSON)
    n_cases: Mapped[int] = mapped_column(Integer)
    version: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Case(Base):
    """One case of a dataset. `public_name` is the random UUID an algorithm sees as file
    name; `name` (the patient id) is known only to the platform and the evaluator."""

    __tablename__ = "cases"
    __table_args__ = (UniqueConstraint("dataset_id", "name"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    dataset_id: Mapped[int] = mapped_column(
        ForeignKey("datasets.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(200))
    public_name: Mapped[str] = mapped_column(String(36), unique=True)
    # {interface slug: {"digest": "sha256:...", "ext": ".mha", "size": n}}
    files: Mapped[dict[str, Any]] = mapped_column(JSON)
    # A case a newer version of its dataset no longer has: kept (jobs that ran on it refer
    # to it), never listed, run or scored again; it comes back if a later version has it.
    retired: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
