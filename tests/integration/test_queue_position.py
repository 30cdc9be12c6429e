"""Queue positions of several queued submissions, as the API and `heldout status` show them."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from fastapi.testclient import TestClient

from server.config import Settings
from server.db import session_scope, utcnow
from server.jobs import repository as jobs_repo
from server.jobs import service as jobs
from tests.support.factories import (
    apply_bundle,
    auth,
    stoic_bundle,
    stoic_cases,
    submit_blob,
    user_token,
    write_dataset,
)


def test_positions_follow_submission_order(
    api: TestClient, settings: Settings, tmp_path: Path
) -> None:
    admin = user_token(settings, "admin", admin=True)
    ds = write_dataset(tmp_path / "test", stoic_cases())
    assert apply_bundle(api, admin, stoic_bundle(), {"test": ds}).status_code == 200
    tokens = [user_token(settings, name) for name in ("ann", "ben", "cat", "dan")]
    ids = [submit_blob(api, t).json()["id"] for t in tokens]

    def q(i: int) -> dict:  # type: ignore[type-arg]
        return api.get(f"/api/v1/submissions/{ids[i]}", headers=auth(tokens[i])).json()["queue"]

    assert [q(i)["position"] for i in range(4)] == [1, 2, 3, 4]
    assert [q(i)["jobs_ahead"] for i in range(4)] == [0, 1, 2, 3]
    assert all(q(i)["queue"] == "build" for i in range(4))
    # No history on this queue yet: no estimate rather than a made-up one.
    assert q(3)["estimated_start_at"] is None

    # A worker takes the first job and finishes it in 20 s: the others move up, and an
    # estimate appears from that duration.
    with session_scope(settings) as session:
        (job,) = jobs_repo.for_submission(session, ids[0])
        jobs.claim(session, job.id, "w1", 60, 60)
    with session_scope(settings) as session:
        job = jobs_repo.for_submission(session, ids[0])[0]
        job.started_at = utcnow() - timedelta(seconds=20)
        jobs.succeed(session, job, {})
    assert q(0) is None
    assert [q(i)["position"] for i in (1, 2, 3)] == [1, 2, 3]
    eta = q(3)["estimated_start_at"]
    assert eta is not None and q(3)["mean_job_s"] is not None

    # A cancelled submission leaves the queue and those behind it move up.
    r = api.post(f"/api/v1/submissions/{ids[1]}/cancel", headers=auth(tokens[1]))
    assert r.status_code == 200 and r.json()["queue"] is None
    assert [q(i)["position"] for i in (2, 3)] == [1, 2]
