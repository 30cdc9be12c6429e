from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Boolean, ForeignKey, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from server.db import Base, UTCDateTime, utcnow


class Submission(Base):
    __tablename__ = "submissions"
    __table_args__ = (
        Index("ix_submissions_phase_team_created", "phase_id", "team_id", "created_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    phase_id: Mapped[int] = mapped_column(ForeignKey("phases.id", ondelete="CASCADE"))
    team_id: Mapped[int] = mapped_column(ForeignKey("teams.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    kind: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(32), default="received", index=True)
    # Classified failure: a code ("timeout", "oom", "missing_output:x", ...) and a sentence
    # safe to show the participant.
    failure_code: Mapped[str | None] = mapped_column(String(200))
    failure_message: Mapped[str | None] = mapped_column(Text)
    # The failure in full, for organizers and admins only (see Job.operator_detail).
    operator_detail: Mapped[str | None] = mapped_column(Text)
    # False when the platform caused the failure or the participant cancelled early: such a
    # submission never counts against the team's limits.
    charged: Mapped[bool] = mapped_column(Boolean, default=True)
    renounced: Mapped[bool] = mapped_column(Boolean, default=False)
    comment: Mapped[str] = mapped_column(String(500), default="")
    # T2: the uploaded image archive and the loaded image.
    archive_digest: Mapped[str | None] = mapped_column(String(71))
    archive_size: Mapped[int | None] = mapped_column(BigInteger)
    image_id: Mapped[str | None] = mapped_column(String(80))
    # With an image registry (HELDOUT_IMAGE_REGISTRY): image_id pushed there, as
    # "name@sha256:<manifest digest>" within the registry (each node pulls it from the
    # address it has for the registry). T2: the loaded image; T3: the trained one.
    image_ref: Mapped[str | None] = mapped_column(String(500))
    # T2: an optional model tarball (an upload), unpacked read-only at /opt/ml/model.
    model_digest: Mapped[str | None] = mapped_column(String(71))
    # T3: where the code comes from and the commit the ref resolved to.
    repository_url: Mapped[str | None] = mapped_column(String(500))
    ref: Mapped[str | None] = mapped_column(String(255))
    commit_sha: Mapped[str | None] = mapped_column(String(40))
    # A multi-task phase's submission runs as one child submission per task, on the task's
    # phase: parent_id names the submission it is a part of. Only the parent counts against
    # the team's limits (they count per phase); a child's `charged` says whether its outcome
    # is the team's doing, which decides the parent's charge when a task fails.
    parent_id: Mapped[int | None] = mapped_column(
        ForeignKey("submissions.id", ondelete="CASCADE"), index=True
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class SubmissionTransition(Base):
    """Every state change, so `heldout status` can show where a submission has been."""

    __tablename__ = "submission_transitions"

    id: Mapped[int] = mapped_column(primary_key=True)
    submission_id: Mapped[int] = mapped_column(
        ForeignKey("submissions.id", ondelete="CASCADE"), index=True
    )
    from_status: Mapped[str | None] = mapped_column(String(32))
    to_status: Mapped[str] = mapped_column(String(32))
    note: Mapped[str] = mapped_column(Text, default="")
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Penalty(Base):
    """A team barred from submitting to a phase until `until` (cooldown violation)."""

    __tablename__ = "penalties"

    id: Mapped[int] = mapped_column(primary_key=True)
    phase_id: Mapped[int] = mapped_column(ForeignKey("phases.id", ondelete="CASCADE"), index=True)
    team_id: Mapped[int] = mapped_column(ForeignKey("teams.id", ondelete="CASCADE"))
    until: Mapped[datetime] = mapped_column(UTCDateTime)
    reason: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
