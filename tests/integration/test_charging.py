"""Quota and rule changes: a re-score never changes a charge, a bad metric config is refused
at apply (or planned without changing anything), organizer-caused failures reach the
organizers, and a result carries the metric config its evaluation actually used.
SQLite and PostgreSQL; jobs are claimed and recorded through the pipeline's recorder."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from server.config import Settings
from server.db import session_scope
from server.jobs import repository as jobs_repo
from server.leaderboards.models import Result
from tests.support import drive
from tests.support.factories import (
    apply_bundle,
    auth,
    stoic_bundle,
    stoic_challenge,
    submit_blob,
    user_token,
)
from worker import pipeline

QUAL = "/api/v1/challenges/stoic/phases/qualification"


def _sub(api: TestClient, token: str, sid: int) -> dict[str, Any]:
    r = api.get(f"/api/v1/submissions/{sid}", headers=auth(token))
    assert r.status_code == 200, r.text
    return dict(r.json())


def _with_primary(bundle: dict[str, Any], primary: str) -> dict[str, Any]:
    changed = copy.deepcopy(bundle)
    changed["phases"][0]["metrics"]["primary"] = primary
    return changed


def test_misconfigured_then_fixed_evaluation_keeps_the_quota_exact(
    api: TestClient, settings: Settings, tmp_path: Path
) -> None:
    rules = {"max_submissions": 2, "window_hours": 24}
    admin = stoic_challenge(api, settings, tmp_path, rules=rules)
    bundle = stoic_bundle(rules=rules)
    alice = user_token(settings, "alice")
    ids = []
    for _ in range(2):
        r = submit_blob(api, alice)
        assert r.status_code == 201, r.text
        ids.append(r.json()["id"])
        drive.to_evaluation(settings, ids[-1])
        drive.evaluate(settings, ids[-1])
    assert [_sub(api, alice, i)["status"] for i in ids] == ["succeeded", "succeeded"]
    assert submit_blob(api, alice).status_code == 429

    # A metric change whose evaluation fails for the organizers' reasons.
    r = apply_bundle(api, admin, _with_primary(bundle, "auc-covid"))
    assert sorted(r.json()["rescored"]) == sorted(ids)
    for sid in ids:
        drive.evaluate(settings, sid, error="evaluation_config_error")
    for sid in ids:
        s = _sub(api, alice, sid)
        assert s["status"] == "failed" and s["failure_code"] == "evaluation_config_error"
        assert s["charged"] is True, "a re-score must not refund a submission that ran"
    blocked = submit_blob(api, alice)
    assert blocked.status_code == 429, blocked.text
    assert blocked.json()["rule"] == "max_submissions"

    # The fixed bundle: every submission is scored again, the failure is gone, the charge
    # is what it was.
    r = apply_bundle(api, admin, _with_primary(bundle, "auc-severity"))
    assert sorted(r.json()["rescored"]) == sorted(ids)
    for sid in ids:
        drive.evaluate(settings, sid)
    for sid in ids:
        s = _sub(api, alice, sid)
        assert s["status"] == "succeeded"
        assert s["failure_code"] is None and s["failure_message"] is None
        assert s["charged"] is True
    assert submit_blob(api, alice).status_code == 429
    board = api.get(f"{QUAL}/leaderboard", headers=auth(alice)).json()
    assert [e["submission_id"] for e in board["entries"]] == [ids[0]]  # one row per team


def test_organizer_caused_failure_is_an_event_for_organizers(
    api: TestClient, settings: Settings, tmp_path: Path
) -> None:
    admin = stoic_challenge(api, settings, tmp_path)
    alice = user_token(settings, "alice")
    sid = submit_blob(api, alice).json()["id"]
    drive.to_evaluation(settings, sid)
    drive.evaluate(settings, sid, error="evaluation_config_error")
    s = _sub(api, alice, sid)
    assert s["status"] == "failed" and s["charged"] is False  # the first run: not the team's

    r = api.get("/api/v1/challenges/stoic/events", headers=auth(admin))
    assert r.status_code == 200, r.text
    (event,) = r.json()
    assert event["kind"] == "evaluation_config_error"
    assert event["phase"] == "qualification" and event["submission_id"] == sid
    assert "misconfigured" in event["message"]

    # An unexpected platform error on a case says "the organizers have been told": they are.
    bob = user_token(settings, "bob")
    other = submit_blob(api, bob).json()["id"]
    for ctx in drive.claim(settings, other, "validate"):
        drive.ok(settings, ctx)
    first, *rest = drive.claim(settings, other, "infer")
    drive.fail(settings, first, "internal_error", "The platform hit an unexpected error.")
    for ctx in rest:
        drive.ok(settings, ctx)
    assert _sub(api, bob, other)["charged"] is False
    newest = api.get("/api/v1/challenges/stoic/events", headers=auth(admin)).json()[0]
    assert newest["kind"] == "internal_error" and newest["submission_id"] == other
    # Participants do not see the organizers' events.
    assert api.get("/api/v1/challenges/stoic/events", headers=auth(alice)).status_code == 403


def test_bad_label_column_is_refused_at_apply_and_nothing_changes(
    api: TestClient, settings: Settings, tmp_path: Path
) -> None:
    admin = stoic_challenge(api, settings, tmp_path)
    alice = user_token(settings, "alice")
    sid = submit_blob(api, alice).json()["id"]
    drive.to_evaluation(settings, sid)
    drive.evaluate(settings, sid)
    before = api.get(QUAL, headers=auth(admin)).json()

    bad = stoic_bundle()
    bad["phases"][0]["metrics"]["metrics"][0]["label"] = "probSevre"
    r = apply_bundle(api, admin, bad)
    assert r.status_code == 422, r.text
    body = r.json()
    assert "probSevre" in body["detail"] and "auc-severity" in body["detail"]
    assert body["field"] == "phases.qualification.metrics"
    assert api.get(QUAL, headers=auth(admin)).json() == before
    s = _sub(api, alice, sid)
    assert s["status"] == "succeeded" and s["charged"] is True
    with session_scope(settings) as session:
        assert len(jobs_repo.for_submission(session, sid, "evaluate")) == 1

    # The same check on a plan, and for a new challenge: nothing is created.
    planned = api.post(
        "/api/v1/challenges/apply", json={"bundle": bad, "plan": True}, headers=auth(admin)
    )
    assert planned.status_code == 422 and "probSevre" in planned.json()["detail"]
    fresh = stoic_bundle("fresh")
    fresh["phases"][0]["metrics"]["metrics"][1]["label"] = "covid"
    ds = tmp_path / "test"
    r = apply_bundle(api, admin, fresh, {"test": ds})
    assert r.status_code == 422 and "'covid'" in r.json()["detail"]
    assert api.get("/api/v1/challenges/fresh", headers=auth(admin)).status_code == 404


def test_plan_says_what_would_change_and_changes_nothing(
    api: TestClient, settings: Settings, tmp_path: Path, sent_tasks: list[Any]
) -> None:
    admin = stoic_challenge(api, settings, tmp_path)
    alice = user_token(settings, "alice")
    sid = submit_blob(api, alice).json()["id"]
    drive.to_evaluation(settings, sid)
    drive.evaluate(settings, sid)
    before = api.get(QUAL, headers=auth(admin)).json()
    sent_before = len(sent_tasks)

    r = api.post(
        "/api/v1/challenges/apply",
        json={"bundle": _with_primary(stoic_bundle(), "auc-covid"), "plan": True},
        headers=auth(admin),
    )
    assert r.status_code == 200, r.text
    plan = r.json()
    assert plan["plan"] is True and plan["changed"] is True
    assert plan["updated"] == ["phase qualification"]
    assert "dataset test" in plan["unchanged"]
    assert plan["details"] == ["phase qualification: metrics (v1 -> v2)"]
    assert plan["rescored"] == [sid]
    assert api.get(QUAL, headers=auth(admin)).json() == before
    assert _sub(api, alice, sid)["status"] == "succeeded"
    assert len(sent_tasks) == sent_before
    with session_scope(settings) as session:
        assert len(jobs_repo.for_submission(session, sid, "evaluate")) == 1


def test_metric_change_during_an_evaluation_ends_under_the_new_version(
    api: TestClient, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    admin = stoic_challenge(api, settings, tmp_path)
    alice = user_token(settings, "alice")
    sid = submit_blob(api, alice).json()["id"]
    drive.to_evaluation(settings, sid)
    applied: list[dict[str, Any]] = []

    def evaluating(_settings: Settings, _store: Any, ctx: pipeline.JobContext) -> pipeline.Outcome:
        # The organizer applies a new metric config while this evaluation runs.
        if not applied:
            r = apply_bundle(api, admin, _with_primary(stoic_bundle(), "auc-covid"))
            assert r.status_code == 200, r.text
            applied.append(r.json())
        return pipeline.Outcome(drive.fake_metrics(ctx))

    steps = pipeline._steps()
    monkeypatch.setattr(
        pipeline, "_steps", lambda: {**steps, pipeline.JobKind.evaluate: evaluating}
    )
    with session_scope(settings) as session:
        (first,) = [j.id for j in jobs_repo.for_submission(session, sid, "evaluate")]
    pipeline.run_job(settings, first)
    assert applied and applied[0]["rescored"] == [sid]  # scheduled after the running one
    with session_scope(settings) as session:
        pending = [
            j.id
            for j in jobs_repo.for_submission(session, sid, "evaluate")
            if j.status == "pending"
        ]
    assert len(pending) == 1, "the evaluation under the old config must be followed by one"
    pipeline.run_job(settings, pending[0])

    s = _sub(api, alice, sid)
    assert s["status"] == "succeeded" and s["charged"] is True
    with session_scope(settings) as session:
        results = {
            r.metrics_version: r.metrics["aggregates"]["primary"]
            for r in session.query(Result).filter(Result.submission_id == sid)
        }
    assert results == {1: "auc-severity", 2: "auc-covid"}
    board = api.get(f"{QUAL}/leaderboard", headers=auth(alice)).json()
    assert board["metrics_version"] == 2 and board["primary_metric"] == "auc-covid"
    (entry,) = board["entries"]
    assert entry["value"] == pytest.approx(0.6)  # auc-covid's made-up value, not severity's
