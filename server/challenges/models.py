from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from server.challenges.schemas import PhaseSpec
from server.db import Base, UTCDateTime, utcnow


class Challenge(Base):
    __tablename__ = "challenges"

    id: Mapped[int] = mapped_column(primary_key=True)
    slug: Mapped[str] = mapped_column(String(63), unique=True)
    title: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ChallengeOrganizer(Base):
    __tablename__ = "challenge_organizers"
    __table_args__ = (UniqueConstraint("challenge_id", "user_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    challenge_id: Mapped[int] = mapped_column(
        ForeignKey("challenges.id", ondelete="CASCADE"), index=True
    )
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)


class Phase(Base):
    """A phase's interfaces, limits, rules and metrics live in `spec` (a validated PhaseSpec)
    so the bundle, the API and the worker share one definition."""

    __tablename__ = "phases"
    __table_args__ = (UniqueConstraint("challenge_id", "slug"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    challenge_id: Mapped[int] = mapped_column(
        ForeignKey("challenges.id", ondelete="CASCADE"), index=True
    )
    slug: Mapped[str] = mapped_column(String(63))
    kind: Mapped[str] = mapped_column(String(16))
    spec_json: Mapped[dict[str, Any]] = mapped_column(JSON)
    test_dataset_id: Mapped[int | None] = mapped_column(ForeignKey("datasets.id"))
    training_dataset_id: Mapped[int | None] = mapped_column(ForeignKey("datasets.id"))
    canary_dataset_id: Mapped[int | None] = mapped_column(ForeignKey("datasets.id"))
    # A task of a multi-task phase runs as a phase of its own, slug "<phase>--<task>",
    # under its phase (parent_id): never listed, never submitted to directly.
    parent_id: Mapped[int | None] = mapped_column(
        ForeignKey("phases.id", ondelete="CASCADE"), index=True
    )
    task_slug: Mapped[str | None] = mapped_column(String(63))
    # Bumped whenever the metric config changes, so results are keyed by it (re-evaluation).
    metrics_version: Mapped[int] = mapped_column(Integer, default=1)
    # Bumped in the transaction that changes what the leaderboard shows (a result recorded,
    # a submission entering or leaving `succeeded`, a renounce): a stored board older than
    # it is recomputed (server/leaderboards/boards.py).
    board_generation: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    @property
    def spec(self) -> PhaseSpec:
        return PhaseSpec.model_validate(self.spec_json)


class PhaseInvitation(Base):
    __tablename__ = "phase_invitations"
    __table_args__ = (UniqueConstraint("phase_id", "team_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    phase_id: Mapped[int] = mapped_column(ForeignKey("phases.id", ondelete="CASCADE"), index=True)
    team_id: Mapped[int] = mapped_column(ForeignKey("teams.id", ondelete="CASCADE"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class OrganizerEvent(Base):
    """Something the organizers must act on (their metric config failed an evaluation, the
    platform hit an unexpected error): what a participant is told "the organizers have been
    told" about. Organizer-visible only; listed by the API and `heldout challenge events`."""

    __tablename__ = "organizer_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    challenge_id: Mapped[int] = mapped_column(
        ForeignKey("challenges.id", ondelete="CASCADE"), index=True
    )
    phase_id: Mapped[int | None] = mapped_column(ForeignKey("phases.id", ondelete="CASCADE"))
    submission_id: Mapped[int | None] = mapped_column(
        ForeignKey("submissions.id", ondelete="CASCADE")
    )
    kind: Mapped[str] = mapped_column(String(64))
    message: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
