"""Every job reaches a final state under one fault of Redis, the database, the worker or the
Docker engine, mid-run: the
submission ends succeeded, every case inferred and evaluated once, charged by the rules,
no container left; each prints its time to recovery."""

from __future__ import annotations

import signal
import time

import pytest

from tests.faults.conftest import SLOW, WORKER_ENV, Live, LiveEngine
from tests.support.workers import celery_worker, start_worker, stop_worker, wait_for

pytestmark = [pytest.mark.docker, pytest.mark.redis, pytest.mark.slow, pytest.mark.faults]


def test_redis_restarted_without_persistence_mid_run(live_sqlite: Live) -> None:
    """Redis dies and comes back empty: the queued cases' messages are gone; the reaper
    finds the pending jobs with no message and sends them again."""
    live = live_sqlite
    token, archive = live.setup_phase()
    with celery_worker(live.settings, **WORKER_ENV):
        sub = live.submit(token, archive)
        live.wait_mid_run(token, sub)
        fault = time.monotonic()
        live.redis.restart(down_s=1)
        live.finish(token, sub, fault, "redis restarted empty")


def test_redis_flushed_mid_run(live_sqlite: Live) -> None:
    """FLUSHALL while the worker stays connected: the queues and kombu's bindings are
    gone; the lost messages are re-sent and reach a worker."""
    live = live_sqlite
    token, archive = live.setup_phase()
    with celery_worker(live.settings, **WORKER_ENV):
        sub = live.submit(token, archive)
        live.wait_mid_run(token, sub)
        fault = time.monotonic()
        live.redis.flush()
        live.finish(token, sub, fault, "redis flushed")


@pytest.mark.postgres
def test_postgres_restarted_mid_run(live_postgres: Live) -> None:
    """PostgreSQL goes down for 5 s: the tasks that reach a worker meanwhile cannot claim
    their job. They must be retried, not acknowledged away. The reaper's re-send of lost
    messages is switched off here (a pending job counts as lost only after an hour), so
    the task's own retry is what brings these jobs back."""
    live = live_postgres
    assert live.postgres is not None
    token, archive = live.setup_phase()
    env = {"HELDOUT_REQUEUE_LOST_AFTER_S": "3600"}
    with celery_worker(live.settings, **env):
        sub = live.submit(token, archive)
        live.wait_mid_run(token, sub)
        fault = time.monotonic()
        live.postgres.restart(down_s=5)
        live.finish(token, sub, fault, "postgres restarted (5 s down)")


def test_worker_killed_mid_run(live_sqlite: Live) -> None:
    """SIGKILL the only worker while cases run (its messages stay unacknowledged in Redis
    for an hour); a new worker's reaper hands the stale jobs back and they finish."""
    live = live_sqlite
    token, archive = live.setup_phase()
    first = start_worker(live.settings, concurrency=2, log=live.settings.data_dir / "w1.log",
                         **WORKER_ENV)  # fmt: skip
    try:
        sub = live.submit(token, archive)
        live.wait_mid_run(token, sub)
    finally:
        fault = time.monotonic()
        stop_worker(first, signal.SIGKILL)
    with celery_worker(live.settings, log=live.settings.data_dir / "w2.log", **WORKER_ENV):
        live.finish(token, sub, fault, "worker killed")


def test_cancel_while_redis_is_down(live_sqlite: Live) -> None:
    """Redis dies mid-run and the participant cancels: the reaper's broker step fails on
    every pass, yet its container step still removes the running cases' containers; the
    submission is cancelled and charged by the rule (cancelled after its test cases started:
    it counts), every job final."""
    from server.db import session_scope
    from server.jobs import repository as jobs_repo
    from tests.support.factories import auth
    from worker.steps import container_key

    live = live_sqlite
    # Cases that run for a minute: only the reaper can end their containers in time.
    stuck = SLOW.replace("time.sleep(3)", "time.sleep(60)")
    token, archive = live.setup_phase(stuck, "faults-stuck")
    with celery_worker(live.settings, **WORKER_ENV):
        sub = live.submit(token, archive)

        def ours() -> list[str]:
            with session_scope(live.settings) as session:
                keys = {container_key(live.settings, j.id) for j in jobs_repo.for_submission(
                    session, sub)}  # fmt: skip
            # The low-level list: no per-container inspect to race a removal.
            managed = live.engine.api.containers(all=True, filters={"label": "heldout.managed=1"})
            return [c["Id"] for c in managed if (c.get("Labels") or {}).get("heldout.job") in keys]

        wait_for(ours, 60, "a case's container to run", interval=0.1)
        fault = time.monotonic()
        live.redis.stop()
        r = live.api.post(f"/api/v1/submissions/{sub}/cancel", headers=auth(token))
        assert r.status_code == 200 and r.json()["status"] == "cancelled", r.text

        def none_left() -> bool:
            return not ours()

        wait_for(none_left, 30, "the cancelled submission's containers to be removed")
        print(f"\nredis down, cancelled: no container left {time.monotonic() - fault:.1f} s after")
        final = live.view(token, sub)
        assert final["status"] == "cancelled" and final["charged"] is True
        assert all(set(j["by_status"]) <= {"succeeded", "cancelled"} for j in final["jobs"])
        live.redis.start()


def test_engine_restarted_mid_run(live_own_engine: LiveEngine) -> None:
    """The worker's dockerd is SIGKILLed while cases run and started again on the same data
    root (the engine stops the orphaned containers as it restores them): the cases that
    were running, or claimed while it was down, are retried; the submission ends succeeded,
    every case inferred and evaluated once, charged by the rules, no container, mount or
    loop device of it left."""
    live, engine = live_own_engine.live, live_own_engine.engine
    token, archive = live.setup_phase()
    own = engine.client()

    def running() -> bool:
        managed = own.api.containers(filters={"label": "heldout.managed=1", "status": "running"})
        return bool(managed)

    with celery_worker(live.settings, DOCKER_HOST=engine.host, **WORKER_ENV):
        sub = live.submit(token, archive)
        live.wait_mid_run(token, sub)
        wait_for(running, 60, "a case's container to run", interval=0.1)
        fault = time.monotonic()
        engine.kill()
        time.sleep(2)
        engine.start()
        print(f"\nengine back {time.monotonic() - fault:.1f} s after the kill")
        live.finish(token, sub, fault, "engine restarted", engine=own)
    # No heldout container at all is left on the worker's engine.
    assert own.containers.list(all=True, filters={"label": "heldout.managed=1"}) == []


def test_kill_orphans_ends_what_a_container_cgroup_holds(live_sqlite: Live) -> None:
    """What the engine-restart fix relies on: a container's processes are found by its
    cgroup and killed (here a live container's, on the shared engine; after a crash, the
    `runc init` left behind by a half-started one)."""
    from worker.executor.docker import kill_orphans

    live = live_sqlite
    c = live.engine.containers.run(
        "heldout/python:bookworm", ["sleep", "60"], detach=True, network_mode="none",
        labels={"heldout.test": "kill-orphans"},
    )  # fmt: skip
    try:
        killed = kill_orphans(c.id)
        assert killed, "no process found in the container's cgroup"
        assert c.wait(timeout=20)["StatusCode"] != 0
    finally:
        c.remove(force=True)
