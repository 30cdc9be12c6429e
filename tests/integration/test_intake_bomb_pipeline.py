"""A gzip-bomb image through the real pipeline (Celery worker, Redis, engine): refused at
validation in seconds as the participant's error, never retried, and not charged (no private
data was touched)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient

from server.app import create_app
from server.config import Settings
from tests.conftest import REDIS_URL, need
from tests.support import bombs, images
from tests.support.factories import (
    apply_bundle,
    auth,
    stoic_bundle,
    stoic_cases,
    submit_blob,
    user_token,
    write_dataset,
)
from tests.support.workers import celery_worker, wait_final

pytestmark = [pytest.mark.docker, pytest.mark.redis, pytest.mark.slow]


def test_gzip_bomb_is_refused_at_validation_uncharged_and_not_retried(
    settings: Settings, tmp_path: Path
) -> None:
    need(REDIS_URL is not None, "Redis (HELDOUT_TEST_REDIS_URL)")
    need(images.client_or_none() is not None, "a Docker engine")
    redis.Redis.from_url(settings.broker_url).flushdb()
    settings = settings.model_copy(update={"heartbeat_s": 1})
    archive = bombs.layer_bomb(tmp_path / "bomb.tar")  # 2 GiB of zeros in ~2 MB
    with TestClient(create_app(settings)) as api:
        admin = user_token(settings, "admin", admin=True)
        ds = write_dataset(tmp_path / "test", stoic_cases())
        assert apply_bundle(api, admin, stoic_bundle(), {"test": ds}).status_code == 200
        alice = user_token(settings, "alice")
        with celery_worker(settings):
            r = submit_blob(api, alice, data=archive.read_bytes())
            assert r.status_code == 201, r.text
            started = time.monotonic()
            final = wait_final(api, alice, r.json()["id"], timeout=120)
            elapsed = time.monotonic() - started
        jobs = api.get(f"/api/v1/submissions/{final['id']}/jobs", headers=auth(alice)).json()
    assert final["status"] == "failed" and final["failure_code"] == "invalid_image", final
    assert "compression ratio" in final["failure_message"]
    assert final["charged"] is False  # refused before any work on private data
    assert [(j["kind"], j["attempt"]) for j in jobs] == [("validate", 1)]
    assert elapsed < 60, f"refused after {elapsed:.0f} s"
