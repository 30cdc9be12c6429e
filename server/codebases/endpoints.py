from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict, Field

from server.codebases import service
from server.deps import CurrentUser, SessionDep, SettingsDep, StoreDep
from server.params import PathId

router = APIRouter(tags=["codebases"])


class LinkBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    repository_url: str = Field(max_length=500)


@router.post("/challenges/{challenge}/phases/{phase}/repository-link", status_code=201)
def link_repository(
    challenge: str,
    phase: str,
    body: LinkBody,
    user: CurrentUser,
    session: SessionDep,
    settings: SettingsDep,
) -> dict[str, Any]:
    row, secret = service.link(session, settings, user, challenge, phase, body.repository_url)
    return {
        "id": row.id,
        "repository_url": row.repository_url,
        "webhook_url": f"/api/v1/webhooks/push/{row.id}",
        "secret": secret,
        "note": "set this secret on the repository's push webhook; it is shown once",
    }


@router.post(
    "/webhooks/push/{link_id}",
    status_code=201,
    responses={
        202: {
            "description": "not a tag push: nothing was submitted",
            "content": {"application/json": {"schema": {"type": "object"}}},
        }
    },
)
async def push_webhook(
    link_id: PathId,
    request: Request,
    response: Response,
    session: SessionDep,
    settings: SettingsDep,
) -> dict[str, Any]:
    """GitHub-style push webhook (HMAC-SHA256 in X-Hub-Signature-256); a tag push submits."""
    body = await request.body()
    # receive_push lists the repository's refs (up to git_timeout_s): not on the event loop.
    sub = await run_in_threadpool(
        service.receive_push,
        session,
        settings,
        link_id,
        request.headers.get("x-github-event"),
        request.headers.get("x-hub-signature-256"),
        body,
        request.headers,
    )
    if sub is None:
        response.status_code = 202
        return {"submitted": False, "detail": "ignored: only tag pushes submit"}
    response.status_code = 201
    return {"submitted": True, "submission_id": sub.id, "commit_sha": sub.commit_sha}


@router.get(
    "/submissions/{submission_id}/artifacts",
    response_class=FileResponse,
    responses={200: {"content": {"application/x-tar": {}}, "description": "a tar of /output"}},
)
def download_artifacts(
    submission_id: PathId, user: CurrentUser, session: SessionDep, store: StoreDep
) -> FileResponse:
    """The trained /output of a codebase submission, as a tar (feedback rounds)."""
    digest = service.trained_artifacts(session, user, submission_id)
    return FileResponse(
        store.path(digest),
        media_type="application/x-tar",
        filename=f"submission-{submission_id}-artifacts.tar",
    )
