"""T2 end to end on the real engine, Redis and a Celery worker process: upload a `docker
save` archive, validate, run per case in the sandbox, evaluate in the evaluation container,
read the leaderboard through the API."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient

from server.app import create_app
from server.config import Settings
from tests.conftest import ON_POSTGRES, ON_SQLITE, REDIS_URL, need
from tests.support import images
from tests.support.factories import apply_bundle, auth, stoic_bundle, submit_blob, user_token
from tests.support.workers import celery_worker, start_worker, stop_worker, wait_final, wait_for
from worker.steps import container_key

pytestmark = [pytest.mark.docker, pytest.mark.redis, pytest.mark.slow]

N_CASES = 6


@pytest.fixture
def live(settings: Settings) -> Any:
    need(REDIS_URL is not None, "Redis (HELDOUT_TEST_REDIS_URL)")
    client = images.client_or_none()
    need(client is not None, "a Docker engine")
    redis.Redis.from_url(settings.broker_url).flushdb()
    settings = settings.model_copy(update={"heartbeat_s": 1})
    with TestClient(create_app(settings)) as api:
        yield settings, api, client


def _dataset(root: Path) -> Path:
    """Cases whose COVID label follows age: the well-behaved image predicts age/100."""
    return images.write_ct_dataset(
        root, ((f"P{i:03d}", 30 + 8 * i, int(i >= 2), int(i in (3, 5))) for i in range(N_CASES))
    )


def _submit(api: TestClient, token: str, archive: Path) -> dict[str, Any]:
    r = submit_blob(api, token, data=archive.read_bytes())
    assert r.status_code == 201, r.text
    return dict(r.json())


def _setup(live: Any, tmp_path: Path, script: str, name: str, **bundle_kw: Any) -> tuple[str, Path]:
    settings, api, client = live
    admin = user_token(settings, "admin", admin=True)
    ds = _dataset(tmp_path / "test")
    bundle = stoic_bundle(**bundle_kw)
    assert apply_bundle(api, admin, bundle, {"test": ds}).status_code == 200
    tag = images.build_image(client, name, script)
    return admin, images.save_image(client, [tag], tmp_path / f"{name}.tar.gz", gz=True)


def test_good_algorithm_is_scored_and_ranked(live: Any, tmp_path: Path) -> None:
    settings, api, _ = live
    _, archive = _setup(live, tmp_path, images.WELL_BEHAVED, "pipeline-good")
    alice = user_token(settings, "alice")
    with celery_worker(settings):
        sub = _submit(api, alice, archive)
        final = wait_final(api, alice, sub["id"])
    assert final["status"] == "succeeded", final
    states = [t["to_status"] for t in final["transitions"]]
    assert states == ["received", "validating", "queued", "inferring", "evaluating", "succeeded"]
    assert final["jobs"] == [
        {"kind": "validate", "total": 1, "by_status": {"succeeded": 1}},
        {"kind": "infer", "total": N_CASES, "by_status": {"succeeded": N_CASES}},
        {"kind": "evaluate", "total": 1, "by_status": {"succeeded": 1}},
    ]
    board = api.get(
        "/api/v1/challenges/stoic/phases/qualification/leaderboard", headers=auth(alice)
    ).json()
    (entry,) = board["entries"]
    assert entry["team"] == "alice" and entry["rank"] == 1
    # Predicted COVID probability is age/100 and COVID follows age: a perfect AUC.
    assert entry["metrics"]["auc-covid"]["value"] == pytest.approx(1.0)
    lo, hi = entry["ci"]
    assert lo is not None and hi is not None and lo <= entry["value"] <= hi


@ON_POSTGRES
def test_failing_cases_name_the_cases(live: Any, tmp_path: Path) -> None:
    settings, api, _ = live
    script = images.WELL_BEHAVED.replace("json.dump(0.25, f)", "json.dump(float('nan'), f)")
    _, archive = _setup(live, tmp_path, script, "pipeline-nan")
    alice = user_token(settings, "alice")
    with celery_worker(settings):
        final = wait_final(api, alice, _submit(api, alice, archive)["id"])
    assert final["status"] == "failed"
    assert final["failure_code"] == "cases_failed"
    assert f"failed on {N_CASES} of {N_CASES} cases" in final["failure_message"]
    assert "probability-severe-covid-19" in final["failure_message"]
    assert final["charged"] is True


def test_root_image_is_refused_at_validation(live: Any, tmp_path: Path) -> None:
    settings, api, client = live
    admin = user_token(settings, "admin", admin=True)
    assert (
        apply_bundle(api, admin, stoic_bundle(), {"test": _dataset(tmp_path / "t")}).status_code
        == 200
    )
    tag = images.build_image(client, "pipeline-root", images.WELL_BEHAVED, user=None)
    archive = images.save_image(client, [tag], tmp_path / "root.tar")
    alice = user_token(settings, "alice")
    with celery_worker(settings):
        final = wait_final(api, alice, _submit(api, alice, archive)["id"])
    assert final["status"] == "failed" and final["failure_code"] == "invalid_image"
    assert "root" in final["failure_message"]
    assert [j["kind"] for j in final["jobs"]] == ["validate"]
    # Refused before any work on private data: it does not count against the team.
    assert final["charged"] is False


@ON_SQLITE
def test_worker_killed_mid_job_loses_nothing(live: Any, tmp_path: Path) -> None:
    """SIGKILL the worker while a case runs; the reaper in a new worker retries the job
    and every case is evaluated exactly once."""
    settings, api, client = live
    slow = images.WELL_BEHAVED.replace(
        "import glob, json, os, sys", "import glob, json, os, sys, time\ntime.sleep(4)"
    )
    _, archive = _setup(live, tmp_path, slow, "pipeline-slow")
    alice = user_token(settings, "alice")
    first = start_worker(settings, concurrency=1, log=settings.data_dir / "w1.log")
    try:
        sub = _submit(api, alice, archive)

        def a_case_running() -> bool:
            s = api.get(f"/api/v1/submissions/{sub['id']}", headers=auth(alice)).json()
            return any(j["kind"] == "infer" and j["by_status"].get("running") for j in s["jobs"])

        wait_for(a_case_running, 120, "an inference job to run")
    finally:
        stop_worker(first, signal.SIGKILL)
    with celery_worker(settings, log=settings.data_dir / "w2.log"):
        final = wait_final(api, alice, sub["id"])
    assert final["status"] == "succeeded", final
    assert final["jobs"][1] == {
        "kind": "infer",
        "total": N_CASES,
        "by_status": {"succeeded": N_CASES},
    }
    from server.db import session_scope
    from server.jobs import repository as jobs_repo

    with session_scope(settings) as session:
        infer = jobs_repo.for_submission(session, sub["id"], "infer")
        retried = [j for j in infer if j.attempt > 1]
        assert retried, "the killed job should have been retried"
        assert all(j.failure_message and "retried" in j.failure_message for j in retried)
        (evaluate,) = jobs_repo.for_submission(session, sub["id"], "evaluate")
        cases = evaluate.result["metrics"]["case"]
        assert len(cases) == N_CASES
        ours = {container_key(settings, j.id) for j in jobs_repo.for_submission(session, sub["id"])}
    board = api.get(
        "/api/v1/challenges/stoic/phases/qualification/leaderboard", headers=auth(alice)
    ).json()
    assert len(board["entries"]) == 1
    managed = client.containers.list(all=True, filters={"label": "heldout.managed=1"})
    assert [c.name for c in managed if c.labels.get("heldout.job") in ours] == []
