"""Thin Celery tasks: take an id, hand it to the pipeline."""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy.exc import InterfaceError, OperationalError

from worker.celery_app import app, settings
from worker.pipeline import run_job as _run_job

log = logging.getLogger(__name__)

# While the database is unreachable, wait this long before trying again, at most.
MAX_DB_RETRY_S = 30


# Celery's decorators carry no annotations.
@app.task(name="heldout.run_job", bind=True, acks_late=True, reject_on_worker_lost=True)  # type: ignore[untyped-decorator]
def run_job(self: Any, job_id: int) -> None:
    try:
        _run_job(settings, job_id)
    except (OperationalError, InterfaceError) as exc:
        # The database is down or the connection dropped. Acknowledging would drop the
        # message of a job that may still be pending; send it again later instead. A retry
        # after the job was claimed finds it running (or finished) and does nothing; the
        # reaper hands back a running job whose worker lost the database.
        countdown = min(settings.heartbeat_s * (self.request.retries + 1), MAX_DB_RETRY_S)
        log.warning("job %s: database unavailable (%s); retrying in %s s", job_id,
                    type(exc.orig).__name__ if exc.orig else exc, countdown)  # fmt: skip
        raise self.retry(exc=exc, countdown=countdown, max_retries=None) from exc
