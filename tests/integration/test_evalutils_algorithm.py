"""A participant's algorithm written as STOIC2021's baseline is: evalutils 0.2.4 from PyPI
(with numpy<2) on Debian's python3.11 (heldout/python:bookworm), a non-root user, a
shell-form `ENTRYPOINT python -m process $0 $@`, cases named by DICOM UIDs. It is scored
through T2 (upload, validate, a sandboxed run per case, evaluation, leaderboard) and runs
through `heldout run-local --image ARCHIVE`, which leaves the participant's tag in place.

The wheels are downloaded on the host once (`pip download`, for CPython 3.11 manylinux) into
var/wheels-evalutils (or $HELDOUT_EVALUTILS_WHEELS) and installed in the image with
--no-index: the build itself needs no network. Fixture: tests/fixtures/evalutils_algorithm."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from heldout.client import Client
from tests.conftest import need
from tests.support import images
from tests.support.factories import apply_bundle, auth, stoic_bundle, user_token
from tests.support.workers import ROOT, celery_worker, wait_final

pytestmark = [pytest.mark.docker, pytest.mark.redis, pytest.mark.slow]

FIXTURE = ROOT / "tests" / "fixtures" / "evalutils_algorithm"
TAG = "heldout-test/evalutils-algorithm:pytest"
PYTHON_BASE = "heldout/python:bookworm"
WHEEL_ARGS = (
    "--only-binary=:all:",
    "--implementation",
    "cp",
    "--python-version",
    "3.11",
    "--platform",
    "manylinux_2_28_x86_64",
    "--platform",
    "manylinux_2_17_x86_64",
    "--platform",
    "manylinux2014_x86_64",
)
# Cases named as STOIC's are: DICOM UIDs; labels follow age, which the image reads.
PIP_DOWNLOAD = (sys.executable, "-m", "pip", "download", "--quiet")
UIDS = [f"1.2.840.113654.2.70.1.{97 + i}" for i in range(4)]
AGES = [35, 48, 61, 74]


def _wheels() -> Path:
    dest = Path(os.environ.get("HELDOUT_EVALUTILS_WHEELS", ROOT / "var" / "wheels-evalutils"))
    requirements = FIXTURE / "requirements.txt"
    stamp = hashlib.sha256(requirements.read_bytes() + repr(WHEEL_ARGS).encode()).hexdigest()
    done = dest / ".complete"
    if done.is_file() and done.read_text().strip() == stamp:
        return dest
    dest.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        [*PIP_DOWNLOAD, "-d", str(dest), *WHEEL_ARGS, "-r", str(requirements)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    need(proc.returncode == 0, f"PyPI for evalutils' wheels ({proc.stderr[-500:]})")
    done.write_text(stamp + "\n")
    return dest


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The fixture image, built from the wheels with no network, saved as `docker save`
    writes it."""
    client = images.client_or_none()
    need(client is not None, "a Docker engine")
    assert client is not None
    images.ensure_base_image(client)
    try:
        client.images.get(PYTHON_BASE)
    except images.docker.errors.ImageNotFound:
        subprocess.run(["bash", str(ROOT / "scripts" / "base-image.sh")], check=True)
    context = tmp_path_factory.mktemp("evalutils-context")
    for name in ("Dockerfile", "process.py"):
        shutil.copy(FIXTURE / name, context / name)
    (context / "wheels").mkdir()
    for wheel in _wheels().glob("*.whl"):
        try:
            os.link(wheel, context / "wheels" / wheel.name)
        except OSError:
            shutil.copy(wheel, context / "wheels" / wheel.name)
    client.images.build(path=str(context), tag=TAG, network_mode="none", rm=True, forcerm=True)
    config = client.images.get(TAG).attrs["Config"]
    assert config["User"] == "algorithm"
    assert config["Entrypoint"] == ["/bin/sh", "-c", "python -m process $0 $@"]
    yield images.save_image(client, [TAG], context / "algorithm.tar")


@pytest.fixture
def live(pg_live: Any) -> Any:
    # Slow (a 1 GB image, every case run): once, on PostgreSQL; the pipeline's database
    # paths are those of test_pipeline_t2.py, run on both.
    return pg_live


def _cases(root: Path) -> Path:
    pairs = enumerate(zip(UIDS, AGES, strict=True))
    rows = ((uid, age, int(i >= 1), int(i >= 2)) for i, (uid, age) in pairs)
    return images.write_ct_dataset(root, rows)


def test_evalutils_algorithm_is_scored_through_t2(
    live: Any,
    archive: Path,
    tmp_path: Path,
) -> None:
    settings, api, _ = live
    admin = user_token(settings, "admin", admin=True)
    r = apply_bundle(api, admin, stoic_bundle(), {"test": _cases(tmp_path / "test")})
    assert r.status_code == 200, r.text
    alice = user_token(settings, "alice")
    # The light client uploads the ~1 GB archive in chunks, as a participant's would.
    client = Client("http://testserver", alice, transport=api._transport)
    key = client.upload(archive)["key"]
    with celery_worker(settings):
        r = api.post(
            "/api/v1/challenges/stoic/phases/qualification/submissions",
            json={"upload": key},
            headers=auth(alice),
        )
        assert r.status_code == 201, r.text
        final = wait_final(api, alice, r.json()["id"], timeout=900)
    assert final["status"] == "succeeded", final
    board = api.get(
        "/api/v1/challenges/stoic/phases/qualification/leaderboard", headers=auth(alice)
    ).json()
    (entry,) = board["entries"]
    assert entry["metrics"]["auc-covid"]["value"] == pytest.approx(1.0)
    # What evalutils wrote to stderr on private cases stays held from the team.
    logs = client.submission_logs(final["id"])
    infer = [e for e in logs if e["kind"] == "infer"]
    assert len(infer) == len(UIDS) and all(e["held"] for e in infer)


def test_evalutils_algorithm_runs_through_run_local(archive: Path, tmp_path: Path) -> None:
    client = images.client_or_none()
    assert client is not None
    before = set(client.images.get(TAG).tags)
    bundle = tmp_path / "bundle.yaml"
    import yaml

    bundle.write_text(yaml.safe_dump(stoic_bundle(limits={"wall_time_s": 120})))
    cases = _cases(tmp_path / "mine")
    command = [sys.executable, "-m", "server.cli", "run-local", "--bundle", str(bundle)]
    command += ["--phase", "qualification", "--image", str(archive), "--cases", str(cases)]
    proc = subprocess.run(
        [*command, "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = json.loads(proc.stdout)
    assert out["status"] == "succeeded"
    assert sorted(out["cases"]) == sorted(UIDS)
    for uid, age in zip(UIDS, AGES, strict=True):
        case = out["cases"][uid]
        assert float(case["outputs"]["probability-covid-19"]) == pytest.approx(age / 100)
        assert "read " in case["stderr"] and "size (8, 8, 4)" in case["stderr"]
    # The participant's own tag of the loaded image is still there; run-local's is gone.
    after = client.images.get(TAG).tags
    assert before <= set(after) and not [t for t in after if t.startswith("heldout/local-")]
