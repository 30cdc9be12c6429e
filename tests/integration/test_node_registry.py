"""Worker nodes in the database: a node registers and heartbeats, every job records the node
running it, and admins and organizers list the nodes (API and `heldout nodes`)."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

from fastapi.testclient import TestClient

from server.config import Settings
from server.db import session_scope, utcnow
from server.jobs import repository as jobs_repo
from server.jobs import service as jobs
from server.nodes import service as nodes
from tests.conftest import ON_POSTGRES
from tests.support.factories import (
    apply_bundle,
    auth,
    stoic_bundle,
    stoic_cases,
    submit_blob,
    user_token,
    write_dataset,
)
from tests.support.workers import ROOT, live_server, stop_worker, wait_for, worker_env


def test_a_node_registers_heartbeats_and_is_listed_for_admins_only(
    api: TestClient, settings: Settings
) -> None:
    with session_scope(settings) as session:
        nodes.register(session, "gpu-a", queues=["gpu", "cpu"], devices=["0", "1"],
                       free_disk_bytes=1000, cache_bytes=10)  # fmt: skip
    first = _node(settings, "gpu-a")
    with session_scope(settings) as session:
        assert nodes.heartbeat(session, "gpu-a", free_disk_bytes=900, cache_bytes=20)
        assert not nodes.heartbeat(session, "nobody", free_disk_bytes=1, cache_bytes=1)
    again = _node(settings, "gpu-a")
    assert again["free_disk_bytes"] == 900 and again["cache_bytes"] == 20
    assert again["heartbeat_at"] >= first["heartbeat_at"]
    assert again["started_at"] == first["started_at"]

    # A node registering again (a restarted worker) is the same row, started anew.
    with session_scope(settings) as session:
        nodes.register(session, "gpu-a", queues=["gpu"], devices=["0"], free_disk_bytes=5,
                       cache_bytes=0)  # fmt: skip
        assert len(nodes.list_nodes(session)) == 1

    admin = user_token(settings, "root", admin=True)
    r = api.get("/api/v1/nodes", headers=auth(admin))
    assert r.status_code == 200, r.text
    (node,) = r.json()
    assert node["name"] == "gpu-a" and node["queues"] == ["gpu"] and node["devices"] == ["0"]
    assert node["free_disk_bytes"] == 5 and node["alive"] is True
    assert {"heartbeat_at", "started_at", "cache_bytes", "running_jobs"} <= set(node)

    participant = user_token(settings, "ann")
    assert api.get("/api/v1/nodes", headers=auth(participant)).status_code == 403
    assert api.get("/api/v1/nodes").status_code == 401


def test_an_organizer_sees_the_nodes_and_a_silent_node_is_not_alive(
    api: TestClient, settings: Settings, tmp_path: Path
) -> None:
    admin = user_token(settings, "root", admin=True)
    organizer = user_token(settings, "olga")
    ds = write_dataset(tmp_path / "test", stoic_cases())
    bundle = {**stoic_bundle(), "organizers": ["olga"]}
    assert apply_bundle(api, admin, bundle, {"test": ds}).status_code == 200
    with session_scope(settings) as session:
        nodes.register(session, "old", queues=["cpu"], devices=[], free_disk_bytes=1,
                       cache_bytes=0)  # fmt: skip
        nodes.get(session, "old").heartbeat_at = utcnow() - timedelta(hours=1)
    r = api.get("/api/v1/nodes", headers=auth(organizer))
    assert r.status_code == 200, r.text
    assert [(n["name"], n["alive"]) for n in r.json()] == [("old", False)]


def test_every_job_records_the_node_running_it(
    api: TestClient, settings: Settings, tmp_path: Path
) -> None:
    admin = user_token(settings, "root", admin=True)
    ds = write_dataset(tmp_path / "test", stoic_cases())
    assert apply_bundle(api, admin, stoic_bundle(), {"test": ds}).status_code == 200
    sub = submit_blob(api, user_token(settings, "ann")).json()["id"]
    with session_scope(settings) as session:
        (job,) = jobs_repo.for_submission(session, sub)
        claimed = jobs.claim(session, job.id, "host:1", 60, 60, node="node-b")
        assert claimed is not None and claimed.node == "node-b"
    r = api.get(f"/api/v1/submissions/{sub}/jobs", headers=auth(admin))
    assert r.json()[0]["node"] == "node-b"
    # Participants do not learn the platform's machines.
    ann = user_token(settings, "ann")
    assert api.get(f"/api/v1/submissions/{sub}/jobs", headers=auth(ann)).json()[0]["node"] is None


@ON_POSTGRES
def test_heldout_worker_node_name_registers_and_heldout_nodes_lists_it(
    settings: Settings, tmp_path: Path
) -> None:
    from server.app import create_app
    from tests.conftest import REDIS_URL, need

    need(bool(REDIS_URL), "Redis (HELDOUT_TEST_REDIS_URL)")
    env = worker_env(settings, HELDOUT_GPU_DEVICE_IDS='["0","1"]')
    log = open(settings.data_dir / "worker.log", "ab")  # noqa: SIM115 - lives with proc
    proc = subprocess.Popen(
        [sys.executable, "-m", "heldout", "worker", "--node-name", "node-a",
         "--queues", "cpu,gpu", "-c", "1"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:

        def registered() -> dict | None:  # type: ignore[type-arg]
            with session_scope(settings) as session:
                row = nodes.get(session, "node-a")
                return nodes.describe(row) if row else None

        node = wait_for(registered, 90, "node-a to register")
        assert node["queues"] == ["cpu", "gpu"] and node["devices"] == ["0", "1"]
        assert node["free_disk_bytes"] > 0
        beat = node["heartbeat_at"]
        wait_for(lambda: registered()["heartbeat_at"] > beat, 60, "node-a to heartbeat")  # type: ignore[index]

        admin = user_token(settings, "root", admin=True)
        with live_server(create_app(settings)) as url:
            cli = subprocess.run(
                [sys.executable, "-m", "heldout", "nodes", "--json"],
                env={**env, "HELDOUT_API_URL": url, "HELDOUT_TOKEN": admin},
                capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            assert cli.returncode == 0, cli.stdout + cli.stderr
            (listed,) = json.loads(cli.stdout)
            assert listed["name"] == "node-a" and listed["devices"] == ["0", "1"]
            table = subprocess.run(
                [sys.executable, "-m", "heldout", "nodes"],
                env={**env, "HELDOUT_API_URL": url, "HELDOUT_TOKEN": admin, "COLUMNS": "200"},
                capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            assert table.returncode == 0, table.stderr
            for word in ("node-a", "cpu,gpu", "0,1", "free disk", "heartbeat"):
                assert word in table.stdout, table.stdout
    finally:
        stop_worker(proc)


def _node(settings: Settings, name: str) -> dict:  # type: ignore[type-arg]
    with session_scope(settings) as session:
        row = nodes.get(session, name)
        assert row is not None
        return nodes.describe(row)
