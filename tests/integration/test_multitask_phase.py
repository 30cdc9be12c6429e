"""A multi-task phase end to end (issue #17, AUC23-style): one phase, two tasks on different
data (nodule detection scored by AUC, bone age scored by MAE), one T2 submission per team
that runs on both tasks' cases and is charged once; a board per task and a consensus board
(mean of per-task ranks; a team missing a task is incomplete and not ranked).

The algorithm tells the tasks apart as on grand-challenge: by the input interfaces listed in
/input/inputs.json (docs/contracts.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.support import images
from tests.support.factories import apply_bundle, auth, submit_blob, user_token
from tests.support.workers import celery_worker, wait_final

pytestmark = [pytest.mark.docker, pytest.mark.redis, pytest.mark.slow]

DETECT_AGES = (30, 38, 46, 54, 62, 70)  # nodule when age >= 50
BONE_AGES = (10, 20, 30, 40)

# {detect} and {bone} are Python expressions of `age`; "fail" makes that task's runs fail.
ALGORITHM = """
import json, os, sys

with open("/input/inputs.json") as f:
    given = {{entry["interface"]["slug"]: entry for entry in json.load(f)}}

def age_of(slug):
    folder = os.path.join("/input/images", slug)
    (name,) = os.listdir(folder)
    with open(os.path.join(folder, name), "rb") as f:
        for line in f:
            key, _, value = line.decode().partition(" = ")
            if key.strip() == "PatientAge":
                return int(value.strip().rstrip("Y"))
            if key.strip() == "ElementDataFile":
                break
    raise SystemExit("no PatientAge")

if "chest-ct" in given:
    age = age_of("chest-ct")
    out, value = "probability-nodule", {detect}
elif "hand-xray" in given:
    age = age_of("hand-xray")
    out, value = "bone-age", {bone}
else:
    raise SystemExit("unknown task: " + ", ".join(sorted(given)))
if value == "fail":
    raise SystemExit("this algorithm does not do " + out)
with open(os.path.join("/output", out + ".json"), "w") as f:
    json.dump(value, f)
"""

TEAMS = {
    # AUC 1 on detection, MAE 25 on bone age.
    "alpha": {"detect": "age / 100", "bone": "0"},
    # AUC 0 on detection, MAE 0 on bone age.
    "beta": {"detect": "1 - age / 100", "bone": "age"},
    # AUC 1 on detection (tied with alpha), fails every bone-age case: incomplete.
    "gamma": {"detect": "age / 100", "bone": '"fail"'},
}


def _datasets(root: Path) -> dict[str, Path]:
    detect, bone = root / "detect", root / "bone"
    rows = ["PatientID,nodule"]
    for i, age in enumerate(DETECT_AGES):
        images.write_mha(detect / "images" / "chest-ct" / f"N{i:03d}.mha", age=f"{age:03d}Y")
        rows.append(f"N{i:03d},{int(age >= 50)}")
    (detect / "labels.csv").write_text("\n".join(rows) + "\n")
    rows = ["PatientID,age"]
    for i, age in enumerate(BONE_AGES):
        images.write_mha(bone / "images" / "hand-xray" / f"H{i:03d}.mha", age=f"{age:03d}Y")
        rows.append(f"H{i:03d},{age}")
    (bone / "labels.csv").write_text("\n".join(rows) + "\n")
    return {"detect": detect, "bone": bone}


def bundle() -> dict[str, Any]:
    return {
        "version": 1,
        "slug": "auc",
        "title": "Multi-task test challenge",
        "datasets": [{"slug": "detect", "path": "detect"}, {"slug": "bone", "path": "bone"}],
        "phases": [
            {
                "slug": "final",
                "title": "Final",
                "kind": "algorithm",
                "limits": {"wall_time_s": 120},
                "tasks": [
                    {
                        "slug": "nodules",
                        "title": "Nodule detection",
                        "test_dataset": "detect",
                        "inputs": [{"slug": "chest-ct", "kind": "image"}],
                        "outputs": [
                            {
                                "slug": "probability-nodule",
                                "kind": "json",
                                "minimum": 0,
                                "maximum": 1,
                            }
                        ],
                        "metrics": {
                            "primary": "auc",
                            "metrics": [
                                {
                                    "name": "auc",
                                    "kind": "auc",
                                    "output": "probability-nodule",
                                    "label": "nodule",
                                }
                            ],
                        },
                    },
                    {
                        "slug": "bone-age",
                        "title": "Bone age",
                        "test_dataset": "bone",
                        "inputs": [{"slug": "hand-xray", "kind": "image"}],
                        "outputs": [{"slug": "bone-age", "kind": "json"}],
                        "metrics": {
                            "primary": "mae",
                            "metrics": [
                                {"name": "mae", "kind": "mae", "output": "bone-age", "label": "age"}
                            ],
                        },
                    },
                ],
            }
        ],
    }


@pytest.fixture
def live(pg_live: Any) -> Any:
    # Slow (real images, every case run): once, on PostgreSQL; test_multitask_states.py
    # covers the task states on both databases.
    return pg_live


def test_one_submission_per_team_two_boards_and_a_consensus(live: Any, tmp_path: Path) -> None:
    # long: the whole scenario, read top to bottom
    settings, api, client = live
    admin = user_token(settings, "admin", admin=True)
    r = apply_bundle(api, admin, bundle(), _datasets(tmp_path / "data"))
    assert r.status_code == 200, r.text

    # The tasks are listed; the per-task phases are not phases a team can submit to.
    tasks = api.get("/api/v1/challenges/auc/phases/final/tasks", headers=auth(admin))
    assert tasks.status_code == 200, tasks.text
    assert [(t["slug"], t["inputs"], t["primary_metric"]) for t in tasks.json()["tasks"]] == [
        ("nodules", ["chest-ct"], "auc"),
        ("bone-age", ["hand-xray"], "mae"),
    ]
    phases = api.get("/api/v1/challenges/auc", headers=auth(admin)).json()["phases"]
    assert [p["slug"] for p in phases] == ["final"]
    assert [t["slug"] for t in phases[0]["tasks"]] == ["nodules", "bone-age"]

    tokens = {team: user_token(settings, team) for team in TEAMS}
    archives = {}
    for team, exprs in TEAMS.items():
        tag = images.build_image(client, f"multitask-{team}", ALGORITHM.format(**exprs))
        archives[team] = images.save_image(client, [tag], tmp_path / f"{team}.tar")
    finals = {}
    with celery_worker(settings):
        subs = {}
        for team, archive in archives.items():
            s = submit_blob(api, tokens[team], "auc", "final", data=archive.read_bytes())
            assert s.status_code == 201, s.text
            subs[team] = s.json()["id"]
        for team, sid in subs.items():
            finals[team] = wait_final(api, tokens[team], sid, timeout=420)

    for team in ("alpha", "beta"):
        final = finals[team]
        assert final["status"] == "succeeded", final
        assert final["charged"] is True
        # One validation of the image; the cases of both tasks ran under this submission.
        assert [t["task"] for t in final["tasks"]] == ["nodules", "bone-age"]
        assert all(t["status"] == "succeeded" for t in final["tasks"]), final["tasks"]
    gamma = finals["gamma"]
    assert gamma["status"] == "failed" and gamma["charged"] is True, gamma
    assert gamma["failure_code"] == "task_failed:bone-age"
    assert "bone-age" in gamma["failure_message"]
    assert [t["status"] for t in gamma["tasks"]] == ["succeeded", "failed"]

    # Charged once: one submission per team counts on the phase.
    for team in TEAMS:
        mine = api.get(
            "/api/v1/challenges/auc/phases/final/submissions", headers=auth(tokens[team])
        ).json()
        assert [s["id"] for s in mine] == [subs[team]]

    def board(task: str) -> dict[str, Any]:
        path = f"/api/v1/challenges/auc/phases/final/tasks/{task}/leaderboard"
        r = api.get(path, headers=auth(admin))
        assert r.status_code == 200, r.text
        return dict(r.json())

    nodules = board("nodules")
    assert nodules["primary_metric"] == "auc"
    assert {e["team"]: (e["rank"], e["value"]) for e in nodules["entries"]} == {
        "alpha": (1, 1.0),
        "gamma": (1, 1.0),
        "beta": (3, 0.0),
    }
    bone = board("bone-age")
    assert bone["primary_metric"] == "mae" and bone["higher_is_better"] is False
    assert {e["team"]: (e["rank"], e["value"]) for e in bone["entries"]} == {
        "beta": (1, 0.0),
        "alpha": (2, 25.0),
    }

    consensus = api.get("/api/v1/challenges/auc/phases/final/consensus", headers=auth(admin))
    assert consensus.status_code == 200, consensus.text
    body = consensus.json()
    assert body["tasks"] == ["nodules", "bone-age"]
    rows = [
        (e["team"], e["rank"], e["mean_rank"], e["task_ranks"], e["complete"])
        for e in body["entries"]
    ]
    assert rows == [
        ("alpha", 1, 1.5, {"nodules": 1, "bone-age": 2}, True),
        ("beta", 2, 2.0, {"nodules": 3, "bone-age": 1}, True),
        ("gamma", None, None, {"nodules": 1, "bone-age": None}, False),
    ]
    assert consensus.headers.get("etag")
    again = api.get(
        "/api/v1/challenges/auc/phases/final/consensus",
        headers=auth(admin) | {"If-None-Match": consensus.headers["etag"]},
    )
    assert again.status_code == 304

    # A task is not a phase of its own: no direct submission to it.
    r = submit_blob(api, tokens["alpha"], "auc", "final--nodules", data=b"x")
    assert r.status_code == 404, r.text
