"""GPU devices leased in the database per node: one lease per device, ever, across worker
processes (Celery's prefork pool shares no memory); a dead holder's lease is reclaimed; a
job waiting for a GPU stays pending, and its deadline starts only once it holds the lease."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import timedelta
from itertools import pairwise
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from server.config import Settings
from server.db import session_scope, utcnow
from server.jobs import repository as jobs_repo
from server.jobs.models import Job
from server.jobs.states import JobKind
from server.nodes import service as nodes
from tests.support.factories import (
    apply_bundle,
    stoic_bundle,
    stoic_cases,
    submit_blob,
    user_token,
    write_dataset,
)
from worker import node as worker_node
from worker import pipeline
from worker.steps import Outcome


def _hold_device(data_dir: str, database_url: str | None, holder: int, rounds: int) -> list:  # type: ignore[type-arg]
    """In its own process: lease device "0" of node n1 `rounds` times, recording when it
    held it."""
    settings = Settings(data_dir=Path(data_dir), database_url=database_url)
    spans = []
    for r in range(rounds):
        job_id = holder * 100 + r
        with worker_node.gpu_lease(settings, "n1", ["0"], 1, job_id, timeout_s=60) as got:
            assert got == ["0"]
            start = time.time()
            time.sleep(0.05)
            spans.append((start, time.time()))
    return spans


def test_worker_processes_never_hold_the_one_device_together(settings: Settings) -> None:
    url = settings.database_url
    with ProcessPoolExecutor(4, mp_context=get_context("spawn")) as pool:
        futures = [
            pool.submit(_hold_device, str(settings.data_dir), url, holder, 5)
            for holder in range(1, 5)
        ]
        spans = sorted(s for f in futures for s in f.result(timeout=120))
    assert len(spans) == 20
    for (_, end), (start, _) in pairwise(spans):
        assert start >= end, "two processes held device 0 at once"
    with session_scope(settings) as session:
        assert nodes.leases(session, "n1") == {}


def test_a_lease_is_refused_while_held_and_a_dead_holders_lease_is_reclaimed(
    settings: Settings,
) -> None:
    with session_scope(settings) as session:
        assert nodes.lease(session, "n1", ["0", "1"], 2, job_id=1) == ["0", "1"]
    with session_scope(settings) as session:
        assert nodes.lease(session, "n1", ["0", "1"], 1, job_id=2) is None
        # The same device id on another node is another device.
        assert nodes.lease(session, "n2", ["0"], 1, job_id=2) == ["0"]
    with session_scope(settings) as session:
        assert nodes.renew(session, 1) == 2
        assert nodes.reclaim_stale(session, utcnow() - timedelta(seconds=60)) == []
        # Job 1's worker died: no heartbeat on its leases since.
        for lease in nodes.leases_of(session, 1):
            lease.heartbeat_at = utcnow() - timedelta(minutes=5)
    with session_scope(settings) as session:
        assert nodes.reclaim_stale(session, utcnow() - timedelta(seconds=60)) == [
            ("n1", "0"), ("n1", "1")
        ]  # fmt: skip
        assert nodes.lease(session, "n1", ["0", "1"], 1, job_id=3) == ["0"]
    with session_scope(settings) as session:
        nodes.release(session, 3)
        nodes.release(session, 2)
        assert nodes.leases(session, "n1") == {} and nodes.leases(session, "n2") == {}


def test_a_dead_nodes_leases_are_reclaimed_even_while_the_lease_looked_fresh(
    settings: Settings,
) -> None:
    with session_scope(settings) as session:
        nodes.register(session, "n1", queues=["gpu"], devices=["0"], free_disk_bytes=1,
                       cache_bytes=0)  # fmt: skip
        assert nodes.lease(session, "n1", ["0"], 1, job_id=7) == ["0"]
        nodes.get(session, "n1").heartbeat_at = utcnow() - timedelta(minutes=5)
    with session_scope(settings) as session:
        assert nodes.reclaim_stale(session, utcnow() - timedelta(seconds=60)) == [("n1", "0")]


def test_the_deadline_starts_once_the_gpu_is_leased(
    api: TestClient, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = settings.model_copy(
        update={"gpu_device_ids": ["0"], "node_name": "n1", "heartbeat_s": 1}
    )
    admin = user_token(settings, "root", admin=True)
    ds = write_dataset(tmp_path / "test", stoic_cases())
    bundle = stoic_bundle(limits={"wall_time_s": 120, "gpus": 1})
    assert apply_bundle(api, admin, bundle, {"test": ds}).status_code == 200, "bundle"
    sub = submit_blob(api, user_token(settings, "ann")).json()["id"]
    with session_scope(settings) as session:
        (validate,) = jobs_repo.for_submission(session, sub)
        job = Job(submission_id=sub, kind="infer", queue="gpu", case_id=None)
        session.add(job)
        session.flush()
        job_id = job.id
    seen: dict[str, Any] = {}

    def fake_infer(_settings: Settings, _store: Any, ctx: Any) -> Outcome:
        seen["devices"] = list(ctx.gpu_devices)
        return Outcome({"ok": True})

    monkeypatch.setattr(pipeline, "_steps", lambda: {JobKind.infer: fake_infer})
    monkeypatch.setattr(pipeline, "_record", lambda *a, **k: None)
    with session_scope(settings) as session:  # another job holds the node's one GPU
        assert nodes.lease(session, "n1", ["0"], 1, job_id=validate.id) == ["0"]
    thread = threading.Thread(target=pipeline.run_job, args=(settings, job_id), daemon=True)
    thread.start()
    time.sleep(3)
    with session_scope(settings) as session:
        waiting = session.get(Job, job_id)
        assert waiting is not None
        assert waiting.status == "pending" and waiting.deadline_at is None
        nodes.renew(session, validate.id)
        nodes.release(session, validate.id)
    released = utcnow()
    thread.join(timeout=30)
    assert not thread.is_alive()
    with session_scope(settings) as session:
        ran = session.get(Job, job_id)
        assert ran is not None and ran.started_at is not None and ran.started_at >= released
        assert ran.node == "n1"
        assert nodes.leases(session, "n1") == {}, "the lease is released after the step"
    assert seen["devices"] == ["0"]
    json.dumps(seen)
