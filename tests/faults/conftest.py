"""Fault tests: a live pipeline (API, a real Celery worker, the real engine) on a Redis and,
where the fault needs it, a PostgreSQL that the test owns, so it can kill, restart or flush
them. They take their own settings, not the per-database `settings` fixture, so the suite
runs each of them once."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import pytest
from fastapi.testclient import TestClient

from server.app import create_app
from server.config import Settings
from server.db import session_scope
from server.embedded import migrate
from server.jobs import repository as jobs_repo
from tests.conftest import need
from tests.support import images
from tests.support.factories import apply_bundle, auth, stoic_bundle, submit_blob, user_token
from tests.support.services import (
    PG_BIN,
    DockerEngine,
    PostgresCluster,
    RedisServer,
    docker_engine,
    postgres_cluster,
    redis_server,
)
from tests.support.workers import wait_final, wait_for
from worker.steps import container_key

N_CASES = 7
# Each case takes a few seconds, so a fault lands while cases are still pending.
SLOW = images.WELL_BEHAVED.replace(
    "import glob, json, os, sys", "import glob, json, os, sys, time\ntime.sleep(3)"
)
# Short reaper intervals (the reaper runs every heartbeat_s), in the server's settings and,
# by the environment, the worker's.
FAST = {"heartbeat_s": 1, "requeue_lost_after_s": 4}
WORKER_ENV = {"HELDOUT_REQUEUE_LOST_AFTER_S": "4"}


@dataclass
class Live:
    settings: Settings
    api: TestClient
    engine: docker.DockerClient
    redis: RedisServer
    postgres: PostgresCluster | None
    tmp: Path

    def setup_phase(self, script: str = SLOW, name: str = "faults-slow") -> tuple[str, Path]:
        """The STOIC-style phase on N_CASES cases and a slow, well-behaved image archive;
        returns a participant's token and the archive."""
        admin = user_token(self.settings, "admin", admin=True)
        ds = images.write_ct_dataset(
            self.tmp / "test",
            ((f"P{i:03d}", 30 + 8 * i, int(i >= 2), int(i in (3, 5))) for i in range(N_CASES)),
        )
        assert apply_bundle(self.api, admin, stoic_bundle(), {"test": ds}).status_code == 200
        tag = images.build_image(self.engine, name, script)
        archive = images.save_image(self.engine, [tag], self.tmp / f"{name}.tar.gz", gz=True)
        return user_token(self.settings, "alice"), archive

    def submit(self, token: str, archive: Path) -> int:
        r = submit_blob(self.api, token, data=archive.read_bytes())
        assert r.status_code == 201, r.text
        return int(r.json()["id"])

    def view(self, token: str, sub_id: int) -> dict[str, Any]:
        return dict(self.api.get(f"/api/v1/submissions/{sub_id}", headers=auth(token)).json())

    def wait_mid_run(self, token: str, sub_id: int) -> None:
        """Until some cases are done and others are still waiting."""

        def mid() -> bool:
            infer = [j for j in self.view(token, sub_id)["jobs"] if j["kind"] == "infer"]
            by = infer[0]["by_status"] if infer else {}
            return by.get("succeeded", 0) >= 1 and by.get("pending", 0) >= 2

        wait_for(mid, 180, "inference to be under way", interval=0.2)

    def finish(
        self,
        token: str,
        sub_id: int,
        fault_at: float,
        what: str,
        engine: docker.DockerClient | None = None,
    ) -> dict[str, Any]:
        """Wait for the submission to end; print the time to recovery; check that every case
        was inferred and evaluated once, that it is charged by the rules and that no container
        of it is left (on `engine`, the worker's, when it is not the shared one)."""
        final = wait_final(self.api, token, sub_id, timeout=150)
        print(f"\n{what}: submission final ({final['status']}) {time.monotonic() - fault_at:.1f} s"
              " after the fault")  # fmt: skip
        assert final["status"] == "succeeded", final
        # A succeeded submission counts against the team's quota (README "Fair quotas").
        assert final["charged"] is True
        kinds = {j["kind"]: j for j in final["jobs"]}
        assert kinds["infer"] == {
            "kind": "infer", "total": N_CASES, "by_status": {"succeeded": N_CASES}
        }  # fmt: skip
        assert kinds["evaluate"] == {"kind": "evaluate", "total": 1, "by_status": {"succeeded": 1}}
        with session_scope(self.settings) as session:
            infer = jobs_repo.for_submission(session, sub_id, "infer")
            assert len({j.case_id for j in infer}) == N_CASES
            (evaluate,) = jobs_repo.for_submission(session, sub_id, "evaluate")
            assert len(evaluate.result["metrics"]["case"]) == N_CASES
            ours = {container_key(self.settings, j.id) for j in jobs_repo.for_submission(
                session, sub_id)}  # fmt: skip
        managed = {"label": "heldout.managed=1"}
        left = (engine or self.engine).containers.list(all=True, filters=managed)
        assert [c.name for c in left if c.labels.get("heldout.job") in ours] == []
        # Nothing of the worker's /output and /scratch images is left mounted or attached (the
        # kernel detaches an autoclear loop device shortly after its last mount goes).
        with contextlib.suppress(AssertionError):
            wait_for(lambda: not self.leftovers(), 10, "mounts and loops to go", interval=0.2)
        assert self.leftovers() == []
        return final

    def leftovers(self) -> list[str]:
        """Mounts under the data directory, and loop devices backed by files in it."""
        data = str(self.settings.data_dir.resolve())
        with open("/proc/mounts") as f:
            mounts = [line.split()[1] for line in f]
        loops = subprocess.run(["losetup", "-a"], capture_output=True, text=True, check=True)
        return [m for m in mounts if m.startswith(data)] + [
            line for line in loops.stdout.splitlines() if data in line
        ]


def _engine() -> docker.DockerClient:
    client = images.client_or_none()
    need(client is not None, "a Docker engine")
    assert client is not None
    return client


def _need_binaries(postgres: bool = False) -> None:
    need(shutil.which("redis-server") is not None, "redis-server")
    if postgres:
        need((PG_BIN / "initdb").exists() and os.geteuid() == 0, "PostgreSQL 15 binaries, as root")


@pytest.fixture
def live_sqlite(tmp_path: Path) -> Iterator[Live]:
    """SQLite (a single node's database) and an own Redis."""
    _need_binaries()
    engine = _engine()
    with redis_server() as rs:
        data = tmp_path / "data"
        data.mkdir()
        settings = Settings(data_dir=data, redis_url=rs.url, **FAST)
        migrate(settings)
        with TestClient(create_app(settings)) as api:
            yield Live(settings, api, engine, rs, None, tmp_path)


@pytest.fixture
def live_postgres(tmp_path: Path) -> Iterator[Live]:
    """An own PostgreSQL cluster and an own Redis."""
    _need_binaries(postgres=True)
    engine = _engine()
    with redis_server() as rs, postgres_cluster() as pg:
        data = tmp_path / "data"
        data.mkdir()
        settings = Settings(data_dir=data, database_url=pg.url, redis_url=rs.url, **FAST)
        migrate(settings)
        with TestClient(create_app(settings)) as api:
            yield Live(settings, api, engine, rs, pg, tmp_path)


@dataclass
class LiveEngine:
    live: Live
    engine: DockerEngine  # the worker's own, test-owned; the worker reaches it by DOCKER_HOST


@pytest.fixture
def live_own_engine(tmp_path: Path) -> Iterator[LiveEngine]:
    """SQLite, an own Redis and an own dockerd for the worker, holding a copy of the
    evaluation image from the shared engine (built there on first use if missing)."""
    from evaluation.build_image import build_evaluation_image, default_tag

    _need_binaries()
    need(shutil.which("dockerd") is not None and os.geteuid() == 0, "dockerd, as root")
    shared = _engine()
    try:
        shared.images.get(default_tag())
    except docker.errors.ImageNotFound:
        build_evaluation_image(shared, tag=default_tag())
    with redis_server() as rs, docker_engine() as own:
        own.load(default_tag())
        data = tmp_path / "data"
        data.mkdir()
        settings = Settings(data_dir=data, redis_url=rs.url, **FAST)
        migrate(settings)
        with TestClient(create_app(settings)) as api:
            yield LiveEngine(Live(settings, api, shared, rs, None, tmp_path), own)
