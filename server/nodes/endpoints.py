"""`GET /nodes`: the worker nodes, for administrators and organizers (who need to know why
their queue is slow); participants do not learn the platform's machines."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter
from pydantic import BaseModel, Field
from sqlalchemy import select

from server.challenges.models import ChallengeOrganizer
from server.deps import CurrentUser, SessionDep
from server.errors import NotPermitted
from server.nodes import service

router = APIRouter(tags=["nodes"])


class NodeView(BaseModel):
    name: str
    queues: list[str] = Field(description="the Celery queues its workers consume")
    devices: list[str] = Field(description="its GPU device ids")
    free_disk_bytes: int = Field(description="free space in its data directory")
    cache_bytes: int = Field(description="size of its artifact cache")
    heartbeat_at: datetime
    started_at: datetime
    alive: bool = Field(description="heartbeat within the last two minutes")
    running_jobs: int


@router.get("/nodes", response_model=list[NodeView])
def list_nodes(user: CurrentUser, session: SessionDep) -> list[dict[str, object]]:
    """The worker nodes with their queues, devices, free disk, cache size and heartbeat."""
    if not user.is_admin and (
        session.scalar(
            select(ChallengeOrganizer.id).where(ChallengeOrganizer.user_id == user.id).limit(1)
        )
        is None
    ):
        raise NotPermitted("only administrators and organizers may list the worker nodes")
    return service.overview(session)
