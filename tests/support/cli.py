"""Running the `heldout` command line as a participant would: a subprocess of this
environment's Python, its output captured."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

HELDOUT = [sys.executable, "-m", "heldout"]


def run(env: dict[str, str], *args: str, token: str | None = None, ok: bool = True) -> Any:
    e = dict(env)
    if token:
        e["HELDOUT_TOKEN"] = token
    proc = subprocess.run(
        [*HELDOUT, *args],
        env=e,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    if ok:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc
