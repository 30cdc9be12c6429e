"""Two worker nodes on one machine, against one PostgreSQL and one Redis: each worker has a
data directory of its own and its own node name. A T2 submission's cases run on both nodes
and are scored once each; SIGKILL of node B's worker mid-case leads to the case retried on
node A.

What this does not cover yet (issue #14, the next step): the two nodes here share the
artifact directory (HELDOUT_ARTIFACT_DIR) and one Docker engine. With a second engine of its
own (dockerd with its own --data-root, --exec-root, socket, pid file and bridge), node B has
none of the images node A loaded or built: images must travel through the installation's
registry by digest, and artifacts by digest through the server, before this test can start
a second dockerd."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest

from server.config import Settings
from server.db import session_scope
from server.jobs import repository as jobs_repo
from tests.support import images
from tests.support.factories import apply_bundle, auth, stoic_bundle, submit_blob, user_token
from tests.support.workers import start_worker, stop_worker, wait_final, wait_for
from worker.executor.base import LABEL_NODE
from worker.executor.sized_dir import mounts_under, unmount_all_under

pytestmark = [pytest.mark.docker, pytest.mark.redis, pytest.mark.slow]

N_CASES = 6


@pytest.fixture
def live(pg_live: Any, tmp_path: Path) -> Any:
    yield pg_live
    # What a failed run leaves mounted would outlive the test's tmp dir otherwise.
    unmount_all_under(tmp_path)


def _node(settings: Settings, tmp_path: Path, name: str) -> Any:
    """A worker of node `name` with a data directory of its own."""
    data = tmp_path / name
    data.mkdir(exist_ok=True)
    return start_worker(settings, concurrency=1, log=tmp_path / f"{name}.log",
                        HELDOUT_DATA_DIR=str(data), HELDOUT_NODE_NAME=name,
                        HELDOUT_ARTIFACT_DIR=str(settings.artifacts_path))  # fmt: skip


def _submit(live: Any, tmp_path: Path, sleep_s: int) -> tuple[str, int]:
    settings, api, client = live
    admin = user_token(settings, "admin", admin=True)
    ds = images.write_ct_dataset(
        tmp_path / "test",
        ((f"P{i:03d}", 30 + 8 * i, int(i >= 2), int(i in (3, 5))) for i in range(N_CASES)),
    )
    assert apply_bundle(api, admin, stoic_bundle(), {"test": ds}).status_code == 200
    slow = images.WELL_BEHAVED.replace(
        "import glob, json, os, sys", f"import glob, json, os, sys, time\ntime.sleep({sleep_s})"
    )
    tag = images.build_image(client, f"nodes-slow-{sleep_s}", slow)
    archive = images.save_image(client, [tag], tmp_path / "slow.tar.gz", gz=True)
    alice = user_token(settings, "alice")
    r = submit_blob(api, alice, data=archive.read_bytes())
    assert r.status_code == 201, r.text
    return alice, int(r.json()["id"])


def _cases_scored(settings: Settings, sub: int) -> int:
    with session_scope(settings) as session:
        (evaluate,) = jobs_repo.for_submission(session, sub, "evaluate")
        return len(evaluate.result["metrics"]["case"])


def test_a_submissions_cases_run_on_both_nodes_and_score_once(live: Any, tmp_path: Path) -> None:
    settings, api, _ = live
    workers = [_node(settings, tmp_path, name) for name in ("node-a", "node-b")]
    try:
        alice, sub = _submit(live, tmp_path, 3)
        final = wait_final(api, alice, sub, timeout=300)
    finally:
        for w in workers:
            stop_worker(w)
    assert final["status"] == "succeeded", final
    with session_scope(settings) as session:
        infer = jobs_repo.for_submission(session, sub, "infer")
        assert {j.node for j in infer} == {"node-a", "node-b"}
        assert all(j.status == "succeeded" and j.attempt == 1 for j in infer)
    assert _cases_scored(settings, sub) == N_CASES
    r = api.get("/api/v1/nodes", headers=auth(user_token(settings, "admin", admin=True)))
    assert {n["name"] for n in r.json()} == {"node-a", "node-b"}


def test_a_killed_nodes_case_is_retried_on_the_other_node(live: Any, tmp_path: Path) -> None:
    settings, api, client = live
    a = None
    b = _node(settings, tmp_path, "node-b")
    try:
        alice, sub = _submit(live, tmp_path, 6)

        def running_on_b() -> int | None:
            # A job is "running" from its claim, before its container exists: kill B only
            # once the container is up, so that B's leftovers are certain to be there.
            on_b = client.containers.list(filters={"label": f"{LABEL_NODE}=node-b"})
            if not on_b:
                return None
            with session_scope(settings) as session:
                for j in jobs_repo.for_submission(session, sub, "infer"):
                    if j.status == "running" and j.node == "node-b":
                        return j.id
            return None

        killed = wait_for(running_on_b, 180, "a case running on node-b")
        stop_worker(b, signal.SIGKILL)
        a = _node(settings, tmp_path, "node-a")
        final = wait_final(api, alice, sub, timeout=300)
    finally:
        stop_worker(b)
        if a is not None:
            stop_worker(a)
    assert final["status"] == "succeeded", final
    with session_scope(settings) as session:
        job = next(j for j in jobs_repo.for_submission(session, sub, "infer") if j.id == killed)
        assert job.attempt == 2 and job.node == "node-a" and job.status == "succeeded"
        assert job.failure_message and "retried" in job.failure_message
    assert _cases_scored(settings, sub) == N_CASES

    # Node B's worker comes back: its reaper removes what its killed worker left, the
    # container if it is still there and the mounted /output of its work dir (node A's
    # reaper leaves other nodes' leftovers alone).
    def left_on_b() -> list[Any]:
        mounts = mounts_under(tmp_path / "node-b")
        return mounts + client.containers.list(all=True, filters={"label": f"{LABEL_NODE}=node-b"})

    assert left_on_b(), "the SIGKILLed worker's run should have left something behind"
    b = _node(settings, tmp_path, "node-b")
    try:
        wait_for(lambda: not left_on_b(), 60, "node-b's leftovers to be removed")
    finally:
        stop_worker(b)
