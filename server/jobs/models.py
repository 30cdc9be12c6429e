from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Boolean, ForeignKey, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from server.db import Base, UTCDateTime, utcnow


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(primary_key=True)
    submission_id: Mapped[int] = mapped_column(
        ForeignKey("submissions.id", ondelete="CASCADE"), index=True
    )
    kind: Mapped[str] = mapped_column(String(16))
    case_id: Mapped[int | None] = mapped_column(ForeignKey("cases.id"))
    status: Mapped[str] = mapped_column(String(16), default="pending", index=True)
    queue: Mapped[str] = mapped_column(String(16))
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    worker_id: Mapped[str | None] = mapped_column(String(200))
    # The node (`heldout worker --node-name`) running the job's current attempt.
    node: Mapped[str | None] = mapped_column(String(200), index=True)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    deadline_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    failure_code: Mapped[str | None] = mapped_column(String(200))
    failure_message: Mapped[str | None] = mapped_column(Text)
    # What went wrong in full (evaluator output, engine errors, host names, private case
    # names): shown to the challenge's organizers and admins only, never to participants.
    operator_detail: Mapped[str | None] = mapped_column(Text)
    # Output values, timings, image digests: whatever the step produced, as JSON.
    result: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    log_digest: Mapped[str | None] = mapped_column(String(71))
    # Logs of runs on sequestered data are held until an organizer releases them:
    # log_review is None (nothing to review), "pending", "released" or "refused", and a
    # release may carry a redacted copy.
    logs_held: Mapped[bool] = mapped_column(Boolean, default=False)
    log_review: Mapped[str | None] = mapped_column(String(16), index=True)
    released_log_digest: Mapped[str | None] = mapped_column(String(71))
    reviewed_by: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    reviewed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
