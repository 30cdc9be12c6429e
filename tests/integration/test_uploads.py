"""Streamed, resumable uploads: the digest is computed while streaming, a resumed upload
continues at the server's offset, and content already stored is never stored twice."""

from __future__ import annotations

import base64
import hashlib
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from server.client import Client
from server.config import Settings
from tests.support.factories import auth, user_token
from tests.support.workers import ROOT, free_port, wait_for, wait_healthy, worker_env


def _store_files(settings: Settings) -> list[Path]:
    return [p for p in (settings.artifacts_path / "sha256").rglob("*") if p.is_file()]


def _start(api: TestClient, token: str, size: int, sha: str | None = None) -> dict:  # type: ignore[type-arg]
    body = {"filename": "algo.tar", "size": size, **({"sha256": sha} if sha else {})}
    r = api.post("/api/v1/uploads", json=body, headers=auth(token))
    assert r.status_code == 201, r.text
    return dict(r.json())


def test_resume_after_an_interrupted_chunk(api: TestClient, settings: Settings) -> None:
    alice = user_token(settings, "alice")
    data = bytes(range(256)) * 4096  # 1 MiB
    up = _start(api, alice, len(data))
    key = up["key"]
    r = api.put(
        f"/api/v1/uploads/{key}", params={"offset": 0}, content=data[:300_000], headers=auth(alice)
    )
    assert r.json()["received"] == 300_000 and r.json()["status"] == "open"
    # A client that lost track sends from the wrong offset: told where to resume.
    wrong = api.put(
        f"/api/v1/uploads/{key}",
        params={"offset": 500_000},
        content=data[500_000:],
        headers=auth(alice),
    )
    assert wrong.status_code == 409
    assert wrong.json()["received"] == 300_000 and wrong.json()["field"] == "offset"
    status = api.get(f"/api/v1/uploads/{key}", headers=auth(alice)).json()
    r = api.put(
        f"/api/v1/uploads/{key}",
        params={"offset": status["received"]},
        content=data[status["received"] :],
        headers=auth(alice),
    )
    done = r.json()
    assert done["status"] == "complete"
    assert done["digest"] == "sha256:" + hashlib.sha256(data).hexdigest()
    stored = [p for p in _store_files(settings) if p.name == done["digest"][7:]]
    assert len(stored) == 1 and stored[0].read_bytes() == data


def test_same_content_is_stored_once(api: TestClient, settings: Settings) -> None:
    alice, bob = user_token(settings, "alice"), user_token(settings, "bob")
    data = b"layer" * 50_000
    sha = "sha256:" + hashlib.sha256(data).hexdigest()
    first = _start(api, alice, len(data), sha)
    api.put(
        f"/api/v1/uploads/{first['key']}", params={"offset": 0}, content=data, headers=auth(alice)
    )
    before = _store_files(settings)
    # Bob must send the bytes (issue 10: a declared digest alone claims nothing) ...
    again = _start(api, bob, len(data), sha)
    assert again["status"] == "open" and again["received"] == 0
    r = api.put(
        f"/api/v1/uploads/{again['key']}", params={"offset": 0}, content=data, headers=auth(bob)
    )
    assert r.json()["status"] == "complete" and r.json()["digest"] == sha
    # ... and the store still holds them once.
    assert _store_files(settings) == before


def test_bad_uploads_are_refused_clearly(api: TestClient, settings: Settings) -> None:
    alice, bob = user_token(settings, "alice"), user_token(settings, "bob")
    too_big = api.post(
        "/api/v1/uploads", json={"filename": "x", "size": 10**15}, headers=auth(alice)
    )
    assert too_big.status_code == 413 and too_big.json()["field"] == "size"
    up = _start(api, alice, 10)
    over = api.put(
        f"/api/v1/uploads/{up['key']}", params={"offset": 0}, content=b"x" * 11, headers=auth(alice)
    )
    assert over.status_code == 413 and "declared 10 bytes" in over.json()["detail"]
    # Someone else's upload does not exist for you.
    assert api.get(f"/api/v1/uploads/{up['key']}", headers=auth(bob)).status_code == 404
    # A declared digest that the content does not match: refused, nothing stored.
    liar = _start(api, alice, 4, "sha256:" + "0" * 64)
    r = api.put(
        f"/api/v1/uploads/{liar['key']}", params={"offset": 0}, content=b"abcd", headers=auth(alice)
    )
    assert r.status_code == 409 and r.json()["field"] == "expected_digest"
    assert not [p for p in _store_files(settings) if p.name == hashlib.sha256(b"abcd").hexdigest()]
    # Submitting an incomplete upload names it.
    r = api.post(
        "/api/v1/challenges/x/phases/y/submissions", json={"upload": up["key"]}, headers=auth(alice)
    )
    assert r.status_code == 404 and r.json()["field"] == "challenge"


def test_malformed_requests_name_the_field(api: TestClient, settings: Settings) -> None:
    alice = user_token(settings, "alice")
    r = api.post("/api/v1/uploads", json={"filename": "x", "size": "big"}, headers=auth(alice))
    assert r.status_code == 422 and r.json()["field"] == "size"
    assert r.headers["content-type"] == "application/problem+json"
    r = api.post(
        "/api/v1/uploads",
        content=b"{not json",
        headers={**auth(alice), "content-type": "application/json"},
    )
    assert r.status_code == 422
    r = api.post("/api/v1/tokens", json={"name": "x", "scope": "all"}, headers=auth(alice))
    assert r.status_code == 422 and r.json()["field"] == "scope"
    r = api.post(
        "/api/v1/challenges/nope/phases/x/submissions",
        json={"upload": "k", "repository_url": "https://example.org/x.git", "ref": "v1"},
        headers=auth(alice),
    )
    assert r.status_code == 422 and "either upload" in r.json()["detail"]
    r = api.get("/api/v1/submissions/not-a-number", headers=auth(alice))
    assert r.status_code == 422 and r.json()["field"] == "submission_id"


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _stored(settings: Settings, digest: str) -> bytes:
    return (settings.artifacts_path / "sha256" / digest[7:9] / digest[7:]).read_bytes()


def _put(api: TestClient, token: str, key: str, offset: int, data: bytes, **headers: str) -> Any:
    return api.put(
        f"/api/v1/uploads/{key}",
        params={"offset": offset},
        content=data,
        headers={**auth(token), **headers},
    )


def test_a_chunk_checksum_is_verified_before_it_counts(api: TestClient, settings: Settings) -> None:
    """tus checksum extension: `Upload-Checksum: sha256 <base64 digest>` of the chunk."""
    alice = user_token(settings, "alice")
    data = os.urandom(200_000)
    key = _start(api, alice, len(data))["key"]
    good = base64.b64encode(hashlib.sha256(data[:50_000]).digest()).decode()
    bad = base64.b64encode(hashlib.sha256(b"something else").digest()).decode()
    r = _put(api, alice, key, 0, data[:50_000], **{"Upload-Checksum": f"sha256 {bad}"})
    assert r.status_code == 409 and r.json()["field"] == "upload_checksum", r.text
    assert r.json()["received"] == 0
    r = _put(api, alice, key, 0, data[:50_000], **{"Upload-Checksum": "md5 xyz"})
    assert r.status_code == 422 and r.json()["field"] == "upload_checksum", r.text
    r = _put(api, alice, key, 0, data[:50_000], **{"Upload-Checksum": f"sha256 {good}"})
    assert r.status_code == 200 and r.json()["received"] == 50_000
    done = _put(api, alice, key, 50_000, data[50_000:]).json()
    assert done["digest"] == _sha(data) and _stored(settings, done["digest"]) == data


def test_stored_bytes_damaged_before_completion_are_sent_again(
    api: TestClient, settings: Settings
) -> None:
    """Completion hashes the bytes on disk, checking each chunk against its logged digest:
    a damaged chunk rolls the upload back to it instead of completing with wrong bytes."""
    alice = user_token(settings, "alice")
    data = os.urandom(300_000)
    key = _start(api, alice, len(data))["key"]
    for offset in (0, 100_000):
        assert _put(api, alice, key, offset, data[offset : offset + 100_000]).status_code == 200
    part = settings.artifacts_path / "uploads" / key
    with part.open("r+b") as f:
        f.seek(150_000)
        f.write(b"\0" * 10)
    r = _put(api, alice, key, 200_000, data[200_000:])
    assert r.status_code == 409 and r.json()["received"] == 100_000, r.text
    done = _put(api, alice, key, 100_000, data[100_000:]).json()
    assert done["digest"] == _sha(data) and _stored(settings, done["digest"]) == data


# A real server process: sockets closed mid-body, a server killed mid-chunk and restarted.


class LiveServer:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.token = user_token(settings, "alice")

    def start(self) -> None:
        log = (self.settings.data_dir / "server.log").open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "server.cli", "server", "--port", str(self.port)],
            cwd=ROOT,
            env=worker_env(self.settings),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        wait_healthy(self.url, 60, "the upload server to answer")

    def kill(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def restart(self) -> None:
        self.kill()
        self.start()

    def part(self, key: str) -> Path:
        return self.settings.artifacts_path / "uploads" / key

    def part_size(self, key: str) -> int:
        path = self.part(key)
        return path.stat().st_size if path.exists() else 0

    def client(self) -> Client:
        return Client(Settings(api_url=self.url), self.token)

    def open_put(self, key: str, offset: int, body_len: int) -> socket.socket:
        """A PUT whose headers announce body_len bytes; the caller sends (some of) them."""
        sock = socket.create_connection(("127.0.0.1", self.port))
        head = (
            f"PUT /api/v1/uploads/{key}?offset={offset} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Authorization: Bearer {self.token}\r\nContent-Type: application/octet-stream\r\n"
            f"Content-Length: {body_len}\r\n\r\n"
        )
        sock.sendall(head.encode())
        return sock

    @contextmanager
    def database_locked(self, key: str) -> Iterator[None]:
        """Hold the lock the server needs to record a chunk of this upload."""
        if self.settings.database_url:
            import psycopg

            url = self.settings.database_url.replace("postgresql+psycopg", "postgresql")
            with psycopg.connect(url) as conn:
                conn.execute("SELECT id FROM uploads WHERE key = %s FOR UPDATE", (key,))
                yield
                conn.rollback()
        else:
            conn = sqlite3.connect(self.settings.data_dir / "heldout.db", timeout=5)
            conn.isolation_level = None
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield
            finally:
                conn.execute("ROLLBACK")
                conn.close()


@contextmanager
def _serving(settings: Settings) -> Iterator[LiveServer]:
    server = LiveServer(settings)
    server.start()
    try:
        yield server
    finally:
        if server.proc is not None and server.proc.poll() is None:
            server.kill()


@pytest.fixture
def live(settings: Settings) -> Iterator[LiveServer]:
    with _serving(settings) as server:
        yield server


@pytest.fixture
def live_pg(pg_settings: Settings) -> Iterator[LiveServer]:
    """Once, on PostgreSQL (the deployed database), for the long property test."""
    with _serving(pg_settings) as server:
        yield server


def _status(live: LiveServer, key: str) -> dict[str, Any]:
    r = httpx.get(f"{live.url}/api/v1/uploads/{key}", headers=auth(live.token), timeout=10)
    assert r.status_code == 200, r.text
    return dict(r.json())


MiB = 1024 * 1024


@pytest.mark.parametrize(
    "phase", ["before_body", "mid_body", "after_body_before_commit", "server_killed_mid_body"]
)
def test_interrupted_chunk_then_resume_on_a_live_server(
    live: LiveServer, tmp_path: Path, phase: str
) -> None:
    data = os.urandom(3 * MiB + 12_345)
    path = tmp_path / "algo.tar"
    path.write_bytes(data)
    http = httpx.Client(base_url=f"{live.url}/api/v1", headers=auth(live.token), timeout=30)
    up = http.post("/uploads", json={"filename": "a", "size": len(data), "sha256": _sha(data)})
    key = up.json()["key"]
    assert http.put(f"/uploads/{key}", params={"offset": 0}, content=data[:MiB]).status_code == 200

    chunk = data[MiB : 3 * MiB]
    sock = live.open_put(key, MiB, len(chunk))
    if phase == "before_body":
        sock.close()
    elif phase == "mid_body":
        sock.sendall(chunk[: len(chunk) // 2])
        sock.close()
    elif phase == "server_killed_mid_body":
        sock.sendall(chunk[: len(chunk) // 2])
        wait_for(lambda: live.part_size(key) > MiB, 10, "the chunk to reach the disk")
        live.restart()
        sock.close()
    else:
        sock.sendall(chunk[: len(chunk) // 2])
        wait_for(lambda: live.part_size(key) > MiB, 10, "the chunk to reach the disk")
        # The body's first half is in: the server holds no database lock while it reads.
        with live.database_locked(key):
            sock.sendall(chunk[len(chunk) // 2 :])
            wait_for(lambda: live.part_size(key) == 3 * MiB, 10, "the whole chunk on disk")
            live.kill()
        sock.close()
        live.start()

    # The interrupted chunk never counts; the bytes the server claims are on disk.
    status = wait_for(lambda: _status(live, key), 10, "the upload's status")
    assert status["received"] == MiB and status["status"] == "open", status
    assert live.part_size(key) >= status["received"]
    # The CLI's upload of the same file resumes this upload and completes it.
    done = live.client().upload(path)
    assert done["key"] == key and done["status"] == "complete", done
    assert done["digest"] == _sha(data) and _stored(live.settings, done["digest"]) == data


def test_a_streaming_chunk_holds_up_no_other_request(live: LiveServer) -> None:
    http = httpx.Client(base_url=f"{live.url}/api/v1", headers=auth(live.token), timeout=10)
    key = http.post("/uploads", json={"filename": "a", "size": 10 * MiB}).json()["key"]
    sock = live.open_put(key, 0, 10 * MiB)
    sock.sendall(b"x" * MiB)  # then stalls, as a slow link does
    wait_for(lambda: live.part_size(key) > 0, 10, "the chunk to reach the disk")
    started = time.monotonic()
    # Same user, same token, same upload: answered at once, not after the chunk ends.
    assert http.get(f"/uploads/{key}").json()["received"] == 0
    assert http.post("/uploads", json={"filename": "b", "size": 5}).status_code == 201
    assert time.monotonic() - started < 5
    sock.close()


@pytest.mark.parametrize("declared", [False, True])
def test_resume_after_a_refused_oversize_chunk(
    live: LiveServer, tmp_path: Path, declared: bool
) -> None:
    """The server reads a chunk in pieces: none of a refused chunk's pieces may count."""
    data = os.urandom(3 * MiB)
    http = httpx.Client(base_url=f"{live.url}/api/v1", headers=auth(live.token), timeout=30)
    body: dict[str, Any] = {"filename": "a", "size": len(data)}
    if declared:
        body["sha256"] = _sha(data)
    key = http.post("/uploads", json=body).json()["key"]
    assert http.put(f"/uploads/{key}", params={"offset": 0}, content=data[:MiB]).status_code == 200
    over = http.put(f"/uploads/{key}", params={"offset": MiB}, content=data[MiB:] + b"tail")
    assert over.status_code == 413 and over.json()["field"] == "size"
    assert _status(live, key)["received"] == MiB
    done = http.put(f"/uploads/{key}", params={"offset": MiB}, content=data[MiB:]).json()
    assert done["status"] == "complete" and done["digest"] == _sha(data), done
    assert _stored(live.settings, done["digest"]) == data


OPS = ("chunk", "cut", "over", "bad_checksum", "wrong_offset", "restart")


def _put_raw(live: LiveServer, key: str, offset: int, data: bytes, **headers: str) -> Any:
    """A PUT, retried while the server is still busy with a chunk cut off just before."""
    for _ in range(100):
        r = httpx.put(
            f"{live.url}/api/v1/uploads/{key}",
            params={"offset": offset},
            content=data,
            headers={**auth(live.token), **headers},
            timeout=30,
        )
        if not (r.status_code == 409 and "another request" in r.json()["detail"]):
            return r
        time.sleep(0.05)
    raise AssertionError("the upload stayed busy")


def _run_op(live: LiveServer, key: str, data: bytes, op: tuple[str, int, int]) -> None:
    kind, a, b = op
    before = _status(live, key)
    if before["status"] == "complete":
        return
    received = before["received"]
    n = min(a, len(data) - received)
    chunk = data[received : received + n]
    if kind == "chunk":
        assert _put_raw(live, key, received, chunk).status_code == 200
    elif kind == "cut" and n:
        sock = live.open_put(key, received, n)
        sock.sendall(chunk[: b % n])
        sock.close()
    elif kind == "over":
        r = _put_raw(live, key, received, data[received:] + b"x" * (b % 1000 + 1))
        assert r.status_code == 413, r.text
    elif kind == "bad_checksum" and n:
        wrong = base64.b64encode(hashlib.sha256(chunk + b"!").digest()).decode()
        r = _put_raw(live, key, received, chunk, **{"Upload-Checksum": f"sha256 {wrong}"})
        assert r.status_code == 409 and r.json()["field"] == "upload_checksum", r.text
    elif kind == "wrong_offset" and received < len(data):
        assert _put_raw(live, key, received + 1, data[received + 1 :]).status_code == 409
    elif kind == "restart":
        live.restart()
    after = _status(live, key)
    assert after["received"] in (received, received + n), (kind, received, n, after)
    if after["status"] == "open":
        assert live.part_size(key) >= after["received"]
    else:
        assert after["digest"] == _sha(data) and _stored(live.settings, after["digest"]) == data


@pytest.mark.slow
def test_property_the_stored_digest_is_the_digest_of_the_bytes(live_pg: LiveServer) -> None:
    """Whatever the chunking, the refusals and the interruptions (sockets closed at any
    byte, the server restarted), the upload resumes to completion, and the digest it is
    stored under is the SHA-256 of exactly the bytes sent."""
    live = live_pg
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    op = st.tuples(st.sampled_from(OPS), st.integers(0, 150_000), st.integers(0, 10**6))

    @settings(
        max_examples=20,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(
        size=st.integers(1, 300_000),
        seed=st.integers(0, 2**32),
        declared=st.booleans(),
        ops=st.lists(op, max_size=6),
    )
    def check(size: int, seed: int, declared: bool, ops: list[tuple[str, int, int]]) -> None:
        data = random.Random(seed).randbytes(size)
        body: dict[str, Any] = {"filename": "a", "size": size}
        if declared:
            body["sha256"] = _sha(data)
        r = httpx.post(f"{live.url}/api/v1/uploads", json=body, headers=auth(live.token))
        up = r.json()
        if up["status"] == "complete":  # the same bytes were drawn before: deduplicated
            assert up["digest"] == _sha(data)
            return
        for one in ops:
            _run_op(live, up["key"], data, one)
        status = _status(live, up["key"])
        while status["status"] != "complete":
            r = _put_raw(live, up["key"], status["received"], data[status["received"] :])
            assert r.status_code == 200, r.text
            status = r.json()
        assert status["digest"] == _sha(data)
        assert _stored(live.settings, status["digest"]) == data

    check()
