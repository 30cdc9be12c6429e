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
from worker.images import release_in_background

log = logging.getLogger(__name__)
_stop = threading.Event()
_thread: threading.Thread | None = None


def stale_after(settings: Settings) -> timedelta:
    return timedelta(seconds=settings.heartbeat_s * 3 + 5)


def reap(settings: Settings) -> list[int]:
    """One pass; returns the ids of the jobs it handed back or failed."""
    from worker.pipeline import lock_for_record, retry_or_fail

    now = utcnow()
    with session_scope(settings) as session:
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
            _remove_containers(settings, job.id)
            log.warning("reaping job %s (attempt %s): %s", job.id, job.attempt, reason)
            retry_or_fail(session, settings, job, reason)
            reaped.append(job.id)
    return reaped


def resend_lost(settings: Settings) -> list[int]:
    """Pending jobs whose queue is empty lost their message (Redis restarted or flushed):
    send them again. A duplicate is harmless, the claim re-checks the job's state."""
    from server.jobs import service as jobs
    from worker.celery_app import app

    now = utcnow()
    with session_scope(settings) as session:
        stale = list(
            session.scalars(
                select(Job).where(
                    Job.status == JobStatus.pending.value,
                    Job.created_at < now - timedelta(seconds=settings.requeue_lost_after_s),
                )
            )
        )
        if not stale:
            return []
        lost: list[int] = []
        with app.connection_for_read() as conn:
            channel = conn.default_channel
            empty = {
                q: channel.queue_declare(q, passive=True).message_count == 0
                for q in {j.queue for j in stale}
            }
        for job in stale:
            if empty[job.queue]:
                jobs.requeue(session, job)
                lost.append(job.id)
    if lost:
        log.warning("re-sent %d pending job(s) whose messages were lost: %s", len(lost), lost)
    return lost


def stop_cancelled(settings: Settings) -> list[int]:
    """Containers still running for jobs that were cancelled (the participant cancelled the
    submission) are removed, so cancelling frees the node at once."""
    import docker

    from worker.executor.base import LABEL_JOB, LABEL_MANAGED
    from worker.pipeline import instance_prefix

    prefix = instance_prefix(settings)
    keys: dict[int, str] = {}
    for c in docker.from_env().containers.list(filters={"label": f"{LABEL_MANAGED}=1"}):
        key = c.labels.get(LABEL_JOB, "")
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


def _remove_containers(settings: Settings, job_id: int) -> None:
    from worker.executor.base import LABEL_JOB
    from worker.pipeline import _executor, container_key

    try:
        _executor(settings).cleanup_stale({LABEL_JOB: container_key(settings, job_id)})
    except Exception:  # the retried attempt removes its leftovers by name as well
        log.exception("could not remove containers of job %s", job_id)


def _loop(settings: Settings) -> None:
    while not _stop.wait(settings.heartbeat_s):
        try:
            reap(settings)
            resend_lost(settings)
            stop_cancelled(settings)
            release_in_background(settings)
        except Exception:  # the next pass tries again
            log.exception("reaper pass failed")


def start_reaper_thread(settings: Settings) -> None:
    global _thread
    if _thread is not None and _thread.is_alive():
        return
    _stop.clear()
    _thread = threading.Thread(target=_loop, args=(settings,), daemon=True, name="reaper")
    _thread.start()


def stop_reaper_thread() -> None:
    _stop.set()
