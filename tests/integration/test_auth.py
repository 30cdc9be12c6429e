"""Tokens and roles: hashed tokens, 401 without one, participants kept out of other teams'
submissions, organizer endpoints and ground truth."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy import select

from server.accounts.models import ApiToken
from server.config import Settings
from server.db import session_scope
from tests.support.factories import (
    apply_bundle,
    auth,
    stoic_bundle,
    stoic_cases,
    submit_blob,
    user_token,
    write_dataset,
)


def test_tokens_are_stored_hashed_and_shown_once(api: TestClient, settings: Settings) -> None:
    token = user_token(settings, "alice")
    with session_scope(settings) as session:
        rows = session.scalars(select(ApiToken)).all()
        assert len(rows) == 1
        assert token not in (rows[0].token_hash, rows[0].prefix)
        assert len(rows[0].token_hash) == 64
    created = api.post("/api/v1/tokens", json={"name": "laptop"}, headers=auth(token))
    assert created.status_code == 201 and created.json()["token"].startswith("hld_")
    listed = api.get("/api/v1/tokens", headers=auth(token)).json()
    assert len(listed) == 2 and all("token" not in t for t in listed)


def test_missing_bad_and_revoked_tokens(api: TestClient, settings: Settings) -> None:
    assert api.get("/api/v1/me").status_code == 401
    r = api.get("/api/v1/me", headers=auth("hld_nope"))
    assert r.status_code == 401 and "unknown or revoked" in r.json()["detail"]
    token = user_token(settings, "alice")
    me = api.get("/api/v1/me", headers=auth(token))
    assert me.status_code == 200 and me.json()["username"] == "alice"
    tid = api.get("/api/v1/tokens", headers=auth(token)).json()[0]["id"]
    assert api.delete(f"/api/v1/tokens/{tid}", headers=auth(token)).status_code == 204
    assert api.get("/api/v1/me", headers=auth(token)).status_code == 401


def test_only_admins_create_users(api: TestClient, settings: Settings) -> None:
    alice = user_token(settings, "alice")
    assert (
        api.post("/api/v1/users", json={"username": "eve"}, headers=auth(alice)).status_code == 403
    )
    admin = user_token(settings, "root", admin=True)
    r = api.post("/api/v1/users", json={"username": "eve"}, headers=auth(admin))
    assert r.status_code == 201
    dup = api.post("/api/v1/users", json={"username": "eve"}, headers=auth(admin))
    assert dup.status_code == 409 and dup.json()["field"] == "username"
    bad = api.post("/api/v1/users", json={"username": "e ve!"}, headers=auth(admin))
    assert bad.status_code == 422 and bad.json()["field"] == "username"


def test_participants_cannot_see_other_teams_or_organizer_data(
    api: TestClient, settings: Settings, tmp_path: Path
) -> None:
    admin = user_token(settings, "admin", admin=True)
    marker = "GROUND-TRUTH-MARKER"
    cases = stoic_cases()
    # A label value that must never appear in any response (in a column no metric uses:
    # apply refuses labels the phase's metrics cannot score).
    for labels in cases.values():
        labels["note"] = "-"
    cases["P000"]["note"] = marker
    ds = write_dataset(tmp_path / "test", cases)
    assert apply_bundle(api, admin, stoic_bundle(), {"test": ds}).status_code == 200
    alice, bob = user_token(settings, "alice"), user_token(settings, "bob")
    a_sub = submit_blob(api, alice).json()
    b_sub = submit_blob(api, bob).json()

    # Bob cannot read Alice's submission (nor learn that it exists), nor cancel it.
    assert api.get(f"/api/v1/submissions/{a_sub['id']}", headers=auth(bob)).status_code == 404
    assert (
        api.post(f"/api/v1/submissions/{a_sub['id']}/cancel", headers=auth(bob)).status_code == 404
    )
    listed = api.get(
        "/api/v1/challenges/stoic/phases/qualification/submissions", headers=auth(bob)
    ).json()
    assert [s["id"] for s in listed] == [b_sub["id"]]
    # Organizers see both.
    listed = api.get(
        "/api/v1/challenges/stoic/phases/qualification/submissions", headers=auth(admin)
    ).json()
    assert {s["id"] for s in listed} == {a_sub["id"], b_sub["id"]}

    # Organizer endpoints.
    assert api.get("/api/v1/challenges/stoic/datasets", headers=auth(bob)).status_code == 403
    assert apply_bundle(api, bob, stoic_bundle()).status_code == 403
    r = api.post(
        "/api/v1/challenges/stoic/phases/qualification/invitations",
        json={"team_id": 1},
        headers=auth(bob),
    )
    assert r.status_code == 403
    phase = api.get("/api/v1/challenges/stoic/phases/qualification", headers=auth(bob)).json()
    assert "datasets" not in phase and "metrics_version" not in phase

    # Ground truth: walk every GET route a participant can call and look for the marker.
    paths = [
        "/api/v1/challenges",
        "/api/v1/challenges/stoic",
        "/api/v1/challenges/stoic/phases/qualification",
        "/api/v1/challenges/stoic/phases/qualification/submissions",
        "/api/v1/challenges/stoic/phases/qualification/leaderboard",
        "/api/v1/challenges/stoic/phases/qualification/rules",
        "/api/v1/challenges/stoic/datasets",
        f"/api/v1/submissions/{b_sub['id']}",
        "/api/v1/me",
        "/api/v1/openapi.json",
    ]
    for path in paths:
        r = api.get(path, headers=auth(bob))
        assert marker not in r.text, path
    # No route in the API serves labels or dataset files at all.
    openapi = api.get("/api/v1/openapi.json").json()
    assert not [p for p in openapi["paths"] if "label" in p or "ground" in p or "/cases" in p]
