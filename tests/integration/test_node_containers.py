"""Node-owned containers and dead nodes: every container carries its node's label, each
node's reaper removes only its own orphans (at start and on every tick), and a node that
stops heartbeating has its running jobs handed back by another node's reaper, its GPU
leases freed."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import docker
import pytest
from fastapi.testclient import TestClient

from server.challenges.schemas import Limits
from server.config import Settings
from server.db import session_scope, utcnow
from server.jobs import repository as jobs_repo
from server.jobs import service as jobs
from server.jobs.models import Job
from server.nodes import service as nodes
from tests.conftest import need
from tests.support import images as im
from tests.support.factories import (
    apply_bundle,
    stoic_bundle,
    stoic_cases,
    submit_blob,
    user_token,
    write_dataset,
)
from worker import reaper, steps
from worker.executor.base import LABEL_GPUS, LABEL_JOB, LABEL_MANAGED, LABEL_NODE, RunSpec


@pytest.fixture(scope="module")
def client() -> Iterator[docker.DockerClient]:
    c = im.client_or_none()
    need(c is not None, "a Docker engine")
    assert c is not None
    yield c


@pytest.fixture(scope="module")
def sleeper(client: docker.DockerClient) -> str:
    return im.build_image(client, "node-sleeper", "import time\ntime.sleep(600)\n")


def _jobs(api: TestClient, settings: Settings, tmp_path: Path, n: int) -> list[int]:
    admin = user_token(settings, "root", admin=True)
    ds = write_dataset(tmp_path / "test", stoic_cases())
    assert apply_bundle(api, admin, stoic_bundle(), {"test": ds}).status_code == 200
    ids = []
    for i in range(n):
        sub = submit_blob(api, user_token(settings, f"team{i}")).json()["id"]
        with session_scope(settings) as session:
            ids.append(jobs_repo.for_submission(session, sub)[0].id)
    return ids


def _start(settings: Settings, image: str, job_id: int, client: docker.DockerClient) -> str:
    """A running container of the job, made by this node's executor (as a step makes it)."""
    inputs = settings.data_dir / f"in-{job_id}"
    inputs.mkdir(exist_ok=True)
    spec = RunSpec(image=image, job_id=steps.container_key(settings, job_id), attempt=1,
                   inputs=inputs, limits=Limits(wall_time_s=600))  # fmt: skip
    handle = steps.executor(settings).provision(spec)
    assert handle.container is not None
    handle.container.start()
    return str(handle.container.name)


def _mine(client: docker.DockerClient, settings: Settings) -> dict[str, dict[str, str]]:
    prefix = steps.instance_prefix(settings)
    return {
        c.name: dict(c.labels)
        for c in client.containers.list(all=True, filters={"label": f"{LABEL_MANAGED}=1"})
        if c.labels.get(LABEL_JOB, "").startswith(prefix)
    }


def test_each_node_removes_only_its_own_orphans(
    api: TestClient,
    settings: Settings,
    tmp_path: Path,
    client: docker.DockerClient,
    sleeper: str,
) -> None:
    a = settings.model_copy(update={"node_name": "node-a", "allow_unsized_output": True})
    b = settings.model_copy(update={"node_name": "node-b", "allow_unsized_output": True})
    orphan, live, other = _jobs(api, settings, tmp_path, 3)
    with session_scope(settings) as session:  # `live` runs on node-a and heartbeats
        assert jobs.claim(session, live, "a:1", 600, 60, node="node-a") is not None
    names = {
        "orphan": _start(a, sleeper, orphan, client),  # its job is not running anywhere
        "live": _start(a, sleeper, live, client),
        "other": _start(b, sleeper, other, client),  # node-b's: not node-a's to remove
    }
    try:
        have = _mine(client, settings)
        assert have[names["orphan"]][LABEL_NODE] == "node-a"
        assert have[names["other"]][LABEL_NODE] == "node-b"

        assert reaper.remove_orphans(a) == [orphan]
        have = _mine(client, settings)
        assert names["orphan"] not in have
        assert names["live"] in have and names["other"] in have

        # node-a's worker dies: `live` stops heartbeating, and its container is an orphan
        # to node-a's next reaper (a restarted worker's, at its start).
        with session_scope(settings) as session:
            job = session.get(Job, live)
            assert job is not None
            job.heartbeat_at = utcnow() - timedelta(minutes=5)
        assert reaper.remove_orphans(a) == [live]
        assert reaper.remove_orphans(b) == [other]
        assert _mine(client, settings) == {}
    finally:
        for name in names.values():
            with contextlib.suppress(docker.errors.NotFound):
                client.containers.get(name).remove(force=True)


def test_a_silent_nodes_jobs_are_handed_back_by_another_node(
    api: TestClient, settings: Settings, tmp_path: Path
) -> None:
    a = settings.model_copy(update={"node_name": "node-a"})
    (job_id,) = _jobs(api, settings, tmp_path, 1)
    with session_scope(settings) as session:
        for name in ("node-a", "node-b"):
            nodes.register(session, name, queues=["cpu"], devices=["0"], free_disk_bytes=1,
                           cache_bytes=0)  # fmt: skip
        assert jobs.claim(session, job_id, "b:1", 600, 60, node="node-b") is not None
        assert nodes.lease(session, "node-b", ["0"], 1, job_id=job_id) == ["0"]
    with session_scope(settings) as session:  # node-b went silent a while ago
        old = utcnow() - timedelta(minutes=5)
        nodes.get(session, "node-b").heartbeat_at = old  # type: ignore[union-attr]
        job = session.get(Job, job_id)
        assert job is not None
        job.heartbeat_at = old

    reaper.run_pass(a)
    with session_scope(settings) as session:
        job = session.get(Job, job_id)
        assert job is not None and job.status == "pending" and job.node is None
        assert "node node-b stopped heartbeating" in (job.operator_detail or "")
        assert nodes.leases(session, "node-b") == {}
        # node-a beat on the pass; node-b stays silent.
        assert nodes.get(session, "node-a").heartbeat_at > old  # type: ignore[union-attr]
    # The retry runs on a live node, which records itself.
    with session_scope(settings) as session:
        again = jobs.claim(session, job_id, "a:1", 600, 60, node="node-a")
        assert again is not None and again.attempt == 2 and again.node == "node-a"


@pytest.mark.parametrize("fake", [True, False])
def test_fake_gpus_are_leased_names_the_engine_never_sees(
    settings: Settings, client: docker.DockerClient, sleeper: str, fake: bool
) -> None:
    """HELDOUT_FAKE_GPUS: a GPU phase's containers run on an engine without GPUs (tests,
    development); the leased ids are recorded on the container, not requested from it."""
    s = settings.model_copy(update={"allow_unsized_output": True, "fake_gpus": fake})
    inputs = s.data_dir / "in"
    inputs.mkdir()
    spec = RunSpec(image=sleeper, job_id=steps.container_key(s, 99), attempt=1, inputs=inputs,
                   limits=Limits(wall_time_s=60, gpus=1), gpu_device_ids=["0"])  # fmt: skip
    ex = steps.executor(s)
    handle = ex.provision(spec)
    try:
        assert handle.container is not None
        handle.container.reload()
        requests = handle.container.attrs["HostConfig"].get("DeviceRequests") or []
        if fake:
            assert requests == [] and handle.container.labels[LABEL_GPUS] == "0"
        else:
            assert [r["DeviceIDs"] for r in requests] == [["0"]]
    finally:
        ex.deprovision(handle)
