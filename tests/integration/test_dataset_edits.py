"""Dataset edits through `challenge apply`: a removed case is retired, never deleted under
the jobs that ran on it; labels-only edits re-evaluate; a changed case set, a changed case
image or a phase pointed at another test set re-run inference (new cases only where it can),
never charged and never evaluating old predictions against the new cases.
SQLite and PostgreSQL; jobs are claimed and recorded through the pipeline's recorder."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from server.config import Settings
from server.db import session_scope
from server.jobs import repository as jobs_repo
from tests.support import drive
from tests.support.factories import (
    apply_bundle,
    auth,
    stoic_bundle,
    stoic_cases,
    stoic_challenge,
    submit_blob,
    user_token,
    write_dataset,
)

QUAL = "/api/v1/challenges/stoic/phases/qualification"


def _sub(api: TestClient, token: str, sid: int) -> dict[str, Any]:
    r = api.get(f"/api/v1/submissions/{sid}", headers=auth(token))
    assert r.status_code == 200, r.text
    return dict(r.json())


def _scored(api: TestClient, settings: Settings, tmp_path: Path) -> tuple[str, str, int]:
    admin = stoic_challenge(api, settings, tmp_path)
    alice = user_token(settings, "alice")
    r = submit_blob(api, alice)
    assert r.status_code == 201, r.text
    sid = int(r.json()["id"])
    drive.to_evaluation(settings, sid)
    drive.evaluate(settings, sid)
    assert _sub(api, alice, sid)["status"] == "succeeded"
    return admin, alice, sid


def _board_ids(api: TestClient, token: str) -> list[int]:
    r = api.get(f"{QUAL}/leaderboard", headers=auth(token))
    assert r.status_code == 200, r.text
    return [e["submission_id"] for e in r.json()["entries"]]


def _infer_jobs(settings: Settings, sid: int) -> list[tuple[int | None, str]]:
    with session_scope(settings) as session:
        return [(j.case_id, j.status) for j in jobs_repo.for_submission(session, sid, "infer")]


def _scored_inputs(settings: Settings, sid: int, dest: Path) -> dict[str, int]:
    """What the evaluator would be given: case name -> the job whose outputs it scores."""
    from server.challenges.models import Phase
    from server.storage import ArtifactStore
    from server.submissions.models import Submission
    from worker import pipeline

    dest.mkdir()
    with session_scope(settings) as session:
        sub = session.get(Submission, sid)
        assert sub is not None
        phase = session.get(Phase, sub.phase_id)
        assert phase is not None
        store = ArtifactStore(settings.artifacts_path)
        pipeline._predictions(session, store, sid, phase.spec, dest)
    entries = json.loads((dest / "predictions.json").read_text())
    return {e["inputs"][0]["image"]["name"].split(".")[0]: e["pk"] for e in entries}


def _rerun_and_score(api: TestClient, settings: Settings, alice: str, sid: int) -> None:
    for ctx in drive.claim(settings, sid, "infer"):
        drive.ok(settings, ctx)
    drive.evaluate(settings, sid)
    s = _sub(api, alice, sid)
    assert s["status"] == "succeeded", s
    assert s["charged"] is True


def test_removing_a_case_retires_it_and_the_board_answers(
    api: TestClient, settings: Settings, tmp_path: Path
) -> None:
    admin, alice, sid = _scored(api, settings, tmp_path)
    cases = stoic_cases()
    del cases["P005"]
    ds = write_dataset(tmp_path / "v2", cases)
    r = apply_bundle(api, admin, stoic_bundle(), {"test": ds})
    assert r.status_code == 200, r.text
    body = r.json()
    # Predictions for the remaining cases still hold: re-evaluation only, no re-run.
    assert body["rescored"] == [sid] and body["reinferred"] == []
    assert _board_ids(api, alice) == []  # the old result is stale, not shown
    assert all(status == "succeeded" for _, status in _infer_jobs(settings, sid))
    assert sorted(_scored_inputs(settings, sid, tmp_path / "in")) == sorted(cases)
    drive.evaluate(settings, sid)
    assert _board_ids(api, alice) == [sid]
    assert _sub(api, alice, sid)["charged"] is True


def test_adding_a_case_reruns_inference_on_it_uncharged(
    api: TestClient, settings: Settings, tmp_path: Path
) -> None:
    admin, alice, sid = _scored(api, settings, tmp_path)
    before = _infer_jobs(settings, sid)
    ds = write_dataset(tmp_path / "v2", stoic_cases(8))
    r = apply_bundle(api, admin, stoic_bundle(), {"test": ds})
    assert r.status_code == 200, r.text
    assert r.json()["reinferred"] == [sid] and r.json()["rescored"] == []
    s = _sub(api, alice, sid)
    assert s["status"] == "inferring" and s["charged"] is True
    with session_scope(settings) as session:
        evaluations = jobs_repo.for_submission(session, sid, "evaluate")
        assert all(j.status == "succeeded" for j in evaluations), "old outputs re-scored"
    new = _infer_jobs(settings, sid)[len(before) :]
    assert len(new) == 2 and all(status == "pending" for _, status in new)
    _rerun_and_score(api, settings, alice, sid)
    assert _board_ids(api, alice) == [sid]
    assert submit_blob(api, alice).status_code == 201  # the re-run used no quota


def test_changing_a_case_image_reruns_that_case(
    api: TestClient, settings: Settings, tmp_path: Path
) -> None:
    admin, alice, sid = _scored(api, settings, tmp_path)
    before = _infer_jobs(settings, sid)
    ds = write_dataset(tmp_path / "v2", stoic_cases())
    (ds / "images" / "ct" / "P002.mha").write_bytes(b"a better scan of P002")
    r = apply_bundle(api, admin, stoic_bundle(), {"test": ds})
    assert r.status_code == 200, r.text
    assert r.json()["reinferred"] == [sid] and r.json()["rescored"] == []
    new = _infer_jobs(settings, sid)[len(before) :]
    assert len(new) == 1 and new[0][1] == "pending"
    assert _sub(api, alice, sid)["status"] == "inferring"
    for ctx in drive.claim(settings, sid, "infer"):
        drive.ok(settings, ctx)
    scored = _scored_inputs(settings, sid, tmp_path / "in")
    with session_scope(settings) as session:
        newest = jobs_repo.for_submission(session, sid, "infer")[-1].id
    assert len(scored) == 6 and scored["P002"] == newest  # the run on the new image
    drive.evaluate(settings, sid)
    assert _board_ids(api, alice) == [sid]


def test_pointing_the_phase_at_another_test_set_reruns_every_case(
    api: TestClient, settings: Settings, tmp_path: Path
) -> None:
    admin, alice, sid = _scored(api, settings, tmp_path)
    before = _infer_jobs(settings, sid)
    bundle = stoic_bundle()
    bundle["datasets"].append({"slug": "final", "path": "final"})
    other = write_dataset(tmp_path / "final", stoic_cases(4))
    r = apply_bundle(api, admin, copy.deepcopy(bundle), {"final": other})
    assert r.status_code == 200, r.text
    assert r.json()["reinferred"] == [] and r.json()["rescored"] == []
    bundle["phases"][0]["test_dataset"] = "final"
    r = apply_bundle(api, admin, bundle)
    assert r.status_code == 200, r.text
    assert r.json()["reinferred"] == [sid], r.json()
    new = _infer_jobs(settings, sid)[len(before) :]
    assert len(new) == 4 and all(status == "pending" for _, status in new)
    _rerun_and_score(api, settings, alice, sid)
    assert _board_ids(api, alice) == [sid]


def test_labels_only_change_re_evaluates(
    api: TestClient, settings: Settings, tmp_path: Path
) -> None:
    admin, alice, sid = _scored(api, settings, tmp_path)
    cases = stoic_cases()
    cases["P001"]["probSevere"] = 1
    ds = write_dataset(tmp_path / "v2", cases)
    r = apply_bundle(api, admin, stoic_bundle(), {"test": ds})
    assert r.status_code == 200, r.text
    assert r.json()["rescored"] == [sid] and r.json()["reinferred"] == []
    drive.evaluate(settings, sid)
    assert _board_ids(api, alice) == [sid]


def test_plan_lists_the_reruns_and_changes_nothing(
    api: TestClient, settings: Settings, tmp_path: Path
) -> None:
    admin, alice, sid = _scored(api, settings, tmp_path)
    before = _infer_jobs(settings, sid)
    ds = write_dataset(tmp_path / "v2", stoic_cases(7))
    keys = {"test": _upload(api, admin, ds)}
    r = api.post(
        "/api/v1/challenges/apply",
        json={"bundle": stoic_bundle(), "datasets": keys, "plan": True},
        headers=auth(admin),
    )
    assert r.status_code == 200, r.text
    assert r.json()["reinferred"] == [sid] and r.json()["plan"] is True
    assert _infer_jobs(settings, sid) == before
    assert _sub(api, alice, sid)["status"] == "succeeded"


def _upload(api: TestClient, token: str, root: Path) -> str:
    from tests.support.factories import tar_dir, upload_bytes

    return upload_bytes(api, token, tar_dir(root))


def _started(api: TestClient, settings: Settings, tmp_path: Path) -> tuple[str, str, int]:
    """A first run whose algorithm outputs are complete: it is `evaluating`."""
    admin = stoic_challenge(api, settings, tmp_path)
    alice = user_token(settings, "alice")
    r = submit_blob(api, alice)
    assert r.status_code == 201, r.text
    sid = int(r.json()["id"])
    drive.to_evaluation(settings, sid)
    assert _sub(api, alice, sid)["status"] == "evaluating"
    return admin, alice, sid


def _evaluate_statuses(settings: Settings, sid: int) -> list[str]:
    with session_scope(settings) as session:
        return [j.status for j in jobs_repo.for_submission(session, sid, "evaluate")]


def test_a_pending_evaluation_waits_for_the_new_cases(
    api: TestClient, settings: Settings, tmp_path: Path
) -> None:
    admin, alice, sid = _started(api, settings, tmp_path)
    r = apply_bundle(
        api, admin, stoic_bundle(), {"test": write_dataset(tmp_path / "v2", stoic_cases(8))}
    )
    assert r.status_code == 200, r.text
    assert r.json()["reinferred"] == [sid]
    assert _evaluate_statuses(settings, sid) == ["cancelled"]
    assert _sub(api, alice, sid)["status"] == "inferring"
    _rerun_and_score(api, settings, alice, sid)
    assert _board_ids(api, alice) == [sid]


def test_an_evaluation_running_through_an_edit_decides_nothing(
    api: TestClient, settings: Settings, tmp_path: Path
) -> None:
    admin, alice, sid = _started(api, settings, tmp_path)
    (running,) = drive.claim(settings, sid, "evaluate")
    r = apply_bundle(
        api, admin, stoic_bundle(), {"test": write_dataset(tmp_path / "v2", stoic_cases(8))}
    )
    assert r.status_code == 200, r.text
    assert r.json()["reinferred"] == [sid]
    # It scored the old outputs against cases they lack: not a failure, not a charge.
    drive.fail(settings, running, "invalid_predictions")
    s = _sub(api, alice, sid)
    assert s["status"] == "inferring" and s["failure_code"] is None, s
    _rerun_and_score(api, settings, alice, sid)
    assert _board_ids(api, alice) == [sid]


def test_labels_changed_during_an_evaluation_are_scored_again(
    api: TestClient, settings: Settings, tmp_path: Path
) -> None:
    admin, alice, sid = _started(api, settings, tmp_path)
    (running,) = drive.claim(settings, sid, "evaluate")
    cases = stoic_cases()
    cases["P001"]["probSevere"] = 1
    r = apply_bundle(api, admin, stoic_bundle(), {"test": write_dataset(tmp_path / "v2", cases)})
    assert r.status_code == 200, r.text
    drive.ok(settings, running)
    assert _board_ids(api, alice) == []  # scored on the old labels: not current
    assert _sub(api, alice, sid)["status"] == "evaluating"
    drive.evaluate(settings, sid)
    assert _board_ids(api, alice) == [sid]


def _batch_ok(settings: Settings, sid: int) -> None:
    from worker import pipeline

    for ctx in drive.claim(settings, sid, "infer"):
        cases = {c.public_name: {"case_id": c.id, "outputs": {}} for c in ctx.cases}
        pipeline._record(settings, ctx, outcome=pipeline.Outcome({"cases": cases}))


def test_a_batch_phase_reruns_one_batch_on_the_new_case_set(
    api: TestClient, settings: Settings, tmp_path: Path
) -> None:
    admin = stoic_challenge(api, settings, tmp_path, extra_phase={"batch_mode": True})
    alice = user_token(settings, "alice")
    sid = int(submit_blob(api, alice).json()["id"])
    for ctx in drive.claim(settings, sid, "validate"):
        drive.ok(settings, ctx)
    _batch_ok(settings, sid)
    drive.evaluate(settings, sid)
    cases = stoic_cases(8)
    del cases["P000"]
    bundle = stoic_bundle(extra_phase={"batch_mode": True})
    r = apply_bundle(api, admin, bundle, {"test": write_dataset(tmp_path / "v2", cases)})
    assert r.status_code == 200, r.text
    assert r.json()["reinferred"] == [sid]
    assert [c for c, _ in _infer_jobs(settings, sid)] == [None, None]
    _batch_ok(settings, sid)
    assert sorted(_scored_inputs(settings, sid, tmp_path / "in")) == sorted(cases)
    drive.evaluate(settings, sid)
    assert _board_ids(api, alice) == [sid]
    assert _sub(api, alice, sid)["charged"] is True


def test_cases_added_while_inferring_are_run_before_the_evaluation(
    api: TestClient, settings: Settings, tmp_path: Path
) -> None:
    admin = stoic_challenge(api, settings, tmp_path)
    alice = user_token(settings, "alice")
    sid = int(submit_blob(api, alice).json()["id"])
    for ctx in drive.claim(settings, sid, "validate"):
        drive.ok(settings, ctx)
    running = drive.claim(settings, sid, "infer")  # six cases started on the old set
    r = apply_bundle(
        api, admin, stoic_bundle(), {"test": write_dataset(tmp_path / "v2", stoic_cases(7))}
    )
    assert r.status_code == 200, r.text
    assert r.json()["reinferred"] == [sid]
    for ctx in running:
        drive.ok(settings, ctx)
    assert _sub(api, alice, sid)["status"] == "inferring"  # the new case is still to run
    _rerun_and_score(api, settings, alice, sid)
    assert len(_scored_inputs(settings, sid, tmp_path / "in")) == 7
    assert _board_ids(api, alice) == [sid]
