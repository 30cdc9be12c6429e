"""A multi-task submission's states without an engine (the jobs driven through the
pipeline's own recorder): validated once, one child per task; the parent ends when every
task has; cancelling it cancels the tasks still running."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from server.config import Settings
from tests.integration.test_multitask_phase import _datasets, bundle
from tests.support import drive
from tests.support.factories import apply_bundle, auth, submit_blob, user_token


def _submitted(api: TestClient, settings: Settings, tmp_path: Path) -> tuple[str, int]:
    admin = user_token(settings, "admin", admin=True)
    r = apply_bundle(api, admin, bundle(), _datasets(tmp_path / "data"))
    assert r.status_code == 200, r.text
    alice = user_token(settings, "alice")
    s = submit_blob(api, alice, "auc", "final")
    assert s.status_code == 201, s.text
    sid = int(s.json()["id"])
    for ctx in drive.claim(settings, sid, "validate"):
        drive.ok(settings, ctx)
    return alice, sid


def _view(api: TestClient, token: str, sid: int) -> dict[str, Any]:
    return dict(api.get(f"/api/v1/submissions/{sid}", headers=auth(token)).json())


def test_a_failed_task_fails_the_submission_naming_it(
    api: TestClient, settings: Settings, tmp_path: Path
) -> None:
    alice, sid = _submitted(api, settings, tmp_path)
    parent = _view(api, alice, sid)
    assert parent["status"] == "inferring"
    nodules, bone = (t["submission_id"] for t in parent["tasks"])
    assert [t["status"] for t in parent["tasks"]] == ["inferring", "inferring"]
    child = _view(api, alice, nodules)
    assert child["parent_id"] == sid and child["phase"] == "final--nodules"

    drive.to_evaluation(settings, nodules)
    drive.evaluate(settings, nodules)
    assert _view(api, alice, sid)["status"] == "inferring"  # bone age still runs
    first, *rest = drive.claim(settings, bone, "infer")
    assert len(rest) == 3  # the bone-age task's own four cases
    drive.fail(settings, first, "exit_code", "The algorithm exited with an error.")
    for ctx in rest:
        drive.ok(settings, ctx)

    final = _view(api, alice, sid)
    assert final["status"] == "failed" and final["charged"] is True
    assert final["failure_code"] == "task_failed:bone-age"
    assert final["failure_message"].startswith("The submission failed on 1 of 2 tasks (bone-age).")
    assert [t["status"] for t in final["tasks"]] == ["succeeded", "failed"]
    # The task that succeeded keeps its entry on its board.
    board = api.get(
        "/api/v1/challenges/auc/phases/final/tasks/nodules/leaderboard", headers=auth(alice)
    ).json()
    assert [e["team"] for e in board["entries"]] == ["alice"]


def test_cancelling_the_submission_cancels_its_tasks(
    api: TestClient, settings: Settings, tmp_path: Path
) -> None:
    alice, sid = _submitted(api, settings, tmp_path)
    r = api.post(f"/api/v1/submissions/{sid}/cancel", headers=auth(alice))
    assert r.status_code == 200, r.text
    final = _view(api, alice, sid)
    assert final["status"] == "cancelled"
    assert [t["status"] for t in final["tasks"]] == ["cancelled", "cancelled"]
    for t in final["tasks"]:
        assert t["jobs"] and all(set(j["by_status"]) == {"cancelled"} for j in t["jobs"]), t


def test_a_tasks_board_is_reached_through_its_multi_task_phase_only(
    api: TestClient, settings: Settings, tmp_path: Path
) -> None:
    """A task's board, once held by the process, is still not served as a phase's board
    under the task's own phase slug (the full path says 404 for it, so must the held one)."""
    admin = user_token(settings, "admin", admin=True)
    r = apply_bundle(api, admin, bundle(), _datasets(tmp_path / "data"))
    assert r.status_code == 200, r.text
    alice = user_token(settings, "alice")
    task_board = "/api/v1/challenges/auc/phases/final/tasks/nodules/leaderboard"
    for _ in range(2):  # the second look is served from the held board
        assert api.get(task_board, headers=auth(alice)).status_code == 200
    for path in ("leaderboard", "leaderboard/statistics"):
        r = api.get(f"/api/v1/challenges/auc/phases/final--nodules/{path}", headers=auth(alice))
        assert r.status_code == 404 and r.json()["field"] == "phase", r.text
