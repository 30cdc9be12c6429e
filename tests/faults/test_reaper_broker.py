"""The reaper's broker side on a test-owned Redis: measuring a queue never raises on an
empty or flushed Redis, it restores the bindings a flush removed, and one failing step of a
pass does not stop the others."""

from __future__ import annotations

import shutil
from typing import Any

import pytest
import redis

from server.config import Settings
from tests.conftest import need
from tests.support.services import redis_server
from worker import reaper

pytestmark = [pytest.mark.redis, pytest.mark.faults]

QUEUES = {"build", "cpu", "gpu", "gpu-2", "evaluation"}


def test_queue_sizes_on_empty_and_flushed_redis() -> None:
    need(shutil.which("redis-server") is not None, "redis-server")
    with redis_server() as rs:
        client = redis.Redis.from_url(rs.url)
        # A fresh Redis: no list key for any queue, which a passive declare reports as
        # NOT_FOUND on kombu's Redis transport.
        assert reaper.queue_sizes(QUEUES, rs.url) == dict.fromkeys(QUEUES, 0)
        assert client.smembers("_kombu.binding.cpu")
        client.lpush("cpu", b"{}")
        assert reaper.queue_sizes(QUEUES, rs.url)["cpu"] == 1
        rs.flush()
        assert reaper.queue_sizes(QUEUES, rs.url) == dict.fromkeys(QUEUES, 0)
        assert client.smembers("_kombu.binding.cpu"), "the binding a flush removed is back"


def test_a_failing_step_does_not_stop_the_pass(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    ran: list[str] = []

    def broken(_: Settings) -> list[int]:
        ran.append("resend_lost")
        raise ConnectionError("broker gone")

    monkeypatch.setattr(reaper, "reap", lambda _: ran.append("reap") or [])
    monkeypatch.setattr(reaper, "resend_lost", broken)
    monkeypatch.setattr(reaper, "stop_cancelled", lambda _: ran.append("stop_cancelled") or [])
    reaper.run_pass(Settings(data_dir=tmp_path))
    assert ran == ["reap", "resend_lost", "stop_cancelled"]
    assert "failed; the next pass tries again" in caplog.text and "broker gone" in caplog.text
