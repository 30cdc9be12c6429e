"""Enqueue worker tasks only after the transaction that created their rows commits.

The server never imports `worker`: tasks are sent by name through a Celery client, so a job
id reaches Redis only once the job row exists for any worker to read.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from celery import Celery
from sqlalchemy import event
from sqlalchemy.orm import Session

from server.config import get_settings

# One queue per resource class; a node's workers consume the classes it has (README,
# "Adding a node"): cpu runs, gpu runs needing one GPU, gpu-2 runs needing two or more,
# build (clone, intake, image builds) and evaluation.
QUEUES = ("build", "cpu", "gpu", "gpu-2", "evaluation")
_KEY = "heldout_pending_tasks"


@dataclass(frozen=True)
class PendingTask:
    name: str
    args: tuple[Any, ...]
    queue: str


@lru_cache
def celery_client(broker_url: str) -> Celery:
    return Celery("heldout", broker=broker_url)


def queue_for_gpus(gpus: int) -> str:
    """The queue of a run (inference or training) asking for `gpus` GPUs."""
    return "cpu" if gpus == 0 else "gpu" if gpus == 1 else "gpu-2"


def enqueue(session: Session, name: str, *args: Any, queue: str) -> None:
    if queue not in QUEUES:
        raise ValueError(f"unknown queue {queue!r}")
    session.info.setdefault(_KEY, []).append(PendingTask(name, args, queue))


def _send(tasks: list[PendingTask], broker_url: str) -> None:
    client = celery_client(broker_url)
    for task in tasks:
        client.send_task(task.name, args=list(task.args), queue=task.queue)


# Tests may swap the sender, e.g. to record tasks instead of sending them.
sender = _send


@event.listens_for(Session, "after_commit")
def _after_commit(session: Session) -> None:
    tasks = session.info.pop(_KEY, [])
    if tasks:
        # session_scope records the settings it was opened with; they name the broker.
        settings = session.info.get("settings") or get_settings()
        sender(tasks, settings.broker_url)


@event.listens_for(Session, "after_rollback")
def _after_rollback(session: Session) -> None:
    session.info.pop(_KEY, None)
