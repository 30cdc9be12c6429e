"""Queues per resource class: cpu, gpu (one GPU), gpu-2 (two or more GPUs), build and
evaluation; a job goes to the queue of what it needs, and the Celery app declares them all."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from server import dispatch
from server.config import Settings
from server.db import session_scope
from server.jobs import repository as jobs_repo
from tests.support import drive
from tests.support.factories import (
    apply_bundle,
    stoic_bundle,
    stoic_cases,
    submit_blob,
    user_token,
    write_dataset,
)
from tests.support.workers import ROOT


@pytest.mark.parametrize(("gpus", "queue"), [(0, "cpu"), (1, "gpu"), (2, "gpu-2"), (4, "gpu-2")])
def test_runs_go_to_the_queue_of_their_gpu_count(
    api: TestClient,
    settings: Settings,
    tmp_path: Path,
    sent_tasks: list[dispatch.PendingTask],
    gpus: int,
    queue: str,
) -> None:
    admin = user_token(settings, "root", admin=True)
    ds = write_dataset(tmp_path / "test", stoic_cases())
    bundle = stoic_bundle(limits={"wall_time_s": 120, "gpus": gpus})
    assert apply_bundle(api, admin, bundle, {"test": ds}).status_code == 200
    sub = submit_blob(api, user_token(settings, "ann")).json()["id"]
    (validate,) = drive.claim(settings, sub, "validate")
    drive.ok(settings, validate)
    with session_scope(settings) as session:
        runs = [j for j in jobs_repo.for_submission(session, sub) if j.kind != "validate"]
    assert runs and {j.queue for j in runs} == {queue}
    assert {t.queue for t in sent_tasks if t.args[0] in {j.id for j in runs}} == {queue}


def test_the_celery_app_declares_every_queue_and_routes_by_queue() -> None:
    from worker.celery_app import app

    assert set(dispatch.QUEUES) == {"build", "cpu", "gpu", "gpu-2", "evaluation"}
    assert {q.name for q in app.conf.task_queues} == set(dispatch.QUEUES)
    assert dispatch.queue_for_gpus(0) == "cpu" and dispatch.queue_for_gpus(3) == "gpu-2"
    with pytest.raises(ValueError, match="unknown queue 'gpu-3'"):
        dispatch.enqueue(None, "x", 1, queue="gpu-3")  # type: ignore[arg-type]


def test_heldout_worker_refuses_an_unknown_queue() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "heldout", "worker", "--queues", "cpu,gpu3"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "unknown queue(s) gpu3" in proc.stderr and "gpu-2" in proc.stderr
