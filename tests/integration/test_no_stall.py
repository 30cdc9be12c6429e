"""A slow request never stalls the others on SQLite: a chunk held open for 15 s leaves
another user's reads and writes and a worker heartbeat answered while it is still open,
and reads are answered even while some other transaction holds SQLite's write lock."""

from __future__ import annotations

import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from server.config import Settings
from server.db import session_scope
from server.jobs import service as jobs
from tests.conftest import _sqlite_settings
from tests.integration.test_uploads import LiveServer, _serving
from tests.support.factories import auth, user_token

MiB = 1024 * 1024
pytestmark = pytest.mark.slow


@pytest.fixture
def live_sqlite(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    with _serving(_sqlite_settings(tmp_path, tmp_path_factory)) as server:
        yield server


def _heartbeat(settings: Settings) -> bool:
    with session_scope(settings) as session:
        return jobs.heartbeat(session, 1, "worker-x")


def test_a_chunk_open_for_15_s_holds_up_no_one(live_sqlite: LiveServer) -> None:
    live = live_sqlite
    bob = user_token(live.settings, "bob")
    alice = httpx.Client(base_url=f"{live.url}/api/v1", headers=auth(live.token), timeout=10)
    key = alice.post("/uploads", json={"filename": "a", "size": 10 * MiB}).json()["key"]
    sock: socket.socket = live.open_put(key, 0, 10 * MiB)
    sock.sendall(b"x" * MiB)  # then nothing for 15 s, as a stalled link
    opened = time.monotonic()
    other = httpx.Client(base_url=f"{live.url}/api/v1", headers=auth(bob), timeout=1.0)
    answered = 0
    try:
        while time.monotonic() - opened < 15:
            # Each with a 1 s timeout: a stall raises instead of waiting for the chunk.
            assert other.get("/me").json()["username"] == "bob"
            assert other.post("/uploads", json={"filename": "b", "size": 5}).status_code == 201
            started = time.monotonic()
            _heartbeat(live.settings)
            assert time.monotonic() - started < 1.0
            answered += 1
            time.sleep(1)
        # The chunk is still open: its connection is alive and its bytes not yet counted.
        assert alice.get(f"/uploads/{key}").json()["received"] == 0
        sock.sendall(b"x" * MiB)
    finally:
        sock.close()
    assert answered >= 10


def test_reads_are_answered_while_another_transaction_holds_the_write_lock(
    live_sqlite: LiveServer,
) -> None:
    """WAL readers need no lock: a writer holding SQLite's write lock (a long transaction
    elsewhere) leaves every GET answered; the writes wait for it, then succeed."""
    live = live_sqlite
    bob = user_token(live.settings, "bob")
    other = httpx.Client(base_url=f"{live.url}/api/v1", headers=auth(bob), timeout=2.0)
    holder = sqlite3.connect(live.settings.data_dir / "heldout.db", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    wrote: list[int] = []
    writer = threading.Thread(
        target=lambda: wrote.append(
            httpx.post(
                f"{live.url}/api/v1/uploads",
                json={"filename": "w", "size": 5},
                headers=auth(bob),
                timeout=30,
            ).status_code
        )
    )
    try:
        writer.start()
        for _ in range(5):
            assert other.get("/me").status_code == 200
            assert other.get("/challenges").status_code == 200
        assert not wrote  # the write waits for the lock...
    finally:
        holder.rollback()
        holder.close()
    writer.join(30)
    assert wrote == [201]  # ...and goes through once it is free


def test_sigterm_stops_the_server_within_5_s_with_a_chunk_in_flight(
    live_sqlite: LiveServer,
) -> None:
    """Graceful shutdown abandons a request nobody will finish (a stalled chunk)."""
    import os
    import signal

    live = live_sqlite
    alice = httpx.Client(base_url=f"{live.url}/api/v1", headers=auth(live.token), timeout=10)
    key = alice.post("/uploads", json={"filename": "a", "size": 10 * MiB}).json()["key"]
    sock = live.open_put(key, 0, 10 * MiB)
    sock.sendall(b"x" * MiB)
    try:
        assert live.proc is not None
        time.sleep(0.5)
        started = time.monotonic()
        os.killpg(live.proc.pid, signal.SIGTERM)
        live.proc.wait(timeout=10)
        assert time.monotonic() - started < 5
    finally:
        sock.close()
