"""Thin Celery tasks: take an id, hand it to the pipeline."""

from __future__ import annotations

from worker.celery_app import app, settings
from worker.pipeline import run_job as _run_job


@app.task(name="heldout.run_job", acks_late=True, reject_on_worker_lost=True)
def run_job(job_id: int) -> None:
    _run_job(settings, job_id)
