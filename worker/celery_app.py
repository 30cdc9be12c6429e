"""The Celery application: queues build, cpu, gpu and evaluation; tasks carry ids only.

acks_late with prefetch 1, so a message is acknowledged only after its job is recorded and
a worker never hoards jobs it cannot start. The database, not Redis, says what a job's state
is: a redelivered message for a finished job does nothing.
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from celery.signals import worker_init, worker_ready, worker_shutdown
from kombu.entity import Queue

from server.config import get_settings

settings = get_settings()
app = Celery("heldout", broker=settings.broker_url, include=["worker.tasks"])
app.conf.update(
    # kombu's Queue and Celery's decorators carry no annotations.
    task_queues=[Queue(q) for q in ("build", "cpu", "gpu", "evaluation")],  # type: ignore[no-untyped-call]
    task_default_queue="cpu",
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    task_serializer="json",
    accept_content=["json"],
    task_ignore_result=True,
    broker_connection_retry_on_startup=True,
    # Celery puts its handler on the root logger, so heldout's own records (reaped jobs,
    # dropped results, infrastructure errors) reach the worker's log with its format.
    worker_hijack_root_logger=True,
    # A lost worker's message comes back after this; the reaper acts much sooner.
    broker_transport_options={"visibility_timeout": 3600},
)


@worker_init.connect  # type: ignore[untyped-decorator]
def _preflight(**_: Any) -> None:
    """Refuse to start (SystemExit passes Celery's signal dispatch) rather than run
    containers without the sandbox's guarantees; the message is for the operator."""
    import logging

    from worker.preflight import PreflightError, check_worker

    try:
        check_worker(settings)
    except PreflightError as e:
        message = f"heldout worker refuses to start: {e}"
        logging.getLogger("worker.preflight").critical(message)
        raise SystemExit(message) from e


@worker_ready.connect  # type: ignore[untyped-decorator]
def _start_reaper(**_: Any) -> None:
    from worker.reaper import start_reaper_thread

    start_reaper_thread(settings)


@worker_shutdown.connect  # type: ignore[untyped-decorator]
def _stop_reaper(**_: Any) -> None:
    from worker.reaper import stop_reaper_thread

    stop_reaper_thread()
