"""The worker process's lifecycle: refuse to start without the sandbox's guarantees, then
run the reaper thread while the worker is up. Kept apart from `worker.celery_app`, which the
reaper imports to read the broker."""

from __future__ import annotations

import logging
from typing import Any

from celery.signals import worker_init, worker_ready, worker_shutdown

from worker import node
from worker.celery_app import app, settings
from worker.preflight import PreflightError, check_worker
from worker.reaper import remove_orphans, start_reaper_thread, stop_reaper_thread


@worker_init.connect  # type: ignore[untyped-decorator]
def _preflight(**_: Any) -> None:
    """Refuse to start (SystemExit passes Celery's signal dispatch) rather than run
    containers without the sandbox's guarantees; the message is for the operator."""
    try:
        check_worker(settings)
    except PreflightError as e:
        message = f"heldout worker refuses to start: {e}"
        logging.getLogger("worker.preflight").critical(message)
        raise SystemExit(message) from e


@worker_ready.connect  # type: ignore[untyped-decorator]
def _start_reaper(**_: Any) -> None:
    """Register this node with the queues it consumes, remove the containers its dead
    workers left, then reap on every tick."""
    consumed = app.amqp.queues.consume_from or app.amqp.queues
    # The server may not have migrated the database yet (compose starts both at once): the
    # reaper's heartbeat registers the node then, so the reaper starts either way.
    try:
        node.register(settings, sorted(consumed))
    except Exception:
        logging.getLogger("worker.node").exception("registering this node failed; retrying")
    try:
        remove_orphans(settings)
    except Exception:  # the engine may be restarting; the reaper's next pass tries again
        logging.getLogger("worker.reaper").exception("removing orphaned containers failed")
    start_reaper_thread(settings)


@worker_shutdown.connect  # type: ignore[untyped-decorator]
def _stop_reaper(**_: Any) -> None:
    stop_reaper_thread()
