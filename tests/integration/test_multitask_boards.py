"""The boards of a multi-task phase as a participant reads them: the phase's own
leaderboard path answers 409 naming the task boards and the consensus board (a multi-task
phase has no board of its own); with a private_fraction, no task board, consensus board or
any other GET route shows a number of the private part (or of all cases) while the phase
is open."""

from __future__ import annotations

import copy
import math
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from fastapi.testclient import TestClient
from sqlalchemy import select

from server.challenges import repository as challenges_repo
from server.challenges.models import Phase
from server.config import Settings
from server.datasets.models import Case
from server.db import session_scope
from server.jobs import repository as jobs_repo
from server.leaderboards import split
from server.leaderboards.models import Result
from server.submissions.models import Submission
from tests.integration.test_multitask_phase import bundle
from tests.integration.test_private_split import _a_case_digest, _floats, _participant_gets
from tests.support import images
from tests.support.factories import apply_bundle, auth, submit_blob, user_token
from tests.support.scoring import run_algorithm, run_evaluation

PHASE = "/api/v1/challenges/auc/phases/final"
N = 24  # cases per task: both parts of the split hold some on any key


def _datasets(root: Path) -> dict[str, Path]:
    detect, bone = root / "detect", root / "bone"
    rows, bones = ["PatientID,nodule"], ["PatientID,age"]
    for i in range(N):
        images.write_mha(detect / "images" / "chest-ct" / f"N{i:03d}.mha")
        rows.append(f"N{i:03d},{i % 2}")
        images.write_mha(bone / "images" / "hand-xray" / f"H{i:03d}.mha")
        bones.append(f"H{i:03d},{10 + i}")
    (detect / "labels.csv").write_text("\n".join(rows) + "\n")
    (bone / "labels.csv").write_text("\n".join(bones) + "\n")
    return {"detect": detect, "bone": bone}


def _outputs(task: str, bend: float) -> dict[str, dict[str, Any]]:
    if task == "nodules":
        return {
            f"N{i:03d}": {
                "probability-nodule": round(
                    min(1.0, 0.3 * (i % 2) + 0.6 * bend * ((i * 7) % 11) / 11), 4
                )
            }
            for i in range(N)
        }
    # Errors bend * sqrt(i + 2): no mean of one part's errors (a bootstrap bound) can equal
    # the other part's by chance, as small integer errors did, failing the leak check.
    return {f"H{i:03d}": {"bone-age": round(10 + i + bend * math.sqrt(i + 2), 6)} for i in range(N)}


def test_the_phase_board_of_a_multitask_phase_names_the_task_boards(
    api: TestClient, settings: Settings, tmp_path: Path
) -> None:
    admin = user_token(settings, "admin", admin=True)
    r = apply_bundle(api, admin, bundle(), _datasets(tmp_path / "data"))
    assert r.status_code == 200, r.text
    alice = user_token(settings, "alice")
    for path in (f"{PHASE}/leaderboard", f"{PHASE}/leaderboard/statistics"):
        for _ in range(2):  # the second read takes the held-board path
            r = api.get(path, headers=auth(alice))
            assert r.status_code == 409, r.text
            body = r.json()
            assert "multi-task" in body["detail"] and "bone-age" in body["detail"], body
            assert body["tasks"] == {
                "nodules": f"{PHASE}/tasks/nodules/leaderboard",
                "bone-age": f"{PHASE}/tasks/bone-age/leaderboard",
            }
            assert body["consensus"] == f"{PHASE}/consensus"
    # The paths it names answer.
    for path in (*body["tasks"].values(), body["consensus"]):
        assert api.get(path, headers=auth(alice)).status_code == 200, path


def _split_bundle(closes_at: datetime) -> dict[str, Any]:
    b = copy.deepcopy(bundle())
    b["phases"][0].update(private_fraction=0.5, closes_at=closes_at.isoformat())
    return b


def test_multitask_private_split_leaks_nothing_before_close(
    api: TestClient, settings: Settings, tmp_path: Path
) -> None:
    # long: the scenario then the sweep over every GET route
    admin = user_token(settings, "admin", admin=True)
    closes = datetime.now(UTC) + timedelta(days=30)
    r = apply_bundle(api, admin, _split_bundle(closes), _datasets(tmp_path / "data"))
    assert r.status_code == 200, r.text
    tokens = {team: user_token(settings, team) for team in ("alpha", "beta", "gamma")}
    parents: dict[str, int] = {}
    for bend, (team, token) in zip((0.4, 0.7, 1.1), tokens.items(), strict=True):
        s = submit_blob(api, token, "auc", "final")
        assert s.status_code == 201, s.text
        parents[team] = int(s.json()["id"])
        run_algorithm(settings, parents[team], {})  # validation only: the parent has no cases
        view = api.get(f"/api/v1/submissions/{parents[team]}", headers=auth(token)).json()
        for t in view["tasks"]:
            outputs = _outputs(t["task"], bend)
            run_algorithm(settings, t["submission_id"], outputs)
            run_evaluation(settings, t["submission_id"], tmp_path / f"{team}-{t['task']}")
        done = api.get(f"/api/v1/submissions/{parents[team]}", headers=auth(token)).json()
        assert done["status"] == "succeeded", done

    forbidden: set[float] = set()
    public: set[float] = set()
    private_names: list[str] = []
    with session_scope(settings) as session:
        parent = session.query(Phase).filter(Phase.slug == "final").one()
        for child in challenges_repo.task_phases(session, parent.id):
            dataset = child.test_dataset_id
            names = sorted(session.scalars(select(Case.name).where(Case.dataset_id == dataset)))
            mask = split.private_mask(split.key(settings), child.id, names, 0.5)
            assert 0 < mask.sum() < len(names)
            private_names += [names[i] for i in np.flatnonzero(mask)]
            for result in session.query(Result).filter(Result.phase_id == child.id):
                forbidden |= _floats(result.metrics.get("aggregates"))
                forbidden |= _floats(split.view(settings, child, result, "private").metrics)
                public |= _floats(split.view(settings, child, result, "public").metrics)

    assert forbidden - public - {0.0, 1.0, 0.5, 0.95}, "nothing private to leak: a void check"
    board = api.get(f"{PHASE}/tasks/bone-age/leaderboard", headers=auth(tokens["alpha"])).json()
    assert board["part"] == "public" and len(board["entries"]) == 3, board
    consensus = api.get(f"{PHASE}/consensus", headers=auth(tokens["alpha"])).json()
    assert [e["complete"] for e in consensus["entries"]] == [True] * 3, consensus

    alpha = parents["alpha"]
    ids: dict[str, Any] = {"challenge": "auc", "phase": "final", "submission_id": alpha}
    ids.update(key="none", task="bone-age")
    with session_scope(settings) as session:
        ids["team_id"] = session.get(Submission, alpha).team_id  # type: ignore[union-attr]
        child_id = session.query(Submission).filter(Submission.parent_id == alpha).first().id  # type: ignore[union-attr]
        ids["job_id"] = jobs_repo.for_submission(session, child_id, "evaluate")[0].id
        ids["digest"] = _a_case_digest(session)
    seen = _participant_gets(api, tokens["alpha"], ids)
    for task in ("nodules", "bone-age"):
        ids["task"] = task
        path = f"{PHASE}/tasks/{task}/leaderboard"
        seen[path] = api.get(path, headers=auth(tokens["alpha"])).json()
    assert f"{PHASE}/consensus" in seen and len(seen) >= 15, sorted(seen)
    # N (an all-case count) is also the rules' 24 h window on the challenge view.
    trivial = {0.0, 1.0, 0.5, 0.95, float(N)}
    for path, body in seen.items():
        leaked = (_floats(body) & forbidden) - public - trivial
        assert not leaked, (path, sorted(leaked)[:5])
        text = str(body)
        assert not any(name in text for name in private_names), path
