"""The boards of multi-task phases: the tasks, each task's board, the consensus board."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, Field

from server.challenges import service as challenges
from server.deps import CurrentUser, SessionDep
from server.leaderboards import boards, tasks

router = APIRouter(tags=["leaderboards"])

CACHED = {304: {"description": "the board has not changed since the ETag given in If-None-Match"}}


class TaskRead(BaseModel):
    slug: str
    title: str
    inputs: list[str] = Field(description="input interface slugs the task's cases carry")
    outputs: list[str] = Field(description="output interface slugs the task's runs write")
    primary_metric: str
    leaderboard: str = Field(description="the task board's path, relative to the phase's")


class TasksRead(BaseModel):
    phase: str
    tasks: list[TaskRead]
    consensus: str = Field(description="the consensus board's path, relative to the phase's")


class ConsensusEntry(BaseModel):
    team: str
    rank: int | None = Field(description="None: the team lacks a rank on some task")
    mean_rank: float | None
    task_ranks: dict[str, int | None] = Field(description="task slug -> rank on its board")
    complete: bool
    missing: list[str] = Field(description="tasks the team has no rank on")


class ConsensusRead(BaseModel):
    phase: str
    tasks: list[str]
    rule: str
    entries: list[ConsensusEntry]


def _serve(request: Request, etag: str, body: str) -> Response:
    """The body, or 304 when the client holds this version already (as the phase boards)."""
    tag = f'"{etag}"'
    headers = {"ETag": tag, "Cache-Control": "private, no-cache"}
    sent = request.headers.get("if-none-match", "")
    if tag in {t.strip().removeprefix("W/") for t in sent.split(",")} or sent.strip() == "*":
        return Response(status_code=304, headers=headers)
    return Response(body, media_type="application/json", headers=headers)


@router.get("/challenges/{challenge}/phases/{phase}/tasks", response_model=TasksRead)
def list_tasks(challenge: str, phase: str, user: CurrentUser, session: SessionDep) -> TasksRead:
    """A multi-task phase's tasks (404 for a phase without tasks)."""
    _, ph = challenges.get_phase(session, challenge, phase)
    return TasksRead.model_validate(tasks.list_tasks(session, ph))


@router.get(
    "/challenges/{challenge}/phases/{phase}/tasks/{task}/leaderboard",
    response_model=dict[str, Any],
    responses=CACHED,  # type: ignore[arg-type]
)
def task_leaderboard(
    challenge: str, phase: str, task: str, request: Request, user: CurrentUser, session: SessionDep
) -> Response:
    """One task's board, in the shape of a phase's leaderboard, with its ETag."""
    _, ph = challenges.get_phase(session, challenge, phase)
    stored = boards.current(session, tasks.task_phase(session, ph, task))
    return _serve(request, stored.etag, stored.leaderboard)


@router.get(
    "/challenges/{challenge}/phases/{phase}/consensus",
    response_model=ConsensusRead,
    responses=CACHED,  # type: ignore[arg-type]
)
def consensus(
    challenge: str, phase: str, request: Request, user: CurrentUser, session: SessionDep
) -> Response:
    """Teams ranked by the mean of their task ranks; a team missing a task is listed as
    incomplete and not ranked (the rule is in the body)."""
    _, ph = challenges.get_phase(session, challenge, phase)
    served = tasks.consensus_board(session, ph)
    body = ConsensusRead.model_validate(served.body).model_dump(mode="json")
    return _serve(request, served.etag, json.dumps(body, separators=(",", ":")))
