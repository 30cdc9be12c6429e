"""Hole 6 of issue 10 (teams): membership only through an invitation the invitee accepts;
members leave under a rule that stops quota hopping; an object the caller may not see
answers exactly as a missing one does."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from server.config import Settings
from tests.support.factories import auth, stoic_challenge, submit_blob, user_token


def _team(api: TestClient, token: str, name: str) -> dict[str, Any]:
    r = api.post("/api/v1/challenges/stoic/teams", json={"name": name}, headers=auth(token))
    assert r.status_code == 201, r.text
    return dict(r.json())


def _invite(api: TestClient, token: str, team_id: int, username: str) -> Any:
    return api.post(
        f"/api/v1/teams/{team_id}/invitations", json={"username": username}, headers=auth(token)
    )


def _mine(api: TestClient, token: str) -> Any:
    return api.get("/api/v1/challenges/stoic/teams/mine", headers=auth(token))


def _pending(api: TestClient, token: str) -> list[dict[str, Any]]:
    r = api.get("/api/v1/team-invitations", headers=auth(token))
    assert r.status_code == 200, r.text
    return list(r.json())


def test_no_one_is_added_to_a_team_without_consent(
    api: TestClient, settings: Settings, tmp_path: Path
) -> None:
    stoic_challenge(api, settings, tmp_path)
    alice, bob = user_token(settings, "alice"), user_token(settings, "bob")
    team = _team(api, alice, "Lungs")
    sub = submit_blob(api, alice).json()
    r = api.post(
        f"/api/v1/teams/{team['id']}/members", json={"username": "bob"}, headers=auth(alice)
    )
    assert r.status_code in (404, 405), r.text
    # Bob is in no team, reads nothing of Lungs', and can still form his own team.
    assert _mine(api, bob).status_code == 404
    assert api.get(f"/api/v1/submissions/{sub['id']}", headers=auth(bob)).status_code == 404
    # An invitation alone gives nothing either.
    assert _invite(api, alice, team["id"], "bob").status_code == 201
    assert _mine(api, bob).status_code == 404
    assert api.get(f"/api/v1/submissions/{sub['id']}", headers=auth(bob)).status_code == 404
    assert api.get(f"/api/v1/teams/{team['id']}", headers=auth(bob)).status_code == 404
    listed = api.get(
        "/api/v1/challenges/stoic/phases/qualification/submissions", headers=auth(bob)
    ).json()
    assert listed == []
    _team(api, bob, "Bronchi")


def test_invite_accept_decline_and_leave(
    api: TestClient, settings: Settings, tmp_path: Path
) -> None:
    stoic_challenge(api, settings, tmp_path)
    alice, bob, carol = (user_token(settings, u) for u in ("alice", "bob", "carol"))
    dave = user_token(settings, "dave")
    team = _team(api, alice, "Lungs")
    inv = _invite(api, alice, team["id"], "bob").json()
    assert inv["status"] == "pending" and inv["team"] == "Lungs" and inv["invitee"] == "bob"
    # Inviting twice gives the same pending invitation; the team shows it to its members.
    assert _invite(api, alice, team["id"], "bob").json()["id"] == inv["id"]
    shown = api.get(f"/api/v1/teams/{team['id']}", headers=auth(alice)).json()
    assert shown["members"] == ["alice"] and shown["invited"] == ["bob"]
    # Only the invitee answers an invitation; to anyone else it does not exist.
    assert [i["id"] for i in _pending(api, bob)] == [inv["id"]]
    assert _pending(api, dave) == []
    r = api.post(f"/api/v1/team-invitations/{inv['id']}/accept", headers=auth(dave))
    assert r.status_code == 404
    r = api.post(f"/api/v1/team-invitations/{inv['id']}/accept", headers=auth(bob))
    assert r.status_code == 200 and r.json()["members"] == ["alice", "bob"], r.text
    assert _mine(api, bob).json()["name"] == "Lungs"
    # An answered invitation cannot be answered again.
    again = api.post(f"/api/v1/team-invitations/{inv['id']}/decline", headers=auth(bob))
    assert again.status_code == 409
    # A member's submission is the team's: Bob reads Alice's.
    sub = submit_blob(api, alice).json()
    assert api.get(f"/api/v1/submissions/{sub['id']}", headers=auth(bob)).status_code == 200

    # Carol declines; she stays out and can be invited again later.
    inv = _invite(api, bob, team["id"], "carol").json()
    r = api.post(f"/api/v1/team-invitations/{inv['id']}/decline", headers=auth(carol))
    assert r.status_code == 200 and r.json()["status"] == "declined"
    assert _mine(api, carol).status_code == 404
    r = api.post(f"/api/v1/team-invitations/{inv['id']}/accept", headers=auth(carol))
    assert r.status_code == 409
    assert _invite(api, bob, team["id"], "carol").json()["status"] == "pending"

    # Leaving: allowed in a team that has not submitted.
    other = _team(api, dave, "Alveoli")
    inv = _invite(api, dave, other["id"], "carol").json()
    api.post(f"/api/v1/team-invitations/{inv['id']}/accept", headers=auth(carol))
    r = api.post(f"/api/v1/teams/{other['id']}/leave", headers=auth(carol))
    assert r.status_code == 200, r.text
    assert _mine(api, carol).status_code == 404
    assert api.get(f"/api/v1/teams/{other['id']}", headers=auth(carol)).status_code == 404


def test_no_quota_hopping(api: TestClient, settings: Settings, tmp_path: Path) -> None:
    """A team that has submitted keeps its members: no one leaves it to submit again
    elsewhere, and a user who has submitted cannot join another team of the challenge."""
    stoic_challenge(api, settings, tmp_path, rules={"max_submissions": 1})
    alice, bob, carol = (user_token(settings, u) for u in ("alice", "bob", "carol"))
    team = _team(api, alice, "Lungs")
    inv = _invite(api, alice, team["id"], "bob").json()
    api.post(f"/api/v1/team-invitations/{inv['id']}/accept", headers=auth(bob))
    assert submit_blob(api, alice).status_code == 201
    r = api.post(f"/api/v1/teams/{team['id']}/leave", headers=auth(bob))
    assert r.status_code == 409 and r.json()["field"] == "team", r.text
    assert "submitted" in r.json()["detail"]
    assert submit_blob(api, bob).json()["rule"] == "max_submissions"

    # Carol submitted alone (a team of one): she cannot join Lungs with a fresh quota, nor
    # can Lungs gain her submissions by inviting her.
    assert submit_blob(api, carol).status_code == 201
    inv = _invite(api, alice, team["id"], "carol").json()
    r = api.post(f"/api/v1/team-invitations/{inv['id']}/accept", headers=auth(carol))
    assert r.status_code == 409 and "submitted" in r.json()["detail"], r.text
    assert _mine(api, carol).json()["name"] == "carol"

    # A user whose team of one never submitted anything charged joins freely.
    dave = user_token(settings, "dave")
    inv = _invite(api, alice, team["id"], "dave").json()
    r = api.post(f"/api/v1/team-invitations/{inv['id']}/accept", headers=auth(dave))
    assert r.status_code == 200 and "dave" in r.json()["members"]


def _same(a: Any, b: Any) -> None:
    assert a.status_code == b.status_code, (a.text, b.text)
    ja, jb = a.json(), b.json()
    assert (ja.get("title"), ja.get("field")) == (jb.get("title"), jb.get("field")), (ja, jb)


def test_hidden_objects_answer_like_missing_ones(
    api: TestClient, settings: Settings, tmp_path: Path
) -> None:
    stoic_challenge(api, settings, tmp_path)
    alice, eve = user_token(settings, "alice"), user_token(settings, "eve")
    user_token(settings, "bob")
    team = _team(api, alice, "Lungs")
    sub = submit_blob(api, alice).json()
    missing = 10_000 + team["id"]

    # Teams: inviting into, reading and leaving someone else's team.
    _same(_invite(api, eve, team["id"], "eve"), _invite(api, eve, missing, "eve"))
    assert _invite(api, eve, missing, "eve").status_code == 404
    _same(
        api.get(f"/api/v1/teams/{team['id']}", headers=auth(eve)),
        api.get(f"/api/v1/teams/{missing}", headers=auth(eve)),
    )
    _same(
        api.post(f"/api/v1/teams/{team['id']}/leave", headers=auth(eve)),
        api.post(f"/api/v1/teams/{missing}/leave", headers=auth(eve)),
    )
    # Phase invitations (organizers only): a participant learns nothing about team ids.
    phase_inv = "/api/v1/challenges/stoic/phases/qualification/invitations"
    _same(
        api.post(phase_inv, json={"team_id": team["id"]}, headers=auth(eve)),
        api.post(phase_inv, json={"team_id": missing}, headers=auth(eve)),
    )
    # Invitations: someone else's invitation is a missing one.
    inv = _invite(api, alice, team["id"], "bob").json()
    for verb in ("accept", "decline"):
        _same(
            api.post(f"/api/v1/team-invitations/{inv['id']}/{verb}", headers=auth(eve)),
            api.post(f"/api/v1/team-invitations/{inv['id'] + 999}/{verb}", headers=auth(eve)),
        )
    # Submissions, their jobs and their logs.
    for path in ("/api/v1/submissions/{}", "/api/v1/submissions/{}/jobs"):
        _same(
            api.get(path.format(sub["id"]), headers=auth(eve)),
            api.get(path.format(sub["id"] + 999), headers=auth(eve)),
        )
    job_id = api.get(f"/api/v1/submissions/{sub['id']}/jobs", headers=auth(alice)).json()[0]["id"]
    for path in ("/api/v1/jobs/{}/logs/release", "/api/v1/jobs/{}/logs/refuse"):
        _same(
            api.post(path.format(job_id), json={}, headers=auth(eve)),
            api.post(path.format(job_id + 999), json={}, headers=auth(eve)),
        )
    _same(
        api.get(f"/api/v1/jobs/{job_id}/logs", headers=auth(eve)),
        api.get(f"/api/v1/jobs/{job_id + 999}/logs", headers=auth(eve)),
    )
    # Uploads.
    up = api.post("/api/v1/uploads", json={"filename": "x", "size": 3}, headers=auth(alice)).json()
    _same(
        api.get(f"/api/v1/uploads/{up['key']}", headers=auth(eve)),
        api.get("/api/v1/uploads/00000000-0000-0000-0000-000000000000", headers=auth(eve)),
    )
    _same(
        api.put(f"/api/v1/uploads/{up['key']}", content=b"abc", headers=auth(eve)),
        api.put("/api/v1/uploads/00000000-0000-0000-0000-000000000000", content=b"abc",
                headers=auth(eve)),
    )  # fmt: skip


def _codebase_link(
    api: TestClient, settings: Settings, tmp_path: Path, username: str
) -> tuple[int, str]:
    """A codebase phase and a repository link made by `username`: (link id, secret)."""
    from server.accounts import repository as accounts_repo
    from server.codebases import service as codebases
    from server.db import session_scope

    stoic_challenge(
        api, settings, tmp_path, extra_phase={"kind": "codebase", "training_dataset": "test"}
    )
    repo = tmp_path / "repos" / "team"
    repo.mkdir(parents=True)
    local = settings.model_copy(update={"allowed_local_repo_roots": [tmp_path / "repos"]})
    with session_scope(settings) as session:
        user = accounts_repo.get_user_by_name(session, username)
        assert user is not None
        link, secret = codebases.link(session, local, user, "stoic", "qualification", str(repo))
        return link.id, secret


def test_push_webhook_answers_alike_for_missing_links(
    api: TestClient, settings: Settings, tmp_path: Path
) -> None:
    """The webhook is unauthenticated: a wrong signature and a missing link look the same,
    so link ids cannot be enumerated."""
    user_token(settings, "alice")
    link_id, _ = _codebase_link(api, settings, tmp_path, "alice")
    body, sig = b'{"ref": "refs/tags/v1"}', {"X-Hub-Signature-256": "sha256=" + "0" * 64}
    _same(
        api.post(f"/api/v1/webhooks/push/{link_id}", content=body, headers=sig),
        api.post(f"/api/v1/webhooks/push/{link_id + 999}", content=body, headers=sig),
    )


def test_a_leavers_repository_link_goes_with_them(
    api: TestClient, settings: Settings, tmp_path: Path
) -> None:
    """A link submits as the user who made it; once they leave, it must not submit into
    their next team (or anyone's)."""
    from server.codebases import webhooks

    alice, bob = user_token(settings, "alice"), user_token(settings, "bob")
    link_id, secret = _codebase_link(api, settings, tmp_path, "alice")
    team = _team(api, bob, "Lungs")
    inv = _invite(api, bob, team["id"], "alice").json()
    api.post(f"/api/v1/team-invitations/{inv['id']}/accept", headers=auth(alice))
    assert api.post(f"/api/v1/teams/{team['id']}/leave", headers=auth(alice)).status_code == 200
    body = b'{"ref": "refs/tags/v1"}'
    signed = {"X-Hub-Signature-256": webhooks.sign(secret.encode(), body)}
    r = api.post(f"/api/v1/webhooks/push/{link_id}", content=body, headers=signed)
    assert r.status_code == 401, r.text
