"""A participant reads every log the rules allow, through the API and `heldout logs`: their
build and validation logs, the T3 inference build's, logs an organizer released; held ones
say they are held and show nothing else. Another team's submission is missing (404). The
organizers' review queue holds one entry per submission step, not per case, and none for
successful runs unless the phase asks (`review_successful_logs`).

Real SQLite and PostgreSQL, the pipeline's own recorder (tests.support.drive), the real
command line against the app."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from heldout import cli
from heldout.client import Client
from server.app import create_app
from server.config import Settings
from server.storage import ArtifactStore
from tests.support import drive
from tests.support.factories import (
    apply_bundle,
    auth,
    stoic_bundle,
    stoic_cases,
    submit_blob,
    user_token,
    write_dataset,
)
from worker import pipeline

N_CASES = 7
FAILING = 3  # the case whose run fails


def _challenge(api: TestClient, settings: Settings, tmp_path: Path, **phase: Any) -> str:
    admin = user_token(settings, "admin", admin=True)
    ds = write_dataset(tmp_path / "test", stoic_cases(N_CASES))
    r = apply_bundle(api, admin, stoic_bundle(extra_phase=phase), {"test": ds})
    assert r.status_code == 200, r.text
    return admin


def _record(settings: Settings, ctx: pipeline.JobContext, log: str, fail: str | None) -> None:
    if fail:
        failure = pipeline.StepFailed(fail, f"failed with {fail}", {"log": log})
        pipeline._record(settings, ctx, failure=failure)
    else:
        result = {"validate": {"image_id": "sha256:test"}, "infer": {"outputs": {}}}
        outcome = pipeline.Outcome(result.get(ctx.kind.value) or drive.fake_metrics(ctx), log)
        pipeline._record(settings, ctx, outcome=outcome)


def _run_t2(settings: Settings, sid: int, failing: int | None) -> None:
    (validate,) = drive.claim(settings, sid, "validate")
    _record(settings, validate, "validated the image\n", None)
    for i, ctx in enumerate(drive.claim(settings, sid, "infer")):
        bad = i == failing
        _record(settings, ctx, f"case log {i}: patient P00{i}\n", "exit_code:1" if bad else None)
    for ctx in drive.claim(settings, sid, "evaluate"):
        _record(settings, ctx, "evaluator read the ground truth of P000\n", None)


def _reviews(api: TestClient, admin: str) -> list[dict[str, Any]]:
    r = api.get("/api/v1/challenges/stoic/log-reviews", headers=auth(admin))
    assert r.status_code == 200, r.text
    return list(r.json())


def _logs(api: TestClient, token: str, sid: int, **params: Any) -> Any:
    return api.get(f"/api/v1/submissions/{sid}/logs", params=params, headers=auth(token))


def test_participant_reads_allowed_logs_and_the_queue_has_one_entry_per_step(
    api: TestClient, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    admin = _challenge(api, settings, tmp_path)
    alice, eve = user_token(settings, "alice"), user_token(settings, "eve")
    sid = submit_blob(api, alice).json()["id"]
    _run_t2(settings, sid, failing=FAILING)
    assert api.get(f"/api/v1/submissions/{sid}", headers=auth(alice)).json()["status"] == "failed"

    # One review entry for the inference step (its failed case only); the successful
    # cases' held logs need no review by default, and validation logs are not held.
    (entry,) = _reviews(api, admin)
    assert entry["kind"] == "infer" and entry["submission_id"] == sid
    assert len(entry["job_ids"]) == 1 and entry["status"] == "failed"
    failed_job = entry["job_ids"][0]

    r = _logs(api, alice, sid)
    assert r.status_code == 200, r.text
    entries = r.json()
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for e in entries:
        by_kind.setdefault(e["kind"], []).append(e)
    (validate,) = by_kind["validate"]
    assert validate["log"] == "validated the image\n" and validate["held"] is False
    assert len(by_kind["infer"]) == N_CASES
    for e in by_kind["infer"]:
        assert e["held"] is True and e["log"] is None and "held" in e["note"]
    assert "patient" not in r.text and "P00" not in r.text

    # Another team, and a job of another submission, are missing alike.
    assert _logs(api, eve, sid).status_code == 404
    assert _logs(api, eve, sid, job=validate["job_id"]).status_code == 404
    assert _logs(api, alice, sid, job=validate["job_id"] + 10_000).status_code == 404
    only = _logs(api, alice, sid, job=validate["job_id"]).json()
    assert [e["job_id"] for e in only] == [validate["job_id"]]

    # Released (redacted) logs are shown; a successful held run can be released on request.
    r = api.post(
        f"/api/v1/jobs/{failed_job}/logs/release",
        json={"redactions": [f"P00{FAILING}"]},
        headers=auth(admin),
    )
    assert r.status_code == 200, r.text
    assert _reviews(api, admin) == []
    ok_job = next(e["job_id"] for e in by_kind["infer"] if e["job_id"] != failed_job)
    r = api.post(f"/api/v1/jobs/{ok_job}/logs/release", json={}, headers=auth(admin))
    assert r.status_code == 200, r.text
    shown = {e["job_id"]: e for e in _logs(api, alice, sid).json()}
    assert shown[failed_job]["released"] is True
    assert shown[failed_job]["log"] == f"case log {FAILING}: patient [redacted]\n"
    assert shown[ok_job]["log"].startswith("case log") and shown[ok_job]["held"] is False
    still_held = [e for e in shown.values() if e["held"]]
    assert len(still_held) == N_CASES - 2

    # The command line shows the same, held ones saying so.
    _use_app(monkeypatch, api)
    res = CliRunner().invoke(cli.app, ["--token", alice, "logs", str(sid)])
    assert res.exit_code == 0, res.output
    assert "validated the image" in res.output and "patient [redacted]" in res.output
    assert res.output.count("held: the logs of this run") == N_CASES - 2
    res = CliRunner().invoke(cli.app, ["--token", alice, "logs", str(sid), "--job", str(ok_job)])
    assert res.exit_code == 0 and "released by the organizers" in res.output, res.output
    assert "validated" not in res.output
    res = CliRunner().invoke(cli.app, ["--token", eve, "logs", str(sid)])
    assert res.exit_code == 2, res.output


def _use_app(monkeypatch: pytest.MonkeyPatch, api: TestClient) -> None:
    """`heldout` talks to the app in this process (the TestClient's transport)."""
    transport = api._transport

    def client(url: str, token: str | None = None) -> Client:
        return Client("http://testserver", token, transport=transport)

    monkeypatch.setattr(cli, "Client", client)


def test_successful_runs_enter_the_queue_when_the_phase_asks(
    api: TestClient, settings: Settings, tmp_path: Path
) -> None:
    admin = _challenge(api, settings, tmp_path, review_successful_logs=True)
    alice = user_token(settings, "alice")
    sid = submit_blob(api, alice).json()["id"]
    _run_t2(settings, sid, failing=None)
    assert api.get(f"/api/v1/submissions/{sid}", headers=auth(alice)).json()["status"] == (
        "succeeded"
    )
    steps = {(e["submission_id"], e["kind"]): e for e in _reviews(api, admin)}
    assert set(steps) == {(sid, "infer"), (sid, "evaluate")}
    assert len(steps[(sid, "infer")]["job_ids"]) == N_CASES


def test_no_review_entries_for_a_successful_submission_by_default(
    api: TestClient, settings: Settings, tmp_path: Path
) -> None:
    admin = _challenge(api, settings, tmp_path)
    alice = user_token(settings, "alice")
    sid = submit_blob(api, alice).json()["id"]
    _run_t2(settings, sid, failing=None)
    assert _reviews(api, admin) == []
    held = [e for e in _logs(api, alice, sid).json() if e["held"]]
    assert {e["kind"] for e in held} == {"infer", "evaluate"}
    assert all("not requested" in e["note"] for e in held)


def test_t3_inference_build_log_is_served(
    settings: Settings, tmp_path: Path, sent_tasks: list[Any]
) -> None:
    """The build adding the trained artifacts (platform-written: FROM and COPY, no RUN) is
    stored with the training job; its log is the participant's, though training's is held."""
    repos = tmp_path / "repos"
    repo = repos / "team"
    repo.mkdir(parents=True)
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.org"]
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    (repo / "README").write_text("solution\n")
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "solution"], check=True)
    local = settings.model_copy(update={"allowed_local_repo_roots": [repos]})
    with TestClient(create_app(local)) as api:
        _challenge(api, local, tmp_path, kind="codebase", training_dataset="test")
        alice = user_token(local, "alice")
        r = api.post(
            "/api/v1/challenges/stoic/phases/qualification/submissions",
            json={"repository_url": str(repo), "ref": "HEAD"},
            headers=auth(alice),
        )
        assert r.status_code == 201, r.text
        sid = r.json()["id"]
        store = ArtifactStore(local.artifacts_path)
        for kind in ("validate", "build"):
            (ctx,) = drive.claim(local, sid, kind)
            pipeline._record(local, ctx, outcome=pipeline.Outcome({}, f"{kind} log\n"))
        (ctx,) = drive.claim(local, sid, "train")
        built = store.put_bytes(b"Step 1/2 : FROM sha256:abc\nStep 2/2 : COPY artifact/\n")
        result = {"inference_build_log_digest": built, "inference_image_id": "sha256:x"}
        outcome = pipeline.Outcome(result, "training saw patient P001\n")
        pipeline._record(local, ctx, outcome=outcome)
        entries = _logs(api, alice, sid).json()
        parts = [(e["kind"], e["part"], e["held"]) for e in entries[:4]]
        assert parts == [
            ("validate", "run", False),
            ("build", "run", False),
            ("train", "run", True),
            ("train", "inference_build", False),
        ]
        assert entries[3]["log"].startswith("Step 1/2 : FROM")
        assert "P001" not in str(entries)
