"""The worker's preflight for real: a worker process that may not loop-mount (CAP_SYS_ADMIN
dropped from its bounding set) refuses to start with the operator's message; on this host,
as root, the check makes and removes a real size-capped directory."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from server.config import Settings
from tests.conftest import need
from tests.support.workers import ROOT
from worker.executor.sized_dir import mounts_under
from worker.preflight import check_worker

pytestmark = [pytest.mark.slow]


def _worker_argv() -> list[str]:
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "worker.celery_app",
        "worker",
        "-Q",
        "cpu",
        "-P",
        "threads",
        "-c",
        "1",
        "--without-gossip",
        "--without-mingle",
        "-n",
        f"preflight{os.getpid()}@test",
    ]


def test_worker_without_loop_mounts_refuses_to_start(tmp_path: Path) -> None:
    need(os.geteuid() == 0 and shutil.which("setpriv") is not None, "root and setpriv")
    env = {
        **os.environ,
        "HELDOUT_DATA_DIR": str(tmp_path),
        # Never reached: the worker stops before it connects to anything.
        "HELDOUT_REDIS_URL": "redis://127.0.0.1:1/0",
        "PYTHONPATH": str(ROOT),
    }
    env.pop("HELDOUT_ALLOW_UNSIZED_OUTPUT", None)
    proc = subprocess.Popen(
        ["setpriv", "--bounding-set", "-sys_admin", *_worker_argv()],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        pytest.fail(f"the worker started without a size-capped /output:\n{output[-2000:]}")
    assert proc.returncode != 0, output
    assert "heldout worker refuses to start" in output
    assert "cannot make a size-capped /output" in output
    assert "HELDOUT_ALLOW_UNSIZED_OUTPUT=true" in output
    assert mounts_under(tmp_path) == []


def test_preflight_passes_where_loop_mounts_work(tmp_path: Path) -> None:
    need(os.geteuid() == 0, "root (loop mounts)")
    check_worker(Settings(data_dir=tmp_path))
    assert mounts_under(tmp_path) == [] and list((tmp_path / "work").iterdir()) == []
