"""Two worker nodes on one machine that share only what separate machines would: PostgreSQL,
Redis, the server's URL and the installation's registry. Each worker has a data directory
of its own, its own node name and node token, and no HELDOUT_ARTIFACT_DIR: artifacts travel
by digest through a live server (HELDOUT_NODE_SERVER_URL). Node A runs on the shared Docker
engine, node B on a second dockerd started by the test (tests/support/engines.py: its own
data root, exec root, socket, pid file, bridge and configuration), so node B holds none of
the images node A loaded: a submission's image reaches the other node through the registry
(HELDOUT_IMAGE_REGISTRY, pulled by digest).

Node B alone runs a T2 submission on its own engine (no registry needed). With both: a T2
submission's cases run on both nodes and are scored once each; SIGKILL of node B's worker
mid-case leads to the case retried on node A, and B's orphan container, on engine B, is
removed when B's worker comes back; a T3 codebase trains on node A and infers on node B,
the nodes taking the queues of their resource classes (`heldout worker --queues`); two
prefork processes of one node never run two containers with its one GPU id at once."""

from __future__ import annotations

import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

import docker
import pytest
from fastapi.testclient import TestClient

from server.app import create_app
from server.config import Settings
from server.db import session_scope
from server.dispatch import QUEUES
from server.jobs import repository as jobs_repo
from tests.conftest import REGISTRY, REGISTRY_AUTH, need
from tests.integration.test_pipeline_t3 import N, _bundle, _dataset, codebase
from tests.support import images
from tests.support.engines import node_engine
from tests.support.factories import apply_bundle, auth, stoic_bundle, submit_blob, user_token
from tests.support.gitserver import GitDaemon, RepoFactory
from tests.support.services import DockerEngine
from tests.support.workers import live_server, start_worker, stop_worker, wait_final, wait_for
from worker.executor.base import LABEL_GPUS, LABEL_NODE
from worker.executor.sized_dir import mounts_under, unmount_all_under

pytestmark = [pytest.mark.docker, pytest.mark.redis, pytest.mark.slow]

N_CASES = 6


Worker = subprocess.Popen[bytes]


@dataclass
class Nodes:
    settings: Settings
    api: Any
    shared: docker.DockerClient  # node A's engine
    b: DockerEngine  # node B's engine
    url: str  # the live server both nodes reach artifacts through
    registry: str | None
    tmp: Path
    tokens: dict[str, str] = field(default_factory=dict)

    def start(
        self, name: str, queues: str = ",".join(QUEUES), concurrency: int = 1, **extra: str
    ) -> Worker:
        """A worker of node `name` (node-a or node-b) with a data directory of its own,
        consuming `queues` with `concurrency` prefork processes."""
        data = self.tmp / name
        data.mkdir(exist_ok=True)
        if name not in self.tokens:
            r = self.api.post("/api/v1/nodes/tokens", json={"name": name}, headers=self._admin())
            assert r.status_code == 201, r.text
            self.tokens[name] = r.json()["token"]
        env = {
            "HELDOUT_DATA_DIR": str(data),
            "HELDOUT_NODE_NAME": name,
            "HELDOUT_NODE_SERVER_URL": self.url,
            "HELDOUT_NODE_TOKEN": self.tokens[name],
        }
        if name == "node-b":
            env["DOCKER_HOST"] = self.b.host
        if self.registry:
            env["HELDOUT_IMAGE_REGISTRY"] = self.registry
            env.update({f"HELDOUT_{k.upper()}": str(v or "") for k, v in REGISTRY_AUTH.items()})
        log = self.tmp / f"{name}.log"
        return start_worker(
            self.settings, concurrency=concurrency, log=log, queues=queues, **env, **extra
        )

    def _admin(self) -> dict[str, str]:
        return auth(user_token(self.settings, "admin", admin=True))

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
            for p in sorted(self.tmp.glob("node-*.log"))
        )


@pytest.fixture(scope="module")
def engine_b() -> Iterator[DockerEngine]:
    """Node B's engine, started once for the module (about 25 s with the images copied in);
    each test reads its events from its own start on, and B's reaper clears what a test
    left on it."""
    shared = images.client_or_none()
    need(shared is not None, "a Docker engine")
    assert shared is not None
    with node_engine(shared, REGISTRY or None) as engine:
        yield engine


@pytest.fixture
def nodes(
    pg_live: Any, engine_b: DockerEngine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Nodes]:
    settings, _, shared = pg_live
    # T3 clones from `git daemon` on loopback.
    settings = settings.model_copy(update={"allow_loopback_repos": True})
    # The nodes share no directory with the server (or each other).
    monkeypatch.delenv("HELDOUT_ARTIFACT_DIR", raising=False)
    registry = REGISTRY or None
    try:
        with (
            TestClient(create_app(settings)) as api,
            live_server(create_app(settings)) as url,
        ):
            yield Nodes(settings, api, shared, engine_b, url, registry, tmp_path)
    finally:
        # What a failed run leaves mounted would outlive the test's tmp dir otherwise.
        unmount_all_under(tmp_path)


def _need_registry(nodes: Nodes) -> None:
    need(nodes.registry is not None, "an image registry (HELDOUT_TEST_REGISTRY)")


def _submit(
    nodes: Nodes, sleep_s: int, n_cases: int = N_CASES, limits: dict[str, Any] | None = None
) -> tuple[str, int]:
    admin = user_token(nodes.settings, "admin", admin=True)
    # Each metric needs a positive and a negative case: COVID from the second case on,
    # severe the third (and the sixth).
    ds = images.write_ct_dataset(
        nodes.tmp / "test",
        ((f"P{i:03d}", 30 + 8 * i, int(i >= 1), int(i in (2, 5))) for i in range(n_cases)),
    )
    bundle = stoic_bundle(limits=limits)
    assert apply_bundle(nodes.api, admin, bundle, {"test": ds}).status_code == 200
    # An image of its own (the nonce), gone from the shared engine once saved: what node
    # A holds of it, it loaded or pulled.
    slow = images.WELL_BEHAVED.replace(
        "import glob, json, os, sys",
        f"import glob, json, os, sys, time\ntime.sleep({sleep_s})  # {uuid.uuid4()}",
    )
    tag = images.build_image(nodes.shared, f"nodes-slow-{sleep_s}", slow)
    archive = images.save_image(nodes.shared, [tag], nodes.tmp / "slow.tar.gz", gz=True)
    nodes.shared.images.remove(tag, force=True)
    alice = user_token(nodes.settings, "alice")
    r = submit_blob(nodes.api, alice, data=archive.read_bytes())
    assert r.status_code == 201, r.text
    return alice, int(r.json()["id"])


def _cases_scored(settings: Settings, sub: int) -> int:
    with session_scope(settings) as session:
        (evaluate,) = jobs_repo.for_submission(session, sub, "evaluate")
        return len(evaluate.result["metrics"]["case"])


def _engine_events(client: docker.DockerClient, since: float, **filters: str) -> list[Any]:
    """What an engine did since `since` (its event log): the submission's images are gone
    from both engines by the time it ends, its containers long before."""
    until = time.time()
    return list(client.events(since=int(since), until=until, decode=True, filters=filters))


def _containers_of(client: docker.DockerClient, since: float, name: str) -> int:
    created = _engine_events(client, since, type="container", event="create")
    return sum(
        1 for e in created if e.get("Actor", {}).get("Attributes", {}).get(LABEL_NODE) == name
    )


def test_node_b_on_its_own_engine_runs_a_submission_through_the_server(nodes: Nodes) -> None:
    """Node B alone: intake, cases and evaluation on the second engine, artifacts by digest
    through the server, nothing in a shared directory."""
    since = time.time()
    b = nodes.start("node-b")
    try:
        alice, sub = _submit(nodes, 0, n_cases=3)
        final = wait_final(nodes.api, alice, sub, timeout=400)
    finally:
        stop_worker(b)
    assert final["status"] == "succeeded", (final, nodes.logs())
    with session_scope(nodes.settings) as session:
        jobs = jobs_repo.for_submission(session, sub)
        assert {j.node for j in jobs} == {"node-b"}
    assert _cases_scored(nodes.settings, sub) == 3
    # Node B's intake loaded the image into engine B, its cases and the evaluation ran
    # there: engine B created node B's containers (3 cases and the evaluation, at least),
    # the shared engine none.
    loaded = _engine_events(nodes.b.client(), since, type="image", event="load")
    assert loaded, "node B's intake should have loaded the archive into engine B"
    assert _containers_of(nodes.b.client(), since, "node-b") >= 3 + 1
    assert _containers_of(nodes.shared, since, "node-b") == 0
    data = nodes.tmp / "node-b"
    assert not list((data / "artifacts").glob("sha256/*/*"))
    assert len(list((data / "cache").glob("sha256/*/*"))) >= 1 + 3


def test_a_submissions_cases_run_on_both_nodes_and_score_once(nodes: Nodes) -> None:
    _need_registry(nodes)
    since = time.time()
    workers = [nodes.start(name) for name in ("node-a", "node-b")]
    try:
        alice, sub = _submit(nodes, 3)
        final = wait_final(nodes.api, alice, sub, timeout=400)
    finally:
        for w in workers:
            stop_worker(w)
    assert final["status"] == "succeeded", (final, nodes.logs())
    with session_scope(nodes.settings) as session:
        infer = jobs_repo.for_submission(session, sub, "infer")
        assert {j.node for j in infer} == {"node-a", "node-b"}
        assert all(j.status == "succeeded" and j.attempt == 1 for j in infer)
    assert _cases_scored(nodes.settings, sub) == N_CASES
    # Each engine ran its own node's cases only; the node that did not run the intake
    # pulled the image from the registry.
    for name, client in (("node-a", nodes.shared), ("node-b", nodes.b.client())):
        assert _containers_of(client, since, name) >= 1
        other = "node-b" if name == "node-a" else "node-a"
        assert _containers_of(client, since, other) == 0
    with session_scope(nodes.settings) as session:
        (validate,) = jobs_repo.for_submission(session, sub, "validate")
        puller = nodes.b.client() if validate.node == "node-a" else nodes.shared
    assert _engine_events(puller, since, type="image", event="pull")
    r = nodes.api.get("/api/v1/nodes", headers=nodes._admin())
    assert {n["name"] for n in r.json()} == {"node-a", "node-b"}


def test_a_killed_nodes_case_is_retried_on_the_other_node(nodes: Nodes) -> None:
    _need_registry(nodes)
    settings, engine_b = nodes.settings, nodes.b.client()
    since = time.time()
    a = None
    b = nodes.start("node-b")
    try:
        alice, sub = _submit(nodes, 6)

        def running_on_b() -> int | None:
            # A job is "running" from its claim, before its container exists: kill B only
            # once the container is up, so that B's leftovers are certain to be there.
            if not engine_b.containers.list(filters={"label": f"{LABEL_NODE}=node-b"}):
                return None
            with session_scope(settings) as session:
                for j in jobs_repo.for_submission(session, sub, "infer"):
                    if j.status == "running" and j.node == "node-b":
                        return j.id
            return None

        killed = wait_for(running_on_b, 240, "a case running on node-b")
        stop_worker(b, signal.SIGKILL)
        a = nodes.start("node-a")
        final = wait_final(nodes.api, alice, sub, timeout=400)
    finally:
        stop_worker(b)
        if a is not None:
            stop_worker(a)
    assert final["status"] == "succeeded", (final, nodes.logs())
    with session_scope(settings) as session:
        job = next(j for j in jobs_repo.for_submission(session, sub, "infer") if j.id == killed)
        assert job.attempt == 2 and job.node == "node-a" and job.status == "succeeded"
        assert job.failure_message and "retried" in job.failure_message
    assert _cases_scored(settings, sub) == N_CASES
    # Node B ran the intake; node A, on the shared engine, pulled the image to retry.
    assert _engine_events(nodes.shared, since, type="image", event="pull")

    # Node B's worker comes back: its reaper removes what its killed worker left, the
    # container on engine B if it is still there and the mounted /output of its work dir
    # (node A's reaper, on the other engine, could not).
    def left_on_b() -> list[Any]:
        on_b = {"label": f"{LABEL_NODE}=node-b"}
        left: list[Any] = engine_b.containers.list(all=True, filters=on_b)
        return [*mounts_under(nodes.tmp / "node-b"), *left]

    orphans = engine_b.containers.list(all=True, filters={"label": f"{LABEL_NODE}=node-b"})
    assert orphans, "the SIGKILLed worker's container should be left on engine B"
    b = nodes.start("node-b")
    try:
        wait_for(lambda: not left_on_b(), 60, "node-b's leftovers to be removed")
    finally:
        stop_worker(b)


def test_a_codebase_trains_on_node_a_and_infers_on_node_b(nodes: Nodes) -> None:
    """T3 across queues per resource class: node A takes builds and GPU runs (one fake GPU),
    node B CPU runs and evaluations; the inference image node A built after training
    reaches node B through the registry."""
    _need_registry(nodes)
    admin = user_token(nodes.settings, "admin", admin=True)
    ds = {"test": _dataset(nodes.tmp / "test", 100), "train": _dataset(nodes.tmp / "train", 0)}
    limits = {"wall_time_s": 120, "memory_mb": 1024, "gpus": 1}
    assert apply_bundle(nodes.api, admin, _bundle(limits), ds).status_code == 200
    factory = RepoFactory(nodes.tmp / "repos")
    repo = factory.create("team")
    repo.commit(codebase(), "solution")
    repo.tag("v1")
    alice = user_token(nodes.settings, "alice")
    since = time.time()
    with GitDaemon(factory.root) as daemon:
        a = nodes.start("node-a", "build,gpu", HELDOUT_GPU_DEVICE_IDS="0", HELDOUT_FAKE_GPUS="true")
        b = nodes.start("node-b", "cpu,evaluation")
        try:
            r = nodes.api.post(
                "/api/v1/challenges/stoic/phases/final/submissions",
                json={"repository_url": daemon.url("team"), "ref": "v1"},
                headers=auth(alice),
            )
            assert r.status_code == 201, r.text
            final = wait_final(nodes.api, alice, int(r.json()["id"]), timeout=500)
        finally:
            stop_worker(a)
            stop_worker(b)
    assert final["status"] == "succeeded", (final, nodes.logs())
    with session_scope(nodes.settings) as session:
        ran = {
            (j.kind, j.node)
            for j in jobs_repo.for_submission(session, int(final["id"]))
            if j.status == "succeeded"
        }
    assert ran == {
        ("validate", "node-a"),
        ("build", "node-a"),
        ("train", "node-a"),
        ("infer", "node-b"),
        ("evaluate", "node-b"),
    }
    assert _cases_scored(nodes.settings, int(final["id"])) == N
    assert _engine_events(nodes.b.client(), since, type="image", event="pull")


def test_two_jobs_never_hold_the_one_gpu_together(nodes: Nodes) -> None:
    """Node A's two prefork processes and one GPU id (faked: the containers get no GPU, the
    id is on their label): the GPU cases run one at a time, each with device 0, while a
    second process sits idle waiting for the lease."""
    since = time.time()
    a = nodes.start("node-a", concurrency=2, HELDOUT_GPU_DEVICE_IDS="0", HELDOUT_FAKE_GPUS="true")
    try:
        alice, sub = _submit(
            nodes, 3, n_cases=4, limits={"wall_time_s": 120, "memory_mb": 1024, "gpus": 1}
        )
        final = wait_final(nodes.api, alice, sub, timeout=400)
    finally:
        stop_worker(a)
    assert final["status"] == "succeeded", (final, nodes.logs())
    spans: dict[str, list[int]] = {}
    for event in _engine_events(nodes.shared, since, type="container"):
        attrs = event.get("Actor", {}).get("Attributes", {})
        if attrs.get(LABEL_NODE) != "node-a" or LABEL_GPUS not in attrs:
            continue
        assert attrs[LABEL_GPUS] == "0", attrs
        if event.get("status") in ("start", "die"):
            spans.setdefault(event["id"], []).append(int(event["timeNano"]))
    runs = sorted((min(t), max(t)) for t in spans.values())
    assert len(runs) >= 4, runs  # the four cases (and the canary, if the phase has one)
    for (_, end), (start, _) in pairwise(runs):
        assert start >= end, "two containers held GPU 0 at once"
