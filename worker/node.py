"""This worker's node: its registration and heartbeat, its GPU leases, and the containers it
owns on its engine.

A node is a machine with one Docker engine, named by `heldout worker --node-name` (default:
the host name). Several worker processes may share a node name (prefork children, or two
`heldout worker` on one machine): GPUs are leased in the database, so they never share a
device either."""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import timedelta

from sqlalchemy import select

from server.config import Settings
from server.db import session_scope, utcnow
from server.jobs import service as jobs
from server.jobs.models import Job
from server.jobs.states import JobStatus
from server.nodes import service as nodes
from worker.artifacts import cache_bytes
from worker.steps import node_name

log = logging.getLogger(__name__)

# How often a job waiting for a GPU asks the database again.
LEASE_POLL_S = 0.5


class NoGpuInTime(Exception):
    """No lease within the wait: the job is still pending and goes back to its queue."""


def stale_after(settings: Settings) -> timedelta:
    """A holder (job or node) silent this long is dead; same rule as the reaper's."""
    return timedelta(seconds=settings.heartbeat_s * 3 + 5)


def _disk(settings: Settings) -> tuple[int, int]:
    data = settings.data_dir
    data.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(data).free
    return free, cache_bytes(settings)


# The queues this process consumes, kept for the heartbeat's re-registration.
_queues: list[str] = []


def register(settings: Settings, queues: Sequence[str]) -> None:
    _queues[:] = sorted(set(queues))
    free, cache = _disk(settings)
    with session_scope(settings) as session:
        nodes.register(session, node_name(settings), queues=list(_queues),
                       devices=settings.gpu_device_ids, free_disk_bytes=free,
                       cache_bytes=cache)  # fmt: skip
    log.info("node %s registered (queues %s, GPUs %s)", node_name(settings), ",".join(queues),
             ",".join(settings.gpu_device_ids) or "none")  # fmt: skip


def beat(settings: Settings) -> None:
    """The node is alive (a reaper step); a node not registered yet (its row removed, or
    the database was not migrated when the worker started) registers with its queues."""
    free, cache = _disk(settings)
    with session_scope(settings) as session:
        name = node_name(settings)
        if not nodes.heartbeat(session, name, free_disk_bytes=free, cache_bytes=cache):
            nodes.register(session, name, queues=list(_queues), devices=settings.gpu_device_ids,
                           free_disk_bytes=free, cache_bytes=cache)  # fmt: skip


def reclaim_leases(settings: Settings) -> list[tuple[str, str]]:
    """Free the leases of dead holders and dead nodes (a reaper step)."""
    with session_scope(settings) as session:
        freed = nodes.reclaim_stale(session, utcnow() - stale_after(settings))
    if freed:
        log.warning("reclaimed GPU leases of dead holders: %s", freed)
    return freed


@contextmanager
def gpu_lease(
    settings: Settings,
    node: str,
    devices: Sequence[str],
    count: int,
    job_id: int,
    *,
    timeout_s: float | None = None,
) -> Iterator[list[str]]:
    """Hold `count` of the node's devices for the job until the block ends; waits for them
    (the job still pending) up to `timeout_s`, then raises NoGpuInTime. A node with fewer
    devices than asked raises ValueError at once."""
    if count == 0:
        yield []
        return
    if len(devices) < count:
        raise ValueError(f"node {node} has {len(devices)} GPU(s); the phase needs {count}")
    wait = settings.gpu_wait_s if timeout_s is None else timeout_s
    give_up = time.monotonic() + wait
    while True:
        with session_scope(settings) as session:
            got = nodes.lease(session, node, devices, count, job_id=job_id)
            if got is None:  # a worker holds this pending job's message: no resend
                jobs.touch_waiting(session, job_id)
        if got is not None:
            break
        if time.monotonic() >= give_up:
            raise NoGpuInTime(f"no {count} GPU(s) free on node {node} after {wait:.0f} s")
        time.sleep(LEASE_POLL_S)
    try:
        yield got
    finally:
        with session_scope(settings) as session:
            nodes.release(session, job_id)


def orphaned(settings: Settings, running: dict[int, str]) -> list[int]:
    """Of the jobs with containers on this node's engine (`running`: job id -> node label),
    those no live attempt on this node owns: the job is not running, or runs elsewhere, or
    its heartbeat stopped (its worker died; the reaper hands the job back)."""
    me = node_name(settings)
    mine = [job_id for job_id, label in running.items() if label == me]
    if not mine:
        return []
    fresh = utcnow() - stale_after(settings)
    with session_scope(settings, write=False) as session:
        alive = set(
            session.scalars(
                select(Job.id).where(
                    Job.id.in_(mine),
                    Job.status == JobStatus.running.value,
                    Job.node == me,
                    Job.heartbeat_at >= fresh,
                )
            )
        )
    return [job_id for job_id in mine if job_id not in alive]
