"""T3: the participant's inference build never sees the trained artifacts (and so never the
private training data a training run may copy into /output), and what a team is told after
training on private data carries no text its code chose.

Real engine, real git daemon on 127.0.0.1, real worker (see test_pipeline_t3.py)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.integration.test_pipeline_t3 import (  # noqa: F401  (live is a fixture)
    DOCKERFILE,
    _jobs,
    _setup,
    _submit,
    codebase,
    live,
)
from tests.support.factories import auth
from tests.support.workers import celery_worker, wait_final

pytestmark = [pytest.mark.docker, pytest.mark.redis, pytest.mark.slow]

# Training copies everything it was given (private images and labels) into /output.
COPY_INPUT = "import shutil; shutil.copytree('/input', '/output/input', dirs_exist_ok=True)"
# A RUN step after the artifacts' COPY says what it could see, in the build log (the
# participant's to read): interfaces, artifacts, data. The image itself is gone once the
# submission is over (worker.images), so the log is where the team would look too.
PROBE = (
    "RUN echo \"SEEN net $(ls /sys/class/net | tr '\\n' ' ')\""
    " && echo \"SEEN netdev $(tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' | tr '\\n' ' ')\""
    " && echo \"SEEN artifact $(cd /opt/artifact && find . -mindepth 1 | sort | tr '\\n' ' ')\""
    " && echo \"SEEN data $(find / -xdev \\( -name '*.mha' -o -name reference.csv"
    " -o -name model.json \\) -not -path '/proc/*' | sort | tr '\\n' ' ')\""
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


def _seen(log: str) -> dict[str, list[str]]:
    """What the probing RUN step printed, by topic (the last build of it counts)."""
    seen: dict[str, list[str]] = {}
    for line in log.splitlines():
        if line.startswith("SEEN "):
            _, topic, *items = line.split()
            seen[topic] = items
    return seen


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

    build = _jobs(api, alice, final["id"])["build"]
    log = api.get(f"/api/v1/jobs/{build['id']}/logs", headers=auth(alice)).json()["log"]
    seen = _seen(log)
    assert {"net", "netdev", "artifact", "data"} <= set(seen), log[-3000:]
    leaked = [p for p in seen["artifact"] if not p.startswith("./.heldout")]
    assert leaked == [], f"the RUN step saw trained artifacts: {leaked[:5]}"
    assert seen["data"] == [], f"the RUN step saw training data: {seen['data'][:5]}"
    if build_network == "none":
        assert seen["net"] == ["lo"] and seen["netdev"] == ["lo"], seen
    # The trained artifacts still land where the inference Dockerfile copies artifact/ to:
    # the inference reads /opt/artifact/model.json for its threshold and scored AUC 1.0.
    board = api.get("/api/v1/challenges/stoic/phases/final/leaderboard", headers=auth(alice))
    assert board.json()["entries"][0]["metrics"]["auc-covid"]["value"] == pytest.approx(1.0)


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
