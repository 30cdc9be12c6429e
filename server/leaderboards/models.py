from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Float, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from server.db import Base, UTCDateTime, utcnow


class Result(Base):
    """A submission's scores, keyed by what produced them: a change of evaluator, metric
    config or ground truth makes a new key, so a stale score is never shown as current."""

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


class Board(Base):
    """A phase's leaderboard and statistics as served, computed when a result changes rather
    than when someone looks: one row per phase and rule key (metric config, ground truth,
    evaluator), stamped with the phase's board generation it reflects. Readers serve the
    stored JSON as is; a recompute replaces the row in one write, so a reader sees the
    old board or the new one, never a mix."""

    __tablename__ = "leaderboard_boards"
    __table_args__ = (UniqueConstraint("phase_id", "rule_key"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    phase_id: Mapped[int] = mapped_column(ForeignKey("phases.id", ondelete="CASCADE"), index=True)
    rule_key: Mapped[str] = mapped_column(String(64))
    generation: Mapped[int] = mapped_column(Integer)
    etag: Mapped[str] = mapped_column(String(64))
    leaderboard_json: Mapped[str] = mapped_column(Text)
    statistics_json: Mapped[str] = mapped_column(Text)
    computed_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
