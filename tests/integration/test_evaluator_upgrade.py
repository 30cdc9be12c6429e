"""A result is keyed by the evaluator that produced it. Scores of an older evaluator (an
earlier heldout) are not shown as current, and the first start after the upgrade re-scores
exactly those submissions, with the new evaluation image, without re-running algorithms."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy import select

from evaluation.build_image import DIGEST_LABEL, code_digest, default_tag
from server.app import create_app
from server.config import Settings
from server.db import session_scope
from server.jobs import repository as jobs_repo
from server.leaderboards.models import Result
from tests.conftest import REDIS_URL, need
from tests.support import images
from tests.support.factories import apply_bundle, auth, stoic_bundle, submit_blob, user_token
from tests.support.workers import ROOT, celery_worker, wait_for, worker_env

pytestmark = [pytest.mark.docker, pytest.mark.redis, pytest.mark.postgres, pytest.mark.slow]
BOARD = "/api/v1/challenges/stoic/phases/qualification/leaderboard"
OLD = "sha256:" + "0" * 64  # what an earlier heldout's evaluator stamped


@pytest.fixture
def live(pg_settings: Settings) -> Any:
    need(REDIS_URL is not None, "Redis (HELDOUT_TEST_REDIS_URL)")
    client = images.client_or_none()
    need(client is not None, "a Docker engine")
    settings = pg_settings.model_copy(update={"heartbeat_s": 1})
    redis.Redis.from_url(settings.broker_url).flushdb()
    with TestClient(create_app(settings)) as api:
        yield settings, api, client


def _upgrade(settings: Settings) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "server.cli", "db", "upgrade"],
        cwd=ROOT, env=worker_env(settings), capture_output=True, text=True, timeout=120,
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_scores_of_another_evaluator_are_stale_and_rescored_on_start(
    live: Any, tmp_path: Path
) -> None:
    settings, api, client = live
    admin = user_token(settings, "admin", admin=True)
    ds = images.write_ct_dataset(
        tmp_path / "test",
        ((f"P{i:03d}", 30 + 8 * i, int(i >= 2), int(i in (3, 5))) for i in range(6)),
    )
    assert apply_bundle(api, admin, stoic_bundle(), {"test": ds}).status_code == 200
    token = user_token(settings, "alice")
    tag = images.build_image(client, "evaluator-upgrade", images.WELL_BEHAVED)
    archive = images.save_image(client, [tag], tmp_path / "a.tar")

    def status(sid: int) -> str:
        return str(api.get(f"/api/v1/submissions/{sid}", headers=auth(admin)).json()["status"])

    with celery_worker(settings):
        sid = submit_blob(api, token, data=archive.read_bytes()).json()["id"]
        wait_for(lambda: status(sid) == "succeeded", 300, "the first score")
        # The worker ran the image named by the evaluator's code, and said so in the result.
        image = client.images.get(default_tag())
        assert image.labels[DIGEST_LABEL] == code_digest()
        with session_scope(settings) as session:
            result = session.scalars(select(Result).where(Result.submission_id == sid)).one()
            assert result.evaluator_version == code_digest()
            result.evaluator_version = OLD  # as if scored before the upgrade
        board = api.get(BOARD, headers=auth(token)).json()
        assert board["entries"] == []  # an old evaluator's number is not a current one

        assert "re-scoring 1 submission" in _upgrade(settings)
        wait_for(lambda: api.get(BOARD, headers=auth(token)).json()["entries"] != [], 300,
                 "the re-score")  # fmt: skip
        assert status(sid) == "succeeded"
        assert "re-scoring" not in _upgrade(settings)  # nothing stale is left
    with session_scope(settings) as session:
        keys = sorted(
            session.scalars(select(Result.evaluator_version).where(Result.submission_id == sid))
        )
        assert keys == sorted([OLD, code_digest()])
        assert len(jobs_repo.for_submission(session, sid, "infer")) == 6  # a case each, once
        assert len(jobs_repo.for_submission(session, sid, "evaluate")) == 2
