"""A worker node that shares no filesystem with the server: its own data directory, no
HELDOUT_ARTIFACT_DIR, only the database, the broker, the server's URL and a node token
(`heldout node-token create`). It runs a T2 submission end to end, reading the image archive
and the case files by digest through the server into its own cache and sending outputs and
logs back the same way."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from server.app import create_app
from server.db import session_scope
from server.jobs import repository as jobs_repo
from server.nodes import service as nodes
from server.storage import ArtifactStore
from tests.support import images
from tests.support.factories import apply_bundle, stoic_bundle, submit_blob, user_token
from tests.support.workers import (
    ROOT,
    live_server,
    start_worker,
    stop_worker,
    wait_final,
    wait_for,
    worker_env,
)

pytestmark = [pytest.mark.docker, pytest.mark.redis, pytest.mark.slow]

N_CASES = 3


def test_a_node_without_the_shared_directory_runs_a_t2_submission(
    pg_live: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings, api, client = pg_live
    monkeypatch.delenv("HELDOUT_ARTIFACT_DIR", raising=False)
    cli = subprocess.run(
        [sys.executable, "-m", "heldout", "node-token", "create", "--name", "node-r", "--json"],
        cwd=ROOT, env=worker_env(settings), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert cli.returncode == 0, cli.stdout + cli.stderr
    token = json.loads(cli.stdout)["token"]

    admin = user_token(settings, "admin", admin=True)
    ds = images.write_ct_dataset(
        tmp_path / "test",
        ((f"P{i:03d}", 30 + 8 * i, int(i >= 1), int(i == 2)) for i in range(N_CASES)),
    )
    assert apply_bundle(api, admin, stoic_bundle(), {"test": ds}).status_code == 200
    tag = images.build_image(client, "remote-artifacts", images.WELL_BEHAVED)
    archive = images.save_image(client, [tag], tmp_path / "algo.tar.gz", gz=True)
    alice = user_token(settings, "alice")

    node_dir = tmp_path / "node-r"
    node_dir.mkdir()
    with live_server(create_app(settings)) as url:
        worker = start_worker(settings, concurrency=1, log=tmp_path / "node-r.log",
                              HELDOUT_DATA_DIR=str(node_dir), HELDOUT_NODE_NAME="node-r",
                              HELDOUT_NODE_SERVER_URL=url, HELDOUT_NODE_TOKEN=token)  # fmt: skip
        try:
            r = submit_blob(api, alice, data=archive.read_bytes())
            assert r.status_code == 201, r.text
            sub = int(r.json()["id"])
            final = wait_final(api, alice, sub, timeout=400)

            def cache_reported() -> int:
                with session_scope(settings) as session:
                    row = nodes.get(session, "node-r")
                    return row.cache_bytes if row else 0

            reported = wait_for(cache_reported, 60, "node-r to report its cache")
        finally:
            stop_worker(worker)
    log = (tmp_path / "node-r.log").read_text(errors="replace")
    assert final["status"] == "succeeded", (final, log[-4000:])

    # Nothing went through a shared directory: the node's own artifact dir stayed empty,
    # its cache holds what it fetched (the archive and the case files).
    assert not list((node_dir / "artifacts").glob("sha256/*/*"))
    cached = {p.name: p.stat().st_size for p in (node_dir / "cache").glob("sha256/*/*")}
    assert len(cached) >= 1 + N_CASES and reported > 0
    server_store = ArtifactStore(settings.artifacts_path)
    with session_scope(settings) as session:
        infer = jobs_repo.for_submission(session, sub, "infer")
        assert infer and {j.node for j in infer} == {"node-r"}
        assert all(j.status == "succeeded" for j in infer)
        sent = [
            out["digest"]
            for j in infer
            for out in (j.result.get("outputs") or {}).values()
            if "digest" in out
        ]
        logs = [j.log_digest for j in infer if j.log_digest]
        (evaluate,) = jobs_repo.for_submission(session, sub, "evaluate")
        assert len(evaluate.result["metrics"]["case"]) == N_CASES
    # Outputs and logs came back by digest into the server's store.
    for digest in sent + logs:
        assert server_store.exists(digest), digest
