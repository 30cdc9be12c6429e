"""The `heldout server` process the CLI tests talk to: the embedded default set-up, SQLite
in the data directory and a redis-server the CLI starts itself."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import need
from tests.support.cli import HELDOUT
from tests.support.workers import ROOT, free_port, wait_healthy


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith("HELDOUT_")}
    e.update(HELDOUT_DATA_DIR=str(tmp_path / "d"), PYTHONPATH=str(ROOT))
    return e


@pytest.fixture
def server(env: dict[str, str], tmp_path: Path) -> Iterator[dict[str, str]]:
    need(shutil.which("redis-server") is not None, "redis-server")
    port = free_port()
    env = {**env, "HELDOUT_API_URL": f"http://127.0.0.1:{port}"}
    log = (tmp_path / "server.log").open("wb")
    proc = subprocess.Popen(
        [*HELDOUT, "server", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )

    try:
        wait_healthy(env["HELDOUT_API_URL"], 60, "heldout server to answer")
        yield env
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        pid = Path(env["HELDOUT_DATA_DIR"]) / "redis.pid"
        if pid.exists():  # the server stops its embedded Redis; this is in case it did not
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid.read_text()), 15)
