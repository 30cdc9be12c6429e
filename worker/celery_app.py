"""The Celery application: one queue per resource class (server.dispatch.QUEUES: build,
cpu, gpu, gpu-2, evaluation); tasks carry ids only. The server picks a job's queue from
what it needs (dispatch.queue_for_gpus) and sends it there by name; a node's workers consume
the queues of the resources it has (`heldout worker --queues`).

acks_late with prefetch 1, so a message is acknowledged only after its job is recorded and
a worker never hoards jobs it cannot start. The database, not Redis, says what a job's state
is: a redelivered message for a finished job does nothing.
"""

from __future__ import annotations

from celery import Celery
from kombu.entity import Queue

from server.config import get_settings
from server.dispatch import QUEUES

settings = get_settings()
# lifecycle: the worker's signal handlers (preflight, the reaper thread); the loader imports
# both modules before the worker_init signal is sent.
app = Celery("heldout", broker=settings.broker_url, include=["worker.tasks", "worker.lifecycle"])
app.conf.update(
    # kombu's Queue and Celery's decorators carry no annotations.
    task_queues=[Queue(q) for q in QUEUES],  # type: ignore[no-untyped-call]
    task_default_queue="cpu",
    # A task sent without a queue: its job's queue decides (the server always names one).
    task_routes={"heldout.run_job": {"queue": "cpu"}},
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
