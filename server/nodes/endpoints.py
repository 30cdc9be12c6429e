"""`GET /nodes`: the worker nodes, for administrators and organizers (who need to know why
their queue is slow); participants do not learn the platform's machines.

`/nodes/tokens`: administrators create and revoke node credentials. `/node/artifacts/{digest}`:
worker nodes (node token only) fetch inputs and send outputs back by digest, so a node needs
no filesystem shared with the server."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime

import anyio.from_thread
from fastapi import APIRouter, Request
from fastapi.responses import FileResponse
from pydantic import BaseModel, Field
from sqlalchemy import select
from starlette.requests import ClientDisconnect

from server.challenges.models import ChallengeOrganizer
from server.deps import CurrentNode, CurrentUser, SessionDep, SettingsDep, StoreDep
from server.errors import BadRequest, NotFound, NotPermitted
from server.nodes import service
from server.params import PathId

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


# --- node credentials (administrators) and the node-only artifact endpoints ------------


class NodeTokenCreate(BaseModel):
    name: str = Field(min_length=1, max_length=100, description="the node or group it is for")


class NodeTokenCreated(BaseModel):
    id: int
    name: str
    token: str = Field(description="shown only now; the node sends it as X-Heldout-Node-Token")


@router.post("/nodes/tokens", response_model=NodeTokenCreated, status_code=201)
def create_node_token(
    body: NodeTokenCreate, user: CurrentUser, session: SessionDep
) -> dict[str, object]:
    """Administrators: a credential for worker nodes to fetch and return artifacts."""
    row, token = service.create_token(session, user, body.name)
    return {"id": row.id, "name": row.name, "token": token}


@router.delete("/nodes/tokens/{token_id}", status_code=204)
def revoke_node_token(token_id: PathId, user: CurrentUser, session: SessionDep) -> None:
    service.revoke_token(session, user, token_id)


@router.get(
    "/node/artifacts/{digest}",
    response_class=FileResponse,
    responses={200: {"content": {"application/octet-stream": {}}, "description": "the content"}},
)
def get_artifact(digest: str, node: CurrentNode, store: StoreDep) -> FileResponse:
    """Nodes only: the artifact's content, streamed."""
    path = store.path(digest)
    if not path.is_file():
        raise NotFound(f"artifact {digest} is not in the store", field="digest")
    return FileResponse(path, media_type="application/octet-stream")


class ArtifactStored(BaseModel):
    digest: str
    size: int


@router.put("/node/artifacts/{digest}", response_model=ArtifactStored)
def put_artifact(
    digest: str, request: Request, node: CurrentNode, store: StoreDep, settings: SettingsDep
) -> dict[str, object]:
    """Nodes only: an output or log going back, stored only if its content hashes to
    `digest` (400 and nothing stored otherwise). A sync endpoint: the body is streamed to
    disk in the threadpool, no transaction open."""
    size = store.put_verified(_chunks(request), digest, settings.max_upload_bytes)
    return {"digest": digest, "size": size}


def _chunks(request: Request) -> Iterator[bytes]:
    """The request body as it arrives, read on the event loop from this worker thread."""
    stream = request.stream().__aiter__()

    async def next_chunk() -> bytes | None:
        try:
            return await stream.__anext__()
        except StopAsyncIteration:
            return None

    while True:
        try:
            chunk = anyio.from_thread.run(next_chunk)
        except ClientDisconnect:
            raise BadRequest("the connection closed before the artifact was complete") from None
        if chunk is None:
            return
        if chunk:
            yield chunk
