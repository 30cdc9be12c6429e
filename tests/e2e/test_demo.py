"""The README's main command, shrunk: `heldout demo` with a handful of tiny cases runs the
T2 and T3 submissions of the baseline end to end and prints both leaderboards."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import need
from tests.support import images
from tests.support.workers import ROOT

pytestmark = [pytest.mark.docker, pytest.mark.slow]


def test_demo_runs_end_to_end(tmp_path: Path) -> None:
    need(images.client_or_none() is not None, "a Docker engine")
    env = {k: v for k, v in os.environ.items() if not k.startswith("HELDOUT_")}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "server.cli",
            "demo",
            "--dir",
            str(tmp_path / "demo"),
            "--public-train",
            "16",
            "--private-train",
            "16",
            "--test",
            "10",
            "--size",
            "24",
            "--cube",
            "16",
            "--epochs",
            "2",
            "--timeout",
            "900",
        ],
        cwd=ROOT,
        env={**env, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=1500,
        stdin=subprocess.DEVNULL,
    )
    out = proc.stdout
    assert proc.returncode == 0, out[-4000:] + proc.stderr[-4000:]
    for phase in ("qualification", "final"):
        assert f"stoic-demo / {phase}" in out
    assert "qualification succeeded" in out and "final         succeeded" in out
    assert "95% CI" in out and "demo finished" in out
    assert f"report: {tmp_path / 'demo' / 'report' / 'report.html'}" in out
    assert (tmp_path / "demo" / "report" / "report.pdf").stat().st_size > 0
