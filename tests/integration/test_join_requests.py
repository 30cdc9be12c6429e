"""Join requests: a participant asks to take part in a challenge, only its organizers list
and decide them, approval lets the requester's team into the invite-only phases, and no one
else can learn whether a request id exists. Also the usage endpoint the web page shows."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from server.config import Settings
from tests.support.factories import auth, submit_blob, user_token
from tests.support.factories import stoic_challenge as _challenge

JOIN = "/api/v1/challenges/stoic/join-requests"
USAGE = "/api/v1/challenges/stoic/phases/qualification/usage"


def test_request_approve_and_submit(api: TestClient, settings: Settings, tmp_path: Path) -> None:
    admin = _challenge(api, settings, tmp_path, rules={"invite_only": True, "max_submissions": 2})
    alice, bob = user_token(settings, "alice"), user_token(settings, "bob")
    before = api.get(USAGE, headers=auth(alice)).json()
    assert before["can_submit"] is False and "invited teams only" in before["reason"]

    r = api.post(JOIN, json={"message": "we have a model"}, headers=auth(alice))
    assert r.status_code == 201, r.text
    req = r.json()
    assert req["status"] == "pending" and req["user"] == "alice"
    # Asking again returns the pending request: no flood of the organizers' queue.
    again = api.post(JOIN, json={"message": "please"}, headers=auth(alice)).json()
    assert again["id"] == req["id"]
    assert [x["id"] for x in api.get(f"{JOIN}/mine", headers=auth(alice)).json()] == [req["id"]]
    assert api.get(f"{JOIN}/mine", headers=auth(bob)).json() == []

    # Participants neither list nor decide, and an existing id answers like a missing one.
    assert api.get(JOIN, headers=auth(bob)).status_code == 403
    for rid in (req["id"], 9999):
        for action in ("approve", "decline"):
            for token in (alice, bob):
                r = api.post(f"{JOIN}/{rid}/{action}", headers=auth(token))
                assert r.status_code == 403, (rid, action, r.text)

    pending = api.get(JOIN, headers=auth(admin)).json()
    assert [(x["id"], x["user"], x["message"]) for x in pending] == [
        (req["id"], "alice", "we have a model")
    ]
    r = api.post(f"{JOIN}/{req['id']}/approve", headers=auth(admin))
    assert r.status_code == 200 and r.json()["status"] == "approved"
    assert api.get(JOIN, headers=auth(admin)).json() == []
    assert api.post(f"{JOIN}/{req['id']}/decline", headers=auth(admin)).status_code == 409
    assert api.post(f"{JOIN}/9999/approve", headers=auth(admin)).status_code == 404
    assert api.post(JOIN, json={}, headers=auth(alice)).status_code == 409

    usage = api.get(USAGE, headers=auth(alice)).json()
    assert usage["can_submit"] is True and usage["used"] == 0
    ok = submit_blob(api, alice)
    assert ok.status_code == 201, ok.text
    usage = api.get(USAGE, headers=auth(alice)).json()
    assert (usage["used"], usage["max_submissions"], usage["can_submit"]) == (1, 2, True)
    assert submit_blob(api, bob).status_code == 403  # bob never asked


def test_decline_and_bad_input(api: TestClient, settings: Settings, tmp_path: Path) -> None:
    admin = _challenge(api, settings, tmp_path, rules={"invite_only": True})
    alice = user_token(settings, "alice")
    r = api.post(JOIN, json={"message": "x" * 501}, headers=auth(alice))
    assert r.status_code == 422 and r.json()["field"] == "message"
    req = api.post(JOIN, json={}, headers=auth(alice)).json()
    r = api.post(f"{JOIN}/{req['id']}/decline", headers=auth(admin))
    assert r.json()["status"] == "declined"
    assert submit_blob(api, alice).status_code == 403
    # A declined user may ask again; that is a new pending request.
    second = api.post(JOIN, json={"message": "improved"}, headers=auth(alice)).json()
    assert second["id"] != req["id"] and second["status"] == "pending"
    r = api.get("/api/v1/challenges/nope/join-requests/mine", headers=auth(alice))
    assert r.status_code == 404


def test_usage_when_full(api: TestClient, settings: Settings, tmp_path: Path) -> None:
    _challenge(api, settings, tmp_path, rules={"max_submissions": 1})
    alice = user_token(settings, "alice")
    assert submit_blob(api, alice).status_code == 201
    usage = api.get(USAGE, headers=auth(alice)).json()
    assert usage["used"] == 1 and usage["can_submit"] is False
    assert usage["next_allowed_at"] is not None and "1 of 1 used" in usage["reason"]


def test_organizer_invites_by_user_name(
    api: TestClient, settings: Settings, tmp_path: Path
) -> None:
    admin = _challenge(api, settings, tmp_path, rules={"invite_only": True})
    alice, bob = user_token(settings, "alice"), user_token(settings, "bob")
    invite = "/api/v1/challenges/stoic/phases/qualification/invitations"
    r = api.post(invite, json={"username": "alice"}, headers=auth(bob))
    assert r.status_code == 403  # organizers only
    r = api.post(invite, json={"username": "nobody"}, headers=auth(admin))
    assert r.status_code == 404 and r.json()["field"] == "username"
    for body in ({}, {"username": "alice", "team_id": 1}):
        assert api.post(invite, json=body, headers=auth(admin)).status_code == 422
    r = api.post(invite, json={"username": "alice"}, headers=auth(admin))
    assert r.status_code == 201 and r.json()["team"] == "alice"  # a team of one is made
    assert submit_blob(api, alice).status_code == 201
    assert submit_blob(api, bob).status_code == 403
