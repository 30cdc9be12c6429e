"""T3: the participant's inference build never sees the trained artifacts (and so never the
private training data a training run may copy into /output), and what a team is told after
training on private data carries no text its code chose.

Real engine, real git daemon on 127.0.0.1, real worker (see test_pipeline_t3.py)."""

from __future__ import annotations

import io
import tarfile
from typing import Any

import pytest

from server.db import session_scope
from server.submissions.models import Submission
from tests.integration.test_pipeline_t3 import (  # noqa: F401  (live is a fixture)
    DOCKERFILE,
    _jobs,
    _setup,
    _submit,
    codebase,
    live,
)
from tests.support import images
from tests.support.factories import auth
from tests.support.workers import celery_worker, wait_final

pytestmark = [pytest.mark.docker, pytest.mark.redis, pytest.mark.slow]

# Training copies everything it was given (private images and labels) into /output.
COPY_INPUT = "import shutil; shutil.copytree('/input', '/output/input', dirs_exist_ok=True)"
# A RUN step after the artifacts' COPY records what it could see: interfaces, artifacts, data.
PROBE = (
    "RUN mkdir -p /opt/seen && ls /sys/class/net > /opt/seen/net.txt"
    " && tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' > /opt/seen/netdev.txt"
    " && (cd /opt/artifact && find . -mindepth 1 | sort) > /opt/seen/artifact.txt"
    " && (find / -xdev \\( -name '*.mha' -o -name reference.csv -o -name model.json \\)"
    " -not -path '/proc/*' | sort) > /opt/seen/data.txt"
)


AFTER_TRAINING = (
    "The trained artifacts could not be added to the inference image. What went wrong is "
    "in the training job's log, held until the organizers review it."
)


def _probing_codebase() -> dict[str, str]:
    files = codebase(network=COPY_INPUT)
    files["inference/Dockerfile"] = DOCKERFILE.format(
        copy=f"COPY artifact/ /opt/artifact/\n{PROBE}\nCOPY process.py /opt/process.py",
        script="process.py",
    )
    return files


def _read(image: str, path: str) -> dict[str, str]:
    """The files under `path` in `image`, read from a created (never started) container."""
    client = images.client_or_none()
    assert client is not None
    container = client.containers.create(image, network_mode="none")
    try:
        stream, _ = container.get_archive(path)
        with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
            return {
                m.name: tar.extractfile(m).read().decode()  # type: ignore[union-attr]
                for m in tar.getmembers()
                if m.isfile()
            }
    finally:
        container.remove(force=True)


@pytest.mark.parametrize("build_network", [None, "none"])
def test_inference_build_steps_see_no_artifacts_or_training_data(
    live: Any,  # noqa: F811
    build_network: str | None,
) -> None:
    settings, api, *_ = live
    env = {"HELDOUT_BUILD_NETWORK": build_network} if build_network else {}
    url, alice = _setup(live, _probing_codebase())
    with celery_worker(settings, **env):
        final = wait_final(api, alice, _submit(api, alice, url)["id"], timeout=400)
    assert final["status"] == "succeeded", final

    with session_scope(settings) as session:
        sub = session.get(Submission, final["id"])
        assert sub is not None and sub.image_id
        image = sub.image_id
    seen = {k.rsplit("/", 1)[-1]: v for k, v in _read(image, "/opt/seen").items()}
    leaked = [ln for ln in seen["artifact.txt"].splitlines() if not ln.startswith("./.heldout")]
    assert leaked == [], f"the RUN step saw trained artifacts: {leaked[:5]}"
    assert seen["data.txt"].split() == [], f"the RUN step saw training data: {seen['data.txt']}"
    if build_network == "none":
        assert seen["net.txt"].split() == ["lo"] and seen["netdev.txt"].split() == ["lo"]
    # The trained artifacts still land where the inference Dockerfile copies artifact/ to.
    shipped = _read(image, "/opt/artifact")
    assert "artifact/model.json" in shipped and "artifact/input/metadata/reference.csv" in shipped


def test_failure_after_training_has_fixed_wording(live: Any) -> None:  # noqa: F811
    settings, api, _, _, admin, _ = live
    # The images fit the cap without the trained artifacts, not with them: the step after
    # training fails. Its message must not depend on the artifacts (their size is theirs to
    # choose, from the private data) nor carry what the training printed.
    big = (
        "open('/output/weights.bin', 'wb').write(os.urandom(60_000_000))\n"
        "print('telling line', rows[0]['PatientID'], flush=True)"
    )
    url, alice = _setup(live, codebase(network=big))
    with celery_worker(settings, HELDOUT_MAX_IMAGE_BYTES="200000000"):
        final = wait_final(api, alice, _submit(api, alice, url)["id"], timeout=400)
    assert final["status"] == "failed", final
    assert final["failure_message"] == AFTER_TRAINING, final["failure_message"]
    assert final["charged"] is True
    jobs = _jobs(api, admin, final["id"])
    assert jobs["train"]["logs_held"] is True
    for path in (f"/api/v1/submissions/{final['id']}", f"/api/v1/submissions/{final['id']}/jobs"):
        text = api.get(path, headers=auth(alice)).text
        assert "P00" not in text and "telling" not in text and "MB" not in text, path


def test_canary_failure_after_private_training_is_charged(live: Any) -> None:  # noqa: F811
    settings, api, *_ = live
    files = codebase()
    files["inference/process.py"] = "print('canary telling line'); raise SystemExit(3)\n"
    url, alice = _setup(live, files, canary_dataset="train")
    with celery_worker(settings):
        final = wait_final(api, alice, _submit(api, alice, url)["id"], timeout=400)
    assert final["status"] == "failed" and final["failure_code"].startswith("canary:"), final
    assert final["charged"] is True
    assert "telling" not in final["failure_message"]
    assert "counts against your team's limits" in final["failure_message"]
