"""Queries of the codebases domain."""

from __future__ import annotations

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from server.codebases.models import WebhookDelivery


def earlier_delivery(
    session: Session, link_id: int, delivery_id: str | None, body_sha256: str
) -> WebhookDelivery | None:
    """A recorded delivery of this link with the same id or the same body."""
    same = WebhookDelivery.body_sha256 == body_sha256
    if delivery_id is not None:
        same = or_(same, WebhookDelivery.delivery_id == delivery_id)
    return session.scalars(
        select(WebhookDelivery)
        .where(WebhookDelivery.link_id == link_id, same)
        .order_by(WebhookDelivery.id)
        .limit(1)
    ).first()
