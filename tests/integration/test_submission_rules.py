"""Every submission rule, refused with an HTTP 4xx naming the rule and the next allowed time,
and the limit race: N parallel submissions against a limit of 1 give exactly one."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from server.accounts import repository as accounts_repo
from server.config import Settings
from server.db import session_scope
from server.errors import RuleViolation
from server.storage import ArtifactStore
from server.submissions import service as submissions
from server.submissions.schemas import SubmissionCreate
from server.uploads import service as uploads
from tests.support.factories import auth, submit_blob, user_token
from tests.support.factories import stoic_challenge as _challenge


def test_accepted_submission_starts_validation(
    api: TestClient, settings: Settings, tmp_path: Path, sent_tasks: list[Any]
) -> None:
    _challenge(api, settings, tmp_path)
    alice = user_token(settings, "alice")
    r = submit_blob(api, alice)
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["status"] == "validating"
    assert body["team"] == "alice"  # a solo user is a team of one
    assert [t["to_status"] for t in body["transitions"]] == ["received", "validating"]
    assert body["jobs"] == [{"kind": "validate", "total": 1, "by_status": {"pending": 1}}]
    # The task went out after the commit, carrying only an id.
    assert [(t.name, t.queue) for t in sent_tasks] == [("heldout.run_job", "build")]
    assert all(isinstance(a, int) for a in sent_tasks[0].args)


def test_max_submissions_per_window(api: TestClient, settings: Settings, tmp_path: Path) -> None:
    _challenge(api, settings, tmp_path, rules={"max_submissions": 2, "window_hours": 24})
    alice = user_token(settings, "alice")
    assert submit_blob(api, alice).status_code == 201
    assert submit_blob(api, alice).status_code == 201
    r = submit_blob(api, alice)
    assert r.status_code == 429
    body = r.json()
    assert body["rule"] == "max_submissions"
    assert "2 of 2" in body["detail"]
    nxt = datetime.fromisoformat(body["next_allowed_at"])
    assert timedelta(hours=23) < nxt - datetime.now(UTC) <= timedelta(hours=24)
    assert int(r.headers["Retry-After"]) > 23 * 3600
    # Another team is not affected.
    bob = user_token(settings, "bob")
    assert submit_blob(api, bob).status_code == 201


def test_cooldown_with_penalty(api: TestClient, settings: Settings, tmp_path: Path) -> None:
    _challenge(
        api, settings, tmp_path, rules={"cooldown_hours": 24 * 7, "cooldown_penalty_hours": 24 * 14}
    )
    alice = user_token(settings, "alice")
    assert submit_blob(api, alice).status_code == 201
    r = submit_blob(api, alice)
    assert r.status_code == 429
    assert r.json()["rule"] == "cooldown"
    nxt = datetime.fromisoformat(r.json()["next_allowed_at"])
    # The violation added a 14-day penalty, which outlasts the 7-day cooldown.
    assert nxt - datetime.now(UTC) > timedelta(days=13)
    # The penalty was kept although the request was refused.
    r2 = submit_blob(api, alice)
    assert r2.status_code == 429 and r2.json()["rule"] == "cooldown_penalty"


def test_cooldown_without_penalty(api: TestClient, settings: Settings, tmp_path: Path) -> None:
    _challenge(api, settings, tmp_path, rules={"cooldown_hours": 2})
    alice = user_token(settings, "alice")
    assert submit_blob(api, alice).status_code == 201
    for _ in range(2):
        r = submit_blob(api, alice)
        assert r.status_code == 429 and r.json()["rule"] == "cooldown"
        nxt = datetime.fromisoformat(r.json()["next_allowed_at"])
        assert nxt - datetime.now(UTC) <= timedelta(hours=2)


def test_single_shot_and_renounce(api: TestClient, settings: Settings, tmp_path: Path) -> None:
    _challenge(api, settings, tmp_path, rules={"single_shot": True, "allow_renounce": True})
    alice = user_token(settings, "alice")
    first = submit_blob(api, alice)
    assert first.status_code == 201
    r = submit_blob(api, alice)
    assert r.status_code == 409 and r.json()["rule"] == "single_shot"
    assert "Renounce" in r.json()["detail"]
    ren = api.post(f"/api/v1/submissions/{first.json()['id']}/renounce", headers=auth(alice))
    assert ren.status_code == 200 and ren.json()["renounced"] is True
    assert ren.json()["status"] == "cancelled"
    assert submit_blob(api, alice).status_code == 201


def test_single_shot_without_renounce(api: TestClient, settings: Settings, tmp_path: Path) -> None:
    _challenge(api, settings, tmp_path, rules={"single_shot": True})
    alice = user_token(settings, "alice")
    first = submit_blob(api, alice).json()
    r = api.post(f"/api/v1/submissions/{first['id']}/renounce", headers=auth(alice))
    assert r.status_code == 403


def test_early_cancellation_is_not_charged(
    api: TestClient, settings: Settings, tmp_path: Path
) -> None:
    _challenge(api, settings, tmp_path, rules={"max_submissions": 1})
    alice = user_token(settings, "alice")
    first = submit_blob(api, alice).json()
    r = api.post(f"/api/v1/submissions/{first['id']}/cancel", headers=auth(alice))
    assert r.status_code == 200
    assert r.json()["status"] == "cancelled" and r.json()["charged"] is False
    assert r.json()["jobs"][0]["by_status"] == {"cancelled": 1}
    assert submit_blob(api, alice).status_code == 201
    again = api.post(f"/api/v1/submissions/{first['id']}/cancel", headers=auth(alice))
    assert again.status_code == 409


def test_invite_only(api: TestClient, settings: Settings, tmp_path: Path) -> None:
    admin = _challenge(api, settings, tmp_path, rules={"invite_only": True})
    alice = user_token(settings, "alice")
    r = submit_blob(api, alice)
    assert r.status_code == 403 and r.json()["rule"] == "invite_only"
    team = api.post(
        "/api/v1/challenges/stoic/teams", json={"name": "Finalists"}, headers=auth(alice)
    ).json()
    # Participants cannot invite themselves.
    r = api.post(
        "/api/v1/challenges/stoic/phases/qualification/invitations",
        json={"team_id": team["id"]},
        headers=auth(alice),
    )
    assert r.status_code == 403
    r = api.post(
        "/api/v1/challenges/stoic/phases/qualification/invitations",
        json={"team_id": team["id"]},
        headers=auth(admin),
    )
    assert r.status_code == 201
    ok = submit_blob(api, alice)
    assert ok.status_code == 201 and ok.json()["team"] == "Finalists"


def test_phase_window(api: TestClient, settings: Settings, tmp_path: Path) -> None:
    opens = (datetime.now(UTC) + timedelta(days=3)).replace(microsecond=0)
    _challenge(api, settings, tmp_path, extra_phase={"opens_at": opens.isoformat()})
    alice = user_token(settings, "alice")
    r = submit_blob(api, alice)
    assert r.status_code == 403 and r.json()["rule"] == "phase_window"
    assert datetime.fromisoformat(r.json()["next_allowed_at"]) == opens


def test_teams_do_not_overlap(api: TestClient, settings: Settings, tmp_path: Path) -> None:
    _challenge(api, settings, tmp_path, rules={"max_submissions": 1})
    alice, bob = user_token(settings, "alice"), user_token(settings, "bob")
    team = api.post(
        "/api/v1/challenges/stoic/teams", json={"name": "Lungs"}, headers=auth(alice)
    ).json()
    inv = api.post(
        f"/api/v1/teams/{team['id']}/invitations", json={"username": "bob"}, headers=auth(alice)
    ).json()
    r = api.post(f"/api/v1/team-invitations/{inv['id']}/accept", headers=auth(bob))
    assert r.status_code == 200 and r.json()["members"] == ["alice", "bob"]
    again = api.post("/api/v1/challenges/stoic/teams", json={"name": "Other"}, headers=auth(bob))
    assert again.status_code == 409 and "at most one" in again.json()["detail"]
    # Limits count per team: alice's submission uses bob's quota too.
    assert submit_blob(api, alice).status_code == 201
    r = submit_blob(api, bob)
    assert r.status_code == 429 and r.json()["rule"] == "max_submissions"


def _race(settings: Settings, n: int) -> list[str]:
    """N threads, each its own session, submitting for the same user at once."""
    store = ArtifactStore(settings.artifacts_path)
    with session_scope(settings) as session:
        user = accounts_repo.get_user_by_name(session, "alice")
        assert user is not None
        keys = [
            uploads.start(session, store, user, "x.tar", 1, 10, expected_digest=None).key
            for _ in range(n)
        ]
    for key in keys:
        uploads.append(settings, store, user, key, 0, [b"x"])

    barrier = threading.Barrier(n)
    outcomes: list[str] = []
    lock = threading.Lock()

    def one(key: str) -> None:
        barrier.wait()
        try:
            with session_scope(settings) as session:
                user = accounts_repo.get_user_by_name(session, "alice")
                assert user is not None
                submissions.create(
                    session, settings, user, "stoic", "qualification", SubmissionCreate(upload=key)
                )
            outcome = "accepted"
        except RuleViolation as exc:
            outcome = exc.rule
        except Exception as exc:  # recorded, and asserted on below
            outcome = f"error: {exc!r}"
        with lock:
            outcomes.append(outcome)

    threads = [threading.Thread(target=one, args=(k,)) for k in keys]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return outcomes


@pytest.mark.parametrize("rules", [{"max_submissions": 1}, {"single_shot": True}])
def test_parallel_submissions_against_limit_of_one(
    api: TestClient, settings: Settings, tmp_path: Path, rules: dict[str, Any]
) -> None:
    _challenge(api, settings, tmp_path, rules=rules)
    user_token(settings, "alice")
    outcomes = _race(settings, 12)
    assert outcomes.count("accepted") == 1, outcomes
    assert len(outcomes) == 12
    assert all(o in ("accepted", "max_submissions", "single_shot") for o in outcomes), outcomes
    alice = user_token(settings, "alice")
    listed = api.get(
        "/api/v1/challenges/stoic/phases/qualification/submissions", headers=auth(alice)
    ).json()
    assert len(listed) == 1


PRECHECK = "/api/v1/challenges/stoic/phases/qualification/submissions/precheck"


def test_precheck_names_the_refusal_and_changes_nothing(
    api: TestClient, settings: Settings, tmp_path: Path
) -> None:
    """The pre-check runs the same rules as a submission, before any upload; a refusal it
    finds adds no cooldown penalty and makes no team."""
    _challenge(api, settings, tmp_path, rules={"cooldown_hours": 24, "cooldown_penalty_hours": 48})
    alice = user_token(settings, "alice")
    ok = api.post(PRECHECK, json={"kind": "algorithm"}, headers=auth(alice))
    assert ok.status_code == 200 and ok.json() == {"ok": True}
    assert api.get("/api/v1/challenges/stoic/teams/mine", headers=auth(alice)).status_code == 404
    rules_url = "/api/v1/challenges/stoic/phases/qualification/rules"
    assert api.get(rules_url, headers=auth(alice)).json()["usage"]["charged"] == 0
    assert submit_blob(api, alice).status_code == 201
    usage = api.get(rules_url, headers=auth(alice)).json()["usage"]
    assert (usage["charged"], usage["used_in_window"]) == (1, None)  # no max_submissions here
    assert usage["can_submit"] is False and usage["reason"] == "cooldown"
    for _ in range(2):  # asking twice during the cooldown: no penalty was added the first time
        r = api.post(PRECHECK, json={"kind": "algorithm"}, headers=auth(alice))
        assert r.status_code == 429 and r.json()["rule"] == "cooldown", r.text
    image = {"os": "linux", "architecture": "arm64", "config": {"User": "app", "Cmd": ["x"]}}
    bob = user_token(settings, "bob")
    r = api.post(PRECHECK, json={"kind": "algorithm", "image": image}, headers=auth(bob))
    assert r.status_code == 422 and r.json()["field"] == "image"
    assert "linux/arm64" in r.json()["detail"]
    r = api.post(PRECHECK, json={"kind": "codebase"}, headers=auth(bob))
    assert r.status_code == 422 and r.json()["field"] == "kind"
    r = api.post(PRECHECK.replace("qualification", "qualifcation"), json={"kind": "algorithm"},
                 headers=auth(bob))  # fmt: skip
    assert r.status_code == 404 and r.json()["field"] == "phase"
