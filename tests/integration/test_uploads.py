"""Streamed, resumable uploads: the digest is computed while streaming, a resumed upload
continues at the server's offset, and content already stored is never stored twice."""

from __future__ import annotations

import hashlib
from pathlib import Path

from fastapi.testclient import TestClient

from server.config import Settings
from tests.support.factories import auth, user_token


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
    again = _start(api, bob, len(data), sha)
    assert (
        again["status"] == "complete" and again["digest"] == sha and again["received"] == len(data)
    )
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
