from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from server.db import Base, UTCDateTime, utcnow


class RepositoryLink(Base):
    """A team's repository linked to a codebase phase: a signed tag push submits it.

    The webhook secret is kept as is: verifying an HMAC needs it, unlike an API token."""

    __tablename__ = "repository_links"
    __table_args__ = (UniqueConstraint("phase_id", "team_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    phase_id: Mapped[int] = mapped_column(ForeignKey("phases.id", ondelete="CASCADE"))
    team_id: Mapped[int] = mapped_column(ForeignKey("teams.id", ondelete="CASCADE"))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    repository_url: Mapped[str] = mapped_column(String(500))
    secret: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class WebhookDelivery(Base):
    """A push delivery that made a submission. Forges sign only the body, not the delivery
    id header, so a replay is recognised by either: the same id or the same signed body."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        UniqueConstraint("link_id", "delivery_id"),
        UniqueConstraint("link_id", "body_sha256"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    link_id: Mapped[int] = mapped_column(ForeignKey("repository_links.id", ondelete="CASCADE"))
    # X-GitHub-Delivery / X-Gitea-Delivery / X-Gitlab-Event-UUID; None when none was sent.
    delivery_id: Mapped[str | None] = mapped_column(String(100))
    body_sha256: Mapped[str] = mapped_column(String(64))
    submission_id: Mapped[int | None] = mapped_column(
        ForeignKey("submissions.id", ondelete="SET NULL")
    )
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
