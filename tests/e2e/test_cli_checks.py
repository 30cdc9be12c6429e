"""`heldout` refuses before it uploads, and every expected error is one line: a wrong phase
slug, a closed phase, a used quota, a file that is not an image, a root or arm64 image, a
participant creating a challenge, the server down, a missing database. Exit codes: 0
succeeded, 1 failed, 2 usage or refusal, 3 cancelled."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import textwrap
from pathlib import Path

import httpx

from tests.conftest import need
from tests.support.archives import image_archive
from tests.support.cli import HELDOUT, run
from tests.support.factories import STOIC_PHASE, stoic_cases, write_dataset
from tests.support.workers import free_port, wait_for, wait_healthy


def _bundle_two_phases(tmp_path: Path) -> Path:
    """Unquoted YAML datetimes on purpose: YAML reads them as datetimes."""
    write_dataset(tmp_path / "data" / "test", stoic_cases())
    body = textwrap.indent(STOIC_PHASE.strip(), "    ")
    phases = ""
    for slug, extra in (
        ("qualification", "    opens_at: 2024-01-01T00:00:00Z\n    rules: {max_submissions: 1}\n"),
        ("closed", "    opens_at: 2020-01-01T00:00:00Z\n    closes_at: 2020-02-01T00:00:00Z\n"),
    ):
        phases += (
            f"  - slug: {slug}\n    title: {slug.title()}\n    kind: algorithm\n"
            f"    test_dataset: test\n{extra}{body}\n"
        )
    path = tmp_path / "bundle.yaml"
    path.write_text(
        "version: 1\nslug: stoic\ntitle: STOIC-style\n"
        f"datasets:\n  - {{slug: test, path: data/test}}\nphases:\n{phases}"
    )
    return path


def _uploads(tmp_path: Path) -> int:
    """Uploads started, from the server's access log."""
    return (tmp_path / "server.log").read_text().count('"POST /api/v1/uploads HTTP')


def _one_line(proc: object) -> str:
    stderr: str = proc.stderr  # type: ignore[attr-defined]
    assert "Traceback" not in stderr and stderr.count("\n") == 1, stderr
    return stderr


def test_refusals_before_upload_cost_nothing(server: dict[str, str], tmp_path: Path) -> None:
    env = server
    admin = json.loads(run(env, "token", "create", "--user", "admin", "--admin", "--json").stdout)
    applied = run(
        env, "challenge", "apply", str(_bundle_two_phases(tmp_path)), token=admin["token"]
    )
    assert "challenge stoic: changed" in applied.stdout
    before = _uploads(tmp_path)  # the dataset's
    alice = json.loads(run(env, "token", "create", "--user", "alice", "--json").stdout)["token"]
    good = image_archive(tmp_path / "algo.tar", layer_bytes=200_000)

    def refused(*args: str) -> str:
        proc = run(env, "submit", "stoic", *args, token=alice, ok=False)
        assert proc.returncode == 2, proc.stdout + proc.stderr
        return _one_line(proc)

    typo = refused("qualifcation", "--image", str(good))
    assert "has no phase 'qualifcation'" in typo and "did you mean 'qualification'" in typo
    assert "submissions are not accepted" in refused("closed", "--image", str(good))
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text("FROM python:3.11\nUSER app\n")
    assert "not a readable tar archive" in refused("qualification", "--image", str(dockerfile))
    root = image_archive(tmp_path / "root.tar", user="root")
    assert "(root)" in refused("qualification", "--image", str(root))
    arm = image_archive(tmp_path / "arm.tar", arch="arm64")
    assert "linux/arm64" in refused("qualification", "--image", str(arm))
    assert _uploads(tmp_path) == before  # not a byte sent for any of them

    sub = json.loads(
        run(
            env, "submit", "stoic", "qualification", "--image", str(good), "--json", token=alice
        ).stdout
    )
    assert sub["status"] == "validating"
    quota = refused("qualification", "--image", str(good))
    assert "429" in quota and "max_submissions" in quota
    assert _uploads(tmp_path) == before + 1

    # The server's pre-check: the same rules, for any client.
    api = httpx.Client(
        base_url=env["HELDOUT_API_URL"] + "/api/v1", headers={"Authorization": f"Bearer {alice}"}
    )
    url = "/challenges/stoic/phases/qualification/submissions/precheck"
    root_cfg = {"os": "linux", "architecture": "amd64", "config": {"User": "0", "Cmd": ["x"]}}
    r = api.post(url, json={"kind": "algorithm", "image": root_cfg})
    assert r.status_code == 429 and r.json()["rule"] == "max_submissions"  # quota first
    bob = json.loads(run(env, "token", "create", "--user", "bob", "--json").stdout)["token"]
    api.headers["Authorization"] = f"Bearer {bob}"
    r = api.post(url, json={"kind": "algorithm", "image": root_cfg})
    assert r.status_code == 422 and r.json()["field"] == "image" and "root" in r.json()["detail"]
    r = api.post(url, json={"kind": "codebase"})
    assert r.status_code == 422 and r.json()["field"] == "kind"
    assert api.post(url, json={"kind": "algorithm"}).json() == {"ok": True}
    assert api.get("/challenges/stoic/teams/mine").status_code == 404  # no team was made

    # Browsing: challenges, phases with dates, rules with the team's usage, suggestions.
    assert "stoic" in run(env, "challenges", token=alice).stdout
    listed = run(env, "phases", "stoic", token=alice).stdout
    assert "qualification" in listed and "closed" in listed and "2020-02-01 00:00" in listed
    unknown = run(env, "phases", "stoc", token=alice, ok=False)
    assert unknown.returncode == 2 and "did you mean 'stoic'" in _one_line(unknown)
    rules = run(env, "rules", "stoic", "qualification", token=alice).stdout
    assert "opens 2024-01-01 00:00 UTC" in rules
    assert "your team: 1 of 1 used in the last 24 h" in rules

    # A cancelled submission exits 3, with and without following.
    run(env, "cancel", str(sub["id"]), token=alice)
    assert run(env, "status", str(sub["id"]), token=alice, ok=False).returncode == 3
    no_follow = run(env, "status", str(sub["id"]), "--no-follow", token=alice, ok=False)
    assert no_follow.returncode == 3 and "cancelled" in no_follow.stdout


def test_participant_apply_is_refused_before_uploading(
    server: dict[str, str],
    tmp_path: Path,
) -> None:
    env = server
    run(env, "token", "create", "--user", "admin", "--admin")  # the server's first user
    alice = json.loads(run(env, "token", "create", "--user", "alice", "--json").stdout)["token"]
    proc = run(env, "challenge", "apply", str(_bundle_two_phases(tmp_path)), token=alice, ok=False)
    assert proc.returncode == 2 and "only an administrator" in _one_line(proc)
    assert "uploading" not in proc.stderr and _uploads(tmp_path) == 0


def test_expected_errors_are_one_line(env: dict[str, str], tmp_path: Path) -> None:
    down = {**env, "HELDOUT_API_URL": f"http://127.0.0.1:{free_port()}"}
    proc = run(down, "challenge", "apply", str(_bundle_two_phases(tmp_path)), token="t", ok=False)
    assert proc.returncode == 1 and "cannot reach the heldout server" in _one_line(proc)
    proc = run(down, "submit", "s", "p", "--image", str(image_archive(tmp_path / "a.tar")),
               token="t", ok=False)  # fmt: skip
    assert proc.returncode == 1 and "cannot reach the heldout server" in _one_line(proc)
    proc = run(down, "submit", "s", "p", token="t", ok=False)
    assert proc.returncode == 2 and "--image" in _one_line(proc)

    # token create on a directory that holds no database: refused unless asked.
    fresh = {**env, "HELDOUT_DATA_DIR": str(tmp_path / "elsewhere")}
    proc = run(fresh, "token", "create", "--user", "x", ok=False)
    assert proc.returncode == 2 and "--create" in _one_line(proc)
    assert not (tmp_path / "elsewhere").exists()
    made = run(fresh, "token", "create", "--user", "x", "--create")
    assert f"data directory {tmp_path / 'elsewhere'}" in made.stderr


def test_embedded_redis_stops_with_the_server(env: dict[str, str], tmp_path: Path) -> None:
    need(shutil.which("redis-server") is not None, "redis-server")
    port = free_port()
    proc = subprocess.Popen(
        [*HELDOUT, "server", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_healthy(f"http://127.0.0.1:{port}", 60, "heldout server to answer")
        pid = int((Path(env["HELDOUT_DATA_DIR"]) / "redis.pid").read_text())
        os.kill(pid, 0)  # running
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()

    def gone() -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False

    wait_for(gone, 10, "the embedded redis-server to stop with the server")


def test_run_local_help_names_the_command(env: dict[str, str]) -> None:
    shown = run(env, "run-local", "--help").stdout
    assert "Usage: heldout run-local" in shown and "worker.local" not in shown
