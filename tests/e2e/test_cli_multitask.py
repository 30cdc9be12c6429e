"""`heldout tasks` and `heldout leaderboard --task/--consensus` on a multi-task phase,
against a real `heldout server` process; the phase's own board refers to them."""

from __future__ import annotations

import json
from pathlib import Path

from tests.integration.test_multitask_phase import _datasets, bundle
from tests.support.cli import run


def test_cli_reads_tasks_task_boards_and_consensus(server: dict[str, str], tmp_path: Path) -> None:
    env = server
    admin = json.loads(run(env, "token", "create", "--user", "admin", "--admin", "--json").stdout)
    _datasets(tmp_path / "data")
    spec = bundle()
    spec["datasets"] = [
        {"slug": "detect", "path": "data/detect"},
        {"slug": "bone", "path": "data/bone"},
    ]
    path = tmp_path / "bundle.yaml"
    path.write_text(json.dumps(spec))  # JSON is YAML
    run(env, "challenge", "apply", str(path), token=admin["token"])
    alice = json.loads(run(env, "token", "create", "--user", "alice", "--json").stdout)["token"]

    listed = run(env, "tasks", "auc", "final", token=alice).stdout
    assert "nodules" in listed and "bone-age" in listed and "hand-xray" in listed
    assert "--consensus" in listed
    as_json = json.loads(run(env, "tasks", "auc", "final", "--json", token=alice).stdout)
    assert [t["slug"] for t in as_json["tasks"]] == ["nodules", "bone-age"]

    board = run(env, "leaderboard", "auc", "final", "--task", "bone-age", token=alice).stdout
    assert "task bone-age" in board and "mae" in board and "no scored submissions yet" in board
    task_json = run(env, "leaderboard", "auc", "final", "--task", "nodules", "--json", token=alice)
    assert json.loads(task_json.stdout)["primary_metric"] == "auc"
    cons = run(env, "leaderboard", "auc", "final", "--consensus", token=alice).stdout
    assert "consensus across tasks" in cons and "rank on nodules" in cons
    cons_json = run(env, "leaderboard", "auc", "final", "--consensus", "--json", token=alice)
    assert json.loads(cons_json.stdout)["tasks"] == ["nodules", "bone-age"]

    # The phase's own board refers to the task boards and the consensus board.
    own = run(env, "leaderboard", "auc", "final", token=alice, ok=False)
    assert own.returncode == 2 and "409" in own.stderr, own.stderr
    assert "heldout tasks auc final" in own.stderr and "--consensus" in own.stderr
    unknown = run(env, "leaderboard", "auc", "final", "--task", "lungs", token=alice, ok=False)
    assert unknown.returncode == 2 and "no task 'lungs'" in unknown.stderr
