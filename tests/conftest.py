"""Shared fixtures: a fresh, migrated database per test on SQLite and on PostgreSQL, an API
client, and users with tokens. Tasks are recorded instead of sent unless a test starts a
real worker."""

from __future__ import annotations

import os
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from server import dispatch
from server.app import create_app
from server.config import Settings
from server.db import get_engine
from server.embedded import migrate
from server.models import Base

IN_CI = os.environ.get("CI") == "true"
POSTGRES_URL = os.environ.get("HELDOUT_TEST_POSTGRES_URL")
REDIS_URL = os.environ.get("HELDOUT_TEST_REDIS_URL")
# An image registry on loopback ("127.0.0.1:5391"), for images travelling between nodes.
REGISTRY = os.environ.get("HELDOUT_TEST_REGISTRY")
# A reader waits this long for a board being recomputed before it gets the previous one. On a
# loaded 2-core machine a recompute can outlast the 2 s default, and tests that read a board
# right after a change assert the new one (the staleness tests set their own short wait).
os.environ.setdefault("HELDOUT_LEADERBOARD_FRESH_WAIT_S", "60")


def need(condition: bool, what: str) -> None:
    """Skip on a developer machine without the service; in CI a missing service fails."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"{what} is required in CI (scripts/start-services.sh starts it)")
    pytest.skip(f"{what} not available (run scripts/start-services.sh)")


_template: dict[str, Path] = {}
_pg_migrated = False


def _sqlite_settings(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    if "sqlite" not in _template:
        base = tmp_path_factory.mktemp("sqlite-template")
        migrate(Settings(data_dir=base))
        _template["sqlite"] = base / "heldout.db"
        # Fold the WAL into the main file so a plain copy holds the schema.
        with sqlite3.connect(_template["sqlite"]) as conn:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(_template["sqlite"], data / "heldout.db")
    return Settings(data_dir=data, redis_url=REDIS_URL or "redis://127.0.0.1:1/0")


def _pg_settings(tmp_path: Path) -> Settings:
    global _pg_migrated
    need(bool(POSTGRES_URL), "PostgreSQL (HELDOUT_TEST_POSTGRES_URL)")
    data = tmp_path / "data"
    data.mkdir()
    settings = Settings(
        data_dir=data, database_url=POSTGRES_URL, redis_url=REDIS_URL or "redis://127.0.0.1:1/0"
    )
    engine = get_engine(settings)
    if not _pg_migrated:
        with engine.begin() as conn:
            conn.execute(text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
        migrate(settings)
        _pg_migrated = True
    tables = ", ".join(t.name for t in Base.metadata.sorted_tables)
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    return settings


@pytest.fixture(params=["sqlite", "postgres"])
def settings(
    request: pytest.FixtureRequest, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> Settings:
    if request.param == "sqlite":
        return _sqlite_settings(tmp_path, tmp_path_factory)
    return _pg_settings(tmp_path)


@pytest.fixture
def pg_settings(tmp_path: Path) -> Settings:
    return _pg_settings(tmp_path)


@pytest.fixture
def pg_live(pg_settings: Settings) -> Iterator[tuple[Settings, TestClient, Any]]:
    """PostgreSQL, an emptied Redis broker, the Docker engine and an API client, with a 1 s
    heartbeat: (settings, api, docker client) for the slow pipeline tests that run once."""
    import redis

    from tests.support import images

    need(REDIS_URL is not None, "Redis (HELDOUT_TEST_REDIS_URL)")
    client = images.client_or_none()
    need(client is not None, "a Docker engine")
    redis.Redis.from_url(pg_settings.broker_url).flushdb()
    settings = pg_settings.model_copy(update={"heartbeat_s": 1})
    with TestClient(create_app(settings)) as api:
        yield settings, api, client


@pytest.fixture
def sent_tasks(monkeypatch: pytest.MonkeyPatch) -> list[dispatch.PendingTask]:
    """Tasks the server would have sent to Redis after commit."""
    sent: list[dispatch.PendingTask] = []
    monkeypatch.setattr(dispatch, "sender", lambda tasks, _broker: sent.extend(tasks))
    return sent


@pytest.fixture
def api(settings: Settings, sent_tasks: list[dispatch.PendingTask]) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as client:
        yield client
