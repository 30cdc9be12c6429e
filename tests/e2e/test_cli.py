"""The `heldout` CLI against a real `heldout server` process, with the embedded default
set-up: SQLite in the data directory and a redis-server the CLI starts itself."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

from tests.support.archives import image_archive
from tests.support.cli import run
from tests.support.factories import STOIC_PHASE, stoic_cases, write_dataset
from tests.support.workers import free_port


def _bundle(tmp_path: Path, max_submissions: int = 1) -> Path:
    write_dataset(tmp_path / "data" / "test", stoic_cases())
    phase = textwrap.indent(STOIC_PHASE.strip(), "    ")
    text = (
        "version: 1\nslug: stoic\ntitle: STOIC-style\n"
        "datasets:\n  - {slug: test, path: data/test}\n"
        "phases:\n  - slug: qualification\n    title: Qualification\n    kind: algorithm\n"
        f"    test_dataset: test\n    rules: {{max_submissions: {max_submissions}}}\n{phase}\n"
    )
    path = tmp_path / "bundle.yaml"
    path.write_text(text)
    return path


def test_cli_end_to_end(server: dict[str, str], tmp_path: Path) -> None:
    env = server
    admin = json.loads(run(env, "token", "create", "--user", "admin", "--admin", "--json").stdout)
    assert admin["token"].startswith("hld_") and admin["admin"] is True
    assert (Path(env["HELDOUT_DATA_DIR"]) / "redis.sock").exists()  # embedded Redis

    bundle = _bundle(tmp_path)
    first = run(env, "challenge", "apply", str(bundle), token=admin["token"])
    assert "challenge stoic: changed" in first.stdout
    assert "uploading dataset test" in first.stderr
    again = run(env, "challenge", "apply", str(bundle), "--json", token=admin["token"])
    result = json.loads(again.stdout)
    assert result["changed"] is False and result["created"] == result["updated"] == []
    assert "uploading" not in again.stderr  # the unchanged dataset was not sent again

    broken = tmp_path / "broken.yaml"
    broken.write_text("slug: x\nphases: [\n")
    bad = run(env, "challenge", "apply", str(broken), token=admin["token"], ok=False)
    assert bad.returncode == 2 and "not valid YAML at line" in bad.stderr

    alice = json.loads(run(env, "token", "create", "--user", "alice", "--json").stdout)["token"]
    archive = image_archive(tmp_path / "algo.tar", layer_bytes=300_000)
    sub = json.loads(
        run(
            env, "submit", "stoic", "qualification", "--image", str(archive), "--json", token=alice
        ).stdout
    )
    assert sub["status"] == "validating" and sub["team"] == "alice"

    status = json.loads(
        run(env, "status", str(sub["id"]), "--no-follow", "--json", token=alice).stdout
    )
    assert status["id"] == sub["id"] and status["status"] == "validating"
    human = run(env, "status", str(sub["id"]), "--no-follow", token=alice).stdout
    assert f"submission {sub['id']}" in human and "validate" in human

    refused = run(
        env, "submit", "stoic", "qualification", "--image", str(archive), token=alice, ok=False
    )
    assert refused.returncode == 2
    assert "429" in refused.stderr and "next allowed" in refused.stderr

    rules = run(env, "rules", "stoic", "qualification", token=alice).stdout
    assert "at most 1 submission(s) per 24 h" in rules
    board = run(env, "leaderboard", "stoic", "qualification", token=alice).stdout
    assert "no scored submissions yet" in board

    # Another participant cannot read alice's submission.
    bob = json.loads(run(env, "token", "create", "--user", "bob", "--json").stdout)["token"]
    hidden = run(env, "status", str(sub["id"]), "--no-follow", token=bob, ok=False)
    assert hidden.returncode == 2 and "404" in hidden.stderr

    # Teams: an invitation the invitee accepts, then leaving a team that has not submitted.
    carol = json.loads(run(env, "token", "create", "--user", "carol", "--json").stdout)["token"]
    team = json.loads(run(env, "team", "create", "stoic", "Bronchi", "--json", token=bob).stdout)
    run(env, "team", "invite", str(team["id"]), "carol", token=bob)
    assert "invited: carol" in run(env, "team", "show", "stoic", token=bob).stdout
    (inv,) = json.loads(run(env, "team", "invitations", "--json", token=carol).stdout)
    joined = run(env, "team", "accept", str(inv["id"]), token=carol).stdout
    assert "team Bronchi" in joined and "bob, carol" in joined
    assert "you left team Bronchi" in run(env, "team", "leave", str(team["id"]), token=carol).stdout
    # Alice's team of one has submitted: she cannot move her quota elsewhere.
    mine = json.loads(run(env, "team", "show", "stoic", "--json", token=alice).stdout)
    stuck = run(env, "team", "leave", str(mine["id"]), token=alice, ok=False)
    assert stuck.returncode == 2 and "409" in stuck.stderr and "submitted" in stuck.stderr


def test_cli_without_server_says_so(env: dict[str, str]) -> None:
    env = {**env, "HELDOUT_API_URL": f"http://127.0.0.1:{free_port()}"}
    proc = run(env, "leaderboard", "stoic", "qualification", token="hld_x", ok=False)
    assert proc.returncode == 1 and "cannot reach the heldout server" in proc.stderr


def test_cli_plan_refusal_and_events(server: dict[str, str], tmp_path: Path) -> None:
    """`challenge apply --plan` prints what would change and changes nothing; a metric that
    names a missing label column is refused, naming it; `challenge events` lists events."""
    env = server
    admin = json.loads(run(env, "token", "create", "--user", "admin", "--admin", "--json").stdout)
    token = admin["token"]
    bundle = _bundle(tmp_path)
    run(env, "challenge", "apply", str(bundle), token=token)

    changed = tmp_path / "changed.yaml"
    changed.write_text(bundle.read_text().replace("primary: auc-severity", "primary: auc-covid"))
    plan = run(env, "challenge", "apply", str(changed), "--plan", token=token).stdout
    assert "plan for challenge stoic: would change (nothing applied)" in plan
    assert "updated   phase qualification" in plan
    assert "phase qualification: metrics (v1 -> v2)" in plan
    again = json.loads(
        run(env, "challenge", "apply", str(changed), "--plan", "--json", token=token).stdout
    )
    assert again["plan"] is True and again["updated"] == ["phase qualification"]  # not applied

    bad = tmp_path / "bad.yaml"
    bad.write_text(bundle.read_text().replace("label: probSevere", "label: probSevre"))
    for extra in (["--plan"], []):
        refused = run(env, "challenge", "apply", str(bad), *extra, token=token, ok=False)
        assert refused.returncode == 2
        assert "no column 'probSevre'" in refused.stderr, refused.stderr
    assert "no events" in run(env, "challenge", "events", "stoic", token=token).stdout
    assert json.loads(run(env, "challenge", "events", "stoic", "--json", token=token).stdout) == []


def test_cli_report_for_organizers_only(server: dict[str, str], tmp_path: Path) -> None:
    """`heldout report CHALLENGE` writes the organizers' report and says where; a
    participant is refused."""
    env = server
    admin = json.loads(run(env, "token", "create", "--user", "admin", "--admin", "--json").stdout)
    run(env, "challenge", "apply", str(_bundle(tmp_path)), token=admin["token"])
    target = tmp_path / "rep"
    done = run(env, "report", "stoic", "--out", str(target), token=admin["token"])
    assert f"report: {target / 'report.html'}" in done.stdout
    html = (target / "report.html").read_text()
    assert "no team has a current result" in html
    assert (target / "report.pdf").read_bytes().startswith(b"%PDF")
    alice = json.loads(run(env, "token", "create", "--user", "alice", "--json").stdout)["token"]
    refused = run(env, "report", "stoic", "--out", str(tmp_path / "no"), token=alice, ok=False)
    assert refused.returncode != 0 and "403" in refused.stderr
    assert not (tmp_path / "no" / "report.html").exists()
