"""A server worker imports only what serving needs: SimpleITK (about 100 MB) and matplotlib
(about 30 MB) load where a dataset is converted or a report drawn, so that a worker stays
under 300 MB (issue #13; bench/bench_leaderboard.py prints the RSS of each)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def test_the_app_loads_no_image_or_plotting_library() -> None:
    code = (
        "import json, sys; from server.app import create_app; create_app(); "
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    loaded = set(json.loads(out.stdout.splitlines()[-1]))
    assert not loaded & {"SimpleITK", "matplotlib", "PIL", "torch", "sklearn"}, sorted(loaded)
