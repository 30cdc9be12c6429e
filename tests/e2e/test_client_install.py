"""`pip install heldout` alone (no extras) in a fresh venv: the client and CLI, without the
server's dependencies, submit to a server of the full install and follow to the score.

Runs once (it takes no per-database fixture); the wheelhouse of the client's few
dependencies is downloaded once per machine, then the install is offline (`--no-index`)."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import need
from tests.support import images
from tests.support.cli import HELDOUT, run
from tests.support.factories import STOIC_PHASE, stoic_cases, write_dataset
from tests.support.workers import ROOT, wait_for

pytestmark = [pytest.mark.docker, pytest.mark.slow]

WHEELHOUSE = Path(tempfile.gettempdir()) / "heldout-client-wheels"
CLIENT_DEPS = ["httpx", "typer", "rich", "pyyaml", "setuptools>=68", "wheel"]
SERVER_ONLY = ("fastapi", "celery", "sqlalchemy", "docker", "scipy")
ANSI = re.compile(r"\x1b\[[0-9;?]*[a-zA-Z]")


def _wheelhouse() -> Path:
    if not any(WHEELHOUSE.glob("typer-*.whl")):
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "-d", str(WHEELHOUSE), *CLIENT_DEPS],
            check=True,
            timeout=300,
        )
    return WHEELHOUSE


@pytest.fixture(scope="module")
def light_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv with `pip install <this tree>` and nothing else."""
    base = tmp_path_factory.mktemp("light")
    src = base / "src"
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"],
        cwd=ROOT, check=True, capture_output=True, text=True,
    ).stdout.split()  # fmt: skip
    for name in files:
        if (ROOT / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, src / name)
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    subprocess.run(
        [str(venv / "bin/pip"), "install", "-q", "--no-index", "--find-links",
         str(_wheelhouse()), str(src)],
        check=True, timeout=600, env={**os.environ, "PIP_CONFIG_FILE": os.devnull},
    )  # fmt: skip
    return venv


def _bundle(tmp_path: Path) -> Path:
    write_dataset(tmp_path / "data" / "test", stoic_cases())
    primary = "  primary: auc-severity"
    phase = STOIC_PHASE.replace(primary, f"{primary}\n  ci_level: 0.9")  # not the default
    text = (
        "version: 1\nslug: stoic\ntitle: STOIC-style\n"
        "datasets:\n  - {slug: test, path: data/test}\n"
        "phases:\n  - slug: qualification\n    title: Qualification\n    kind: algorithm\n"
        f"    test_dataset: test\n    limits: {{wall_time_s: 120}}\n"
        f"{textwrap.indent(phase.strip(), '    ')}\n"
    )
    path = tmp_path / "bundle.yaml"
    path.write_text(text)
    return path


@pytest.fixture
def worker(server: dict[str, str], tmp_path: Path) -> Iterator[dict[str, str]]:
    """`heldout worker` of the full install, on the server's embedded Redis."""
    log = (tmp_path / "worker.log").open("wb")
    proc = subprocess.Popen(
        [*HELDOUT, "worker", "--concurrency", "2"],
        env={**server, "HELDOUT_HEARTBEAT_S": "1"},
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        yield server
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=60)


def _in_pty(cmd: list[str], env: dict[str, str], timeout: float) -> tuple[int, str]:
    """Run cmd on a terminal (as a participant would) and return its exit code and text."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(cmd, env=env, stdin=slave, stdout=slave, stderr=slave)
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not data:
                    break
                chunks.append(data)
            elif proc.poll() is not None:
                break
        else:
            proc.kill()
    finally:
        os.close(master)
    code = proc.wait(timeout=30)
    return code, ANSI.sub("", b"".join(chunks).decode(errors="replace")).replace("\r", "")


def test_light_client_submits_and_follows_to_the_score(
    light_venv: Path, worker: dict[str, str], tmp_path: Path
) -> None:
    docker_client = images.client_or_none()
    need(docker_client is not None, "a Docker engine")
    assert docker_client is not None
    py = str(light_venv / "bin/python")
    light_env = {
        "PATH": f"{light_venv / 'bin'}:/usr/bin:/bin",
        "HOME": str(tmp_path),
        "HELDOUT_API_URL": worker["HELDOUT_API_URL"],
        "COLUMNS": "160",
        "TERM": "xterm",
    }

    # The light install: none of the server's packages, and the client imports none.
    probe = (
        "import importlib.util, sys; import heldout; from heldout import Client; "
        f"print(json.dumps([[m for m in {SERVER_ONLY!r} if m in sys.modules], "
        f"[m for m in {SERVER_ONLY!r} if importlib.util.find_spec(m)]]))"
    )
    shown = subprocess.run(
        [py, "-c", "import json; " + probe], env=light_env, capture_output=True, text=True,
        check=True, cwd=tmp_path,
    ).stdout  # fmt: skip
    assert json.loads(shown) == [[], []]
    cli = str(light_venv / "bin/heldout")
    server_cmd = subprocess.run(
        [cli, "server"], env=light_env, capture_output=True, text=True, cwd=tmp_path
    )
    assert server_cmd.returncode == 2 and "pip install 'heldout[server]'" in server_cmd.stderr
    assert "Traceback" not in server_cmd.stderr

    admin = run(worker, "token", "create", "--user", "admin", "--admin", "--json").stdout
    run(worker, "challenge", "apply", str(_bundle(tmp_path)), token=json.loads(admin)["token"])
    alice = json.loads(run(worker, "token", "create", "--user", "alice", "--json").stdout)["token"]
    tag = images.build_image(docker_client, "cli-light-client", images.WELL_BEHAVED)
    archive = images.save_image(docker_client, [tag], tmp_path / "algo.tar")

    env = {**light_env, "HELDOUT_TOKEN": alice}
    submitted = subprocess.run(
        [cli, "submit", "stoic", "qualification", "--image", str(archive), "--json"],
        env=env, capture_output=True, text=True, cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert submitted.returncode == 0, submitted.stderr
    sub_id = json.loads(submitted.stdout)["id"]

    # Let a step or two pass first, so that follow mode has steps to time.
    api = f"{worker['HELDOUT_API_URL']}/api/v1/submissions/{sub_id}"
    wait_for(
        lambda: (
            httpx.get(api, headers={"Authorization": f"Bearer {alice}"}).json()["status"]
            != "validating"
        ),
        180,
        "the submission to pass validation",
    )
    code, text = _in_pty([cli, "status", str(sub_id)], env, timeout=400)
    assert code == 0, text
    (tmp_path / "follow.txt").write_text(text)
    assert re.search(r"\[validating took \d+s\]", text), text
    assert re.search(r"\[(inferring|evaluating) took \d+(m\d\d)?s\]", text), text
    done = [line for line in text.splitlines() if line.startswith("done in ")]
    assert len(done) == 1, text
    assert "auc-severity" in done[0] and "(90% CI [" in done[0] and "rank 1" in done[0]
    assert not any(line.strip() == "succeeded" for line in text.splitlines())  # said once

    # The typed API from the light install gives the same score.
    script = (
        "import json, os; from heldout import Client; "
        "c = Client(os.environ['HELDOUT_API_URL'], os.environ['HELDOUT_TOKEN']); "
        f"s = c.wait({sub_id}); print(json.dumps([s['status'], c.score(s)['ci_level']]))"
    )
    api_out = subprocess.run(
        [py, "-c", script], env=env, capture_output=True, text=True, check=True, cwd=tmp_path
    ).stdout
    assert json.loads(api_out) == ["succeeded", 0.9]
    board = subprocess.run(
        [cli, "leaderboard", "stoic", "qualification"], env=env, capture_output=True, text=True,
        cwd=tmp_path,
    ).stdout  # fmt: skip
    assert "90% CI" in board and "95% CI" not in board

    # A failed submission: `submit --follow` ends with exit code 1 and the classified reason.
    broken = images.build_image(docker_client, "cli-light-broken", "raise SystemExit(3)\n")
    bad = images.save_image(docker_client, [broken], tmp_path / "broken.tar")
    code, text = _in_pty(
        [cli, "submit", "stoic", "qualification", "--image", str(bad), "--follow"], env, 300
    )
    assert code == 1, text
    assert re.search(r"^failed in \d+s: cases_failed: ", text, re.MULTILINE), text
