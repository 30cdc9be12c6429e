"""The reaper: no job stays running without a live owner, nor pending without a message, and
no container keeps running for a cancelled job.

A running job whose heartbeat stopped (its worker vanished) or that is past its deadline
(its limit plus a margin) is handed back: its containers are removed and it is retried as an
infrastructure failure, or failed uncharged once its attempts are used up. Every worker runs
a reaper thread; row locks keep two reapers from handling the same job.
"""

from __future__ import annotations

import logging
import threading
from datetime import timedelta

from sqlalchemy import or_, select

from server.config import Settings
from server.db import session_scope, utcnow
from server.errors import NotFound
from server.jobs.models import Job
from server.jobs.states import JobStatus
from server.nodes import service as nodes
from server.submissions.advance import lock_for_record, retry_or_fail
from worker import node, steps
from worker.executor.base import LABEL_JOB, LABEL_NODE
from worker.images import release_in_background
from worker.registry import prune as prune_images

log = logging.getLogger(__name__)
_stop = threading.Event()
_thread: threading.Thread | None = None


def stale_after(settings: Settings) -> timedelta:
    return node.stale_after(settings)


def reap(settings: Settings) -> list[int]:
    """One pass; returns the ids of the jobs it handed back or failed. A job of a node that
    stopped heartbeating has stopped heartbeating itself: any node's reaper hands it back,
    and another node runs the retry."""
    now = utcnow()
    with session_scope(settings) as session:
        silent = set(nodes.silent_nodes(session, now - stale_after(settings)))
        ids = list(
            session.scalars(
                select(Job.id).where(
                    Job.status == JobStatus.running.value,
                    or_(Job.heartbeat_at < now - stale_after(settings), Job.deadline_at < now),
                )
            )
        )
    reaped: list[int] = []
    for job_id in ids:
        with session_scope(settings) as session:
            try:
                job = lock_for_record(session, job_id)
            except NotFound:
                continue
            if job.status != JobStatus.running.value:
                continue
            beat = job.heartbeat_at
            if (
                beat is not None
                and beat >= now - stale_after(settings)
                and (job.deadline_at is None or job.deadline_at >= now)
            ):
                continue  # it came back to life since the query
            reason = (
                f"worker {job.worker_id} stopped answering"
                if job.deadline_at is None or job.deadline_at >= now
                else "the job ran past its deadline"
            )
            if job.node in silent:
                reason = f"node {job.node} stopped heartbeating"
            _remove_containers(settings, job.id)
            log.warning("reaping job %s (attempt %s): %s", job.id, job.attempt, reason)
            retry_or_fail(session, settings, job, reason)
            reaped.append(job.id)
    return reaped


def resend_lost(settings: Settings) -> list[int]:
    """Pending jobs whose queue is empty lost their message (Redis restarted or flushed):
    send them again. A duplicate is harmless, the claim re-checks the job's state."""
    from server.dispatch import QUEUES
    from server.jobs import service as jobs

    # Every pass, so the bindings a flush removed come back before anything is sent.
    sizes = queue_sizes(set(QUEUES))
    now = utcnow()
    with session_scope(settings) as session:
        stale = list(
            session.scalars(
                select(Job).where(
                    Job.status == JobStatus.pending.value,
                    Job.created_at < now - timedelta(seconds=settings.requeue_lost_after_s),
                    # A fresh heartbeat on a pending job: a worker holds its message and
                    # waits for a GPU lease.
                    or_(Job.heartbeat_at.is_(None), Job.heartbeat_at < now - stale_after(settings)),
                )
            )
        )
        if not stale:
            return []
        lost: list[int] = []
        for job in stale:
            if sizes.get(job.queue) == 0:
                jobs.requeue(session, job)
                lost.append(job.id)
    if lost:
        log.warning("re-sent %d pending job(s) whose messages were lost: %s", len(lost), lost)
    return lost


def queue_sizes(queues: set[str], broker_url: str | None = None) -> dict[str, int]:
    """Messages waiting in each queue. Each queue is declared again (exchange, queue and
    binding), not passively: on kombu's Redis transport a passive declare raises NOT_FOUND
    for an empty queue (no list key), and after a FLUSHALL the bindings are gone, so a
    message sent to the queue's exchange would go to kombu's dead-letter list. The
    connection is a fresh one: kombu skips a binding its connection already declared."""
    from worker.celery_app import app

    sizes: dict[str, int] = {}
    with app.connection_for_read(broker_url) as conn:
        channel = conn.default_channel
        for name in sorted(queues):
            app.amqp.queues[name].bind(channel).declare()
            sizes[name] = int(channel.queue_declare(name).message_count)
    return sizes


def stop_cancelled(settings: Settings) -> list[int]:
    """Containers still running for jobs that were cancelled (the participant cancelled the
    submission) are removed, so cancelling frees the node at once."""
    prefix = steps.instance_prefix(settings)
    keys: dict[int, str] = {}
    # No wait for an engine that is down: this pass logs it, the next one tries again.
    for labels in steps.executor(settings, wait_s=0).running({}):
        key = labels.get(LABEL_JOB, "")
        if key.startswith(prefix) and key[len(prefix) :].isdigit():
            keys[int(key[len(prefix) :])] = key
    if not keys:
        return []
    with session_scope(settings) as session:
        cancelled = list(
            session.scalars(
                select(Job.id).where(Job.id.in_(keys), Job.status == JobStatus.cancelled.value)
            )
        )
    for job_id in cancelled:
        log.warning("stopping the containers of cancelled job %s", job_id)
        _remove_containers(settings, job_id)
    return cancelled


def remove_orphans(settings: Settings) -> list[int]:
    """This node's containers (by LABEL_NODE) that no live attempt on this node owns: a
    worker of this node died mid-job, or the job was handed back. At start and every pass;
    other nodes' containers on a shared engine are never touched."""
    prefix = steps.instance_prefix(settings)
    me = steps.node_name(settings)
    found: dict[int, str] = {}
    for labels in steps.executor(settings, wait_s=0).held({LABEL_NODE: me}):
        key = labels.get(LABEL_JOB, "")
        if key.startswith(prefix) and key[len(prefix) :].isdigit():
            found[int(key[len(prefix) :])] = labels.get(LABEL_NODE, "")
    orphans = node.orphaned(settings, found)
    for job_id in orphans:
        log.warning("removing the orphaned containers of job %s on node %s", job_id, me)
        # Only this node's: on an engine shared by nodes, a retry elsewhere runs meanwhile.
        _remove_containers(settings, job_id, {LABEL_NODE: me})
    return orphans


def _remove_containers(settings: Settings, job_id: int, only: dict[str, str] | None = None) -> None:
    key = steps.container_key(settings, job_id)
    try:
        steps.executor(settings).cleanup_stale({LABEL_JOB: key, **(only or {})})
    except Exception:  # the retried attempt removes its leftovers by name as well
        log.exception("could not remove containers of job %s", job_id)


def run_pass(settings: Settings) -> None:
    """One pass of every step, each on its own: a broker or database error in one is logged
    and the others still run; the next pass tries again."""
    steps_in_order = (
        node.beat,
        node.reclaim_leases,
        reap,
        resend_lost,
        stop_cancelled,
        remove_orphans,
        release_in_background,
        # With a registry: a node short of disk drops images it can pull again.
        prune_images,
    )
    for step in steps_in_order:
        try:
            step(settings)
        except Exception:
            log.exception("reaper step %s failed; the next pass tries again", step.__name__)


def _loop(settings: Settings) -> None:
    while not _stop.wait(settings.heartbeat_s):
        run_pass(settings)


def start_reaper_thread(settings: Settings) -> None:
    global _thread
    if _thread is not None and _thread.is_alive():
        return
    _stop.clear()
    _thread = threading.Thread(target=_loop, args=(settings,), daemon=True, name="reaper")
    _thread.start()


def stop_reaper_thread() -> None:
    _stop.set()
