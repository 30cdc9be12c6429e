"""Never stuck, never unfair: canary failures and platform failures are not charged, and
`heldout run-local` classifies like the platform does. Real engine, Redis and workers."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient

from server.app import create_app
from server.config import Settings
from server.db import session_scope
from server.jobs import repository as jobs_repo
from tests.conftest import REDIS_URL, need
from tests.support import images
from tests.support.factories import (
    apply_bundle,
    auth,
    stoic_bundle,
    submit_blob,
    user_token,
)
from tests.support.workers import (
    ROOT,
    celery_worker,
    start_worker,
    stop_worker,
    wait_final,
    wait_for,
)
from worker.steps import container_key

pytestmark = [pytest.mark.docker, pytest.mark.redis, pytest.mark.slow]


def _cases(root: Path, n: int, prefix: str = "P") -> Path:
    return images.write_ct_dataset(
        root, ((f"{prefix}{i:03d}", 40 + 9 * i, int(i >= 1), int(i >= 2)) for i in range(n))
    )


@pytest.fixture
def live(pg_settings: Settings, tmp_path: Path) -> Any:
    need(REDIS_URL is not None, "Redis (HELDOUT_TEST_REDIS_URL)")
    client = images.client_or_none()
    need(client is not None, "a Docker engine")
    settings = pg_settings.model_copy(update={"heartbeat_s": 1})
    redis.Redis.from_url(settings.broker_url).flushdb()
    with TestClient(create_app(settings)) as api:
        yield settings, api, client, tmp_path


def _bundle(**kw: Any) -> dict[str, Any]:
    bundle = stoic_bundle(**kw)
    bundle["datasets"].append({"slug": "public", "path": "public", "public": True})
    bundle["phases"][0]["canary_dataset"] = "public"
    return bundle


def test_canary_failure_is_reported_and_not_charged(live: Any) -> None:
    settings, api, client, tmp = live
    admin = user_token(settings, "admin", admin=True)
    r = apply_bundle(
        api,
        admin,
        _bundle(rules={"max_submissions": 1}),
        {"test": _cases(tmp / "test", 4), "public": _cases(tmp / "public", 2, "Q")},
    )
    assert r.status_code == 200, r.text
    broken = images.build_image(client, "canary-broken", "raise SystemExit(3)\n")
    archive = images.save_image(client, [broken], tmp / "broken.tar")
    alice = user_token(settings, "alice")
    with celery_worker(settings):
        first = submit_blob(api, alice, data=archive.read_bytes())
        assert first.status_code == 201
        final = wait_final(api, alice, first.json()["id"])
    assert final["status"] == "failed"
    assert final["failure_code"] == "canary:exit_code:3"
    assert "public check case" in final["failure_message"]
    assert "does not count" in final["failure_message"]
    # Named as `heldout run-local` names the same case: by its name in the dataset.
    assert "public case Q000:" in final["failure_message"], final["failure_message"]
    assert final["charged"] is False
    # The test set was never touched, and the team's one submission is still available.
    assert [j["kind"] for j in final["jobs"]] == ["validate", "canary"]
    assert submit_blob(api, alice, data=archive.read_bytes()).status_code == 201


def test_platform_failure_after_lost_worker_is_not_charged(live: Any) -> None:
    """A worker killed mid-job, with no retries left: the reaper fails the job as the
    platform's fault and the team is not charged."""
    settings, api, client, tmp = live
    admin = user_token(settings, "admin", admin=True)
    r = apply_bundle(
        api, admin, stoic_bundle(rules={"max_submissions": 1}), {"test": _cases(tmp / "test", 2)}
    )
    assert r.status_code == 200
    slow = images.WELL_BEHAVED.replace(
        "import glob, json, os, sys", "import glob, json, os, sys, time\ntime.sleep(30)"
    )
    archive = images.save_image(
        client, [images.build_image(client, "fair-slow", slow)], tmp / "slow.tar"
    )
    alice = user_token(settings, "alice")
    first = start_worker(settings, concurrency=1, HELDOUT_MAX_ATTEMPTS="1")
    try:
        sid = submit_blob(api, alice, data=archive.read_bytes()).json()["id"]

        def running() -> bool:
            s = api.get(f"/api/v1/submissions/{sid}", headers=auth(alice)).json()
            return any(j["kind"] == "infer" and j["by_status"].get("running") for j in s["jobs"])

        wait_for(running, 120, "an inference job to run")
    finally:
        stop_worker(first, signal.SIGKILL)
    with celery_worker(settings, HELDOUT_MAX_ATTEMPTS="1"):
        final = wait_final(api, alice, sid)
    assert final["status"] == "failed" and final["charged"] is False
    assert "does not count against your team's limits" in final["failure_message"]
    with session_scope(settings) as session:
        codes = {j.failure_code for j in jobs_repo.for_submission(session, sid, "infer")}
        ours = {container_key(settings, j.id) for j in jobs_repo.for_submission(session, sid)}
    assert "platform_error" in codes
    managed = client.containers.list(all=True, filters={"label": "heldout.managed=1"})
    assert [c.name for c in managed if c.labels.get("heldout.job") in ours] == []
    assert submit_blob(api, alice, data=archive.read_bytes()).status_code == 201


def _run_local(bundle: Path, image: str, cases: Path) -> dict[str, Any]:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "server.cli",
            "run-local",
            "--bundle",
            str(bundle),
            "--phase",
            "qualification",
            "--image",
            image,
            "--cases",
            str(cases),
            "--json",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode in (0, 1), proc.stderr
    return dict(json.loads(proc.stdout))


@pytest.mark.parametrize("kind", ["good", "oom"])
def test_run_local_classifies_like_the_platform(live: Any, kind: str) -> None:
    settings, api, client, tmp = live
    import yaml

    limits = {"wall_time_s": 60, "memory_mb": 128}
    bundle = stoic_bundle(limits=limits)
    bundle_file = tmp / "bundle.yaml"
    bundle_file.write_text(yaml.safe_dump(bundle))
    cases = _cases(tmp / "test", 2)
    admin = user_token(settings, "admin", admin=True)
    assert apply_bundle(api, admin, bundle, {"test": cases}).status_code == 200
    script = images.WELL_BEHAVED if kind == "good" else images.MEMORY_HOG
    tag = images.build_image(client, f"local-{kind}", script)

    local = _run_local(bundle_file, tag, cases)
    archive = images.save_image(client, [tag], tmp / f"{kind}.tar")
    alice = user_token(settings, "alice")
    with celery_worker(settings):
        sid = submit_blob(api, alice, data=archive.read_bytes()).json()["id"]

        def inferred() -> bool:
            with session_scope(settings) as session:
                jobs = jobs_repo.for_submission(session, sid, "infer")
                return bool(jobs) and all(j.status in ("succeeded", "failed") for j in jobs)

        wait_for(inferred, 240, "inference to finish")
    with session_scope(settings) as session:
        platform = sorted(
            j.failure_code or "ok" for j in jobs_repo.for_submission(session, sid, "infer")
        )
    local_codes = sorted((c["failure"] or {}).get("reason", "ok") for c in local["cases"].values())
    assert local_codes == platform
    expected = "ok" if kind == "good" else "oom"
    assert set(platform) == {expected}
    assert local["status"] == ("succeeded" if kind == "good" else "failed")


def test_cancelling_stops_the_running_container(live: Any) -> None:
    settings, api, client, tmp = live
    admin = user_token(settings, "admin", admin=True)
    r = apply_bundle(api, admin, stoic_bundle(), {"test": _cases(tmp / "test", 1)})
    assert r.status_code == 200
    slow = images.WELL_BEHAVED.replace(
        "import glob, json, os, sys", "import glob, json, os, sys, time\ntime.sleep(90)"
    )
    archive = images.save_image(
        client, [images.build_image(client, "cancel-slow", slow)], tmp / "slow.tar"
    )
    alice = user_token(settings, "alice")
    sid = submit_blob(api, alice, data=archive.read_bytes()).json()["id"]
    with celery_worker(settings):

        def ours() -> list[str]:
            with session_scope(settings) as session:
                keys = {
                    container_key(settings, j.id) for j in jobs_repo.for_submission(session, sid)
                }
            managed = client.containers.list(filters={"label": "heldout.managed=1"})
            return [c.name for c in managed if c.labels.get("heldout.job") in keys]

        wait_for(ours, 120, "the algorithm's container to run")
        r = api.post(f"/api/v1/submissions/{sid}/cancel", headers=auth(alice))
        assert r.status_code == 200 and r.json()["status"] == "cancelled"
        started = time.monotonic()
        wait_for(lambda: not ours(), 30, "the cancelled job's container to be removed")
        assert time.monotonic() - started < 30  # not the 90 s the algorithm would take
    sub = api.get(f"/api/v1/submissions/{sid}", headers=auth(alice)).json()
    assert sub["status"] == "cancelled"
    assert sub["jobs"][-1]["by_status"] == {"cancelled": 1}
