"""A locked SQLite database (another writer holds it past the busy timeout) answers a write
503 with Retry-After, as a documented problem response, instead of a 500; reads need no
lock and are answered."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event

from server import dispatch
from server.app import create_app
from server.db import get_engine
from tests.conftest import _sqlite_settings
from tests.support.factories import auth, user_token


def test_a_locked_database_is_503_with_retry_after(
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
    sent_tasks: list[dispatch.PendingTask],
) -> None:
    settings = _sqlite_settings(tmp_path, tmp_path_factory)
    token = user_token(settings, "alice")
    engine = get_engine(settings)
    engine.dispose()

    @event.listens_for(engine, "connect")
    def _short_busy_timeout(dbapi_conn: Any, _record: Any) -> None:
        # After the engine's own PRAGMA busy_timeout=30000: wait 0.2 s, not 30.
        dbapi_conn.execute("PRAGMA busy_timeout=200")

    holder = sqlite3.connect(settings.data_dir / "heldout.db", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # the write lock, as a long transaction holds it
    try:
        with TestClient(create_app(settings), raise_server_exceptions=False) as api:
            read = api.get("/api/v1/me", headers=auth(token))
            r = api.post("/api/v1/uploads", json={"filename": "a", "size": 5}, headers=auth(token))
            spec = api.get("/api/v1/openapi.json").json()
    finally:
        holder.rollback()
        holder.close()
        event.remove(engine, "connect", _short_busy_timeout)
        engine.dispose()
    assert read.status_code == 200, read.text
    assert r.status_code == 503, r.text
    assert r.headers["retry-after"] == "5"
    assert r.headers["content-type"] == "application/problem+json"
    assert "database is busy" in r.json()["detail"]
    documented = spec["paths"]["/api/v1/uploads"]["post"]["responses"]["503"]
    assert "Retry-After" in documented["headers"]
