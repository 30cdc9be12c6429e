from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Float, ForeignKey, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from server.db import Base, UTCDateTime, utcnow


class Result(Base):
    """A submission's scores under one key: evaluator version, metric config version and
    ground-truth digest. Recording under an existing key keeps the first row; a row whose key
    is not the phase's present one is stale, neither shown nor ranked."""

    __tablename__ = "results"
    __table_args__ = (
        UniqueConstraint(
            "submission_id", "evaluator_version", "metrics_version", "ground_truth_digest"
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    submission_id: Mapped[int] = mapped_column(
        ForeignKey("submissions.id", ondelete="CASCADE"), index=True
    )
    phase_id: Mapped[int] = mapped_column(ForeignKey("phases.id", ondelete="CASCADE"), index=True)
    evaluator_version: Mapped[str] = mapped_column(String(80))
    metrics_version: Mapped[int] = mapped_column(Integer)
    ground_truth_digest: Mapped[str] = mapped_column(String(71))
    primary_metric: Mapped[str] = mapped_column(String(63))
    primary_value: Mapped[float | None] = mapped_column(Float)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
