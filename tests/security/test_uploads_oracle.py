"""Hole 5 of issue 10: upload deduplication as an oracle. Declaring a digest must never
answer "this content is already on the server", nor give access to content the caller did
not send: only the caller's own completed uploads are deduplicated, and declared sizes and
digests are checked against the bytes that arrive."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from server.config import Settings
from tests.support.factories import (
    apply_bundle,
    auth,
    stoic_bundle,
    stoic_cases,
    upload_bytes,
    user_token,
    write_dataset,
)


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _start(api: TestClient, token: str, size: int, sha: str | None) -> Any:
    body: dict[str, Any] = {"filename": "algo.tar", "size": size}
    if sha:
        body["sha256"] = sha
    return api.post("/api/v1/uploads", json=body, headers=auth(token))


def _public(view: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in view.items() if k not in ("key", "size")}


def test_a_foreign_digest_claims_nothing(
    api: TestClient, settings: Settings, tmp_path: Path
) -> None:
    admin = user_token(settings, "admin", admin=True)
    scan = b"a sequestered CT scan " + os.urandom(4096)
    ds = write_dataset(tmp_path / "test", stoic_cases(2), payload=scan)
    assert apply_bundle(api, admin, stoic_bundle(), {"test": ds}).status_code == 200
    alice, bob = user_token(settings, "alice"), user_token(settings, "bob")
    algo = b"alice's algorithm image " + os.urandom(4096)
    upload_bytes(api, alice, algo)
    assert (settings.artifacts_path / "sha256" / _sha(scan)[7:9] / _sha(scan)[7:]).is_file()

    unknown = os.urandom(len(scan))
    answers = {}
    for name, content in (("scan", scan), ("alice", algo), ("unknown", unknown)):
        r = _start(api, bob, len(content), _sha(content))
        assert r.status_code == 201, r.text
        answers[name] = r.json()
        # Nothing is complete until the bytes arrive: no digest, nothing received.
        assert r.json()["status"] == "open" and r.json()["received"] == 0, (name, r.json())
        assert r.json()["digest"] is None
        # And the upload cannot stand in for the content anywhere.
        sub = api.post(
            "/api/v1/challenges/stoic/phases/qualification/submissions",
            json={"upload": r.json()["key"]},
            headers=auth(bob),
        )
        assert sub.status_code == 422 and sub.json()["field"] == "upload", sub.text
    # The answer for stored content and for unknown content is the same answer.
    assert _public(answers["scan"]) == _public(answers["alice"]) == _public(answers["unknown"])

    # Sending the bytes themselves completes it: the content is then Bob's own.
    key = answers["alice"]["key"]
    done = api.put(f"/api/v1/uploads/{key}", params={"offset": 0}, content=algo, headers=auth(bob))
    assert done.json()["status"] == "complete" and done.json()["digest"] == _sha(algo)


def test_own_completed_uploads_are_deduplicated(api: TestClient, settings: Settings) -> None:
    alice = user_token(settings, "alice")
    data = b"layer" * 50_000
    r = _start(api, alice, len(data), _sha(data))
    key = r.json()["key"]
    api.put(f"/api/v1/uploads/{key}", params={"offset": 0}, content=data, headers=auth(alice))
    again = _start(api, alice, len(data), _sha(data))
    assert again.json()["status"] == "complete" and again.json()["digest"] == _sha(data)
    assert again.json()["received"] == len(data)


def test_declared_size_is_checked(api: TestClient, settings: Settings) -> None:
    alice = user_token(settings, "alice")
    data = b"weights" * 10_000
    up = _start(api, alice, len(data), _sha(data)).json()
    api.put(f"/api/v1/uploads/{up['key']}", params={"offset": 0}, content=data, headers=auth(alice))
    # A digest with another size is a contradiction, not a match.
    r = _start(api, alice, len(data) + 1, _sha(data))
    assert r.status_code == 422 and r.json()["field"] == "size", r.text
    # More bytes than declared: refused, and nothing advanced.
    up = _start(api, alice, 10, None).json()
    over = api.put(
        f"/api/v1/uploads/{up['key']}", params={"offset": 0}, content=b"x" * 11, headers=auth(alice)
    )
    assert over.status_code == 413 and over.json()["field"] == "size"
    status = api.get(f"/api/v1/uploads/{up['key']}", headers=auth(alice)).json()
    assert status["received"] == 0 and status["status"] == "open"
    # Fewer bytes than declared: never complete.
    api.put(
        f"/api/v1/uploads/{up['key']}", params={"offset": 0}, content=b"x" * 5, headers=auth(alice)
    )
    status = api.get(f"/api/v1/uploads/{up['key']}", headers=auth(alice)).json()
    assert status["received"] == 5 and status["status"] == "open" and status["digest"] is None
