"""The boards of a multi-task phase: one per task (the stored board of the phase the task
runs as, server.leaderboards.boards) and the consensus across tasks
(server.leaderboards.consensus), computed from the stored task boards when read: it costs
reading one stored board per task, and its ETag is derived from theirs."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from server.challenges import repository as challenges_repo
from server.challenges.models import Phase
from server.errors import Conflict, NotFound
from server.leaderboards import boards
from server.leaderboards.consensus import RULE, consensus


@dataclass(frozen=True)
class Served:
    etag: str
    body: dict[str, Any]


def _require_tasks(phase: Phase) -> None:
    if not phase.spec_json.get("tasks"):
        raise NotFound(f"phase {phase.slug!r} has no tasks", field="phase")


def refuse_phase_board(phase: Phase, base: str) -> None:
    """A multi-task phase has no board of its own (its teams are ranked per task, then by
    consensus): 409 naming the boards it has, as paths under `base` (the phase's path)."""
    if not phase.spec_json.get("tasks"):
        return
    slugs = [t["slug"] for t in phase.spec_json["tasks"]]
    raise Conflict(
        f"phase {phase.slug!r} is a multi-task phase and has no leaderboard of its own: each "
        f"task has its board ({', '.join(slugs)}: {base}/tasks/<task>/leaderboard) and the "
        f"phase ranks teams across them on {base}/consensus",
        field="phase",
        tasks={slug: f"{base}/tasks/{slug}/leaderboard" for slug in slugs},
        consensus=f"{base}/consensus",
    )


def list_tasks(session: Session, phase: Phase) -> dict[str, Any]:
    _require_tasks(phase)
    spec = phase.spec
    out = []
    for task in spec.tasks or []:
        out.append(
            {
                "slug": task.slug,
                "title": task.title or task.slug,
                "inputs": [i.slug for i in task.inputs],
                "outputs": [o.slug for o in task.outputs],
                "primary_metric": task.metrics.primary,
                "leaderboard": f"tasks/{task.slug}/leaderboard",
            }
        )
    return {"phase": phase.slug, "tasks": out, "consensus": "consensus"}


def task_phase(session: Session, phase: Phase, task: str) -> Phase:
    _require_tasks(phase)
    for child in challenges_repo.task_phases(session, phase.id):
        if child.task_slug == task:
            return child
    raise NotFound(f"phase {phase.slug!r} has no task {task!r}", field="task")


def consensus_board(session: Session, phase: Phase) -> Served:
    """The consensus of the stored task boards, as of this session's generations."""
    _require_tasks(phase)
    children = challenges_repo.task_phases(session, phase.id)
    tasks = [c.task_slug or c.slug for c in children]
    ranks: dict[str, dict[str, int | None]] = {}
    etags = []
    for task, child in zip(tasks, children, strict=True):
        stored = boards.current(session, child)
        etags.append(stored.etag)
        board = json.loads(stored.leaderboard)
        ranks[task] = {e["team"]: e.get("rank") for e in board.get("entries", [])}
    body = {
        "phase": phase.slug,
        "tasks": tasks,
        "rule": RULE,
        "entries": consensus(tasks, ranks),
    }
    etag = hashlib.sha256(json.dumps([phase.slug, tasks, etags]).encode()).hexdigest()[:32]
    return Served(etag, body)
