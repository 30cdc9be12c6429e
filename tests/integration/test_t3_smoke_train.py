"""T3: the training image runs first on the phase's public canary cases (a smoke-train),
before any training on private data. A failure there is free and told in detail (the data
is public), and private training never starts.

Real engine, real git daemon on 127.0.0.1, real worker (see test_pipeline_t3.py)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.integration.test_pipeline_t3 import (  # noqa: F401  (live is a fixture)
    _bundle,
    _dataset,
    _submit,
    codebase,
    live,
)
from tests.support.factories import apply_bundle, auth, user_token
from tests.support.workers import celery_worker, wait_final

pytestmark = [pytest.mark.docker, pytest.mark.redis, pytest.mark.slow]

# Training fails only on the canary's patients (P2xx): on the private training set (P0xx)
# it would succeed, and so would the trained algorithm on the canary.
PICKY = (
    "if rows[0]['PatientID'].startswith('P2'):\n"
    "    print('smoke telling line', rows[0]['PatientID'], flush=True); sys.exit(1)"
)


def _setup(live: Any, files: dict[str, str]) -> tuple[str, str]:  # noqa: F811
    settings, api, factory, daemon, admin, tmp = live
    bundle = _bundle(canary_dataset="canary")
    bundle["datasets"].append({"slug": "canary", "path": "canary", "public": True})
    ds = {
        "test": _dataset(tmp / "test", 100),
        "train": _dataset(tmp / "train", 0),
        "canary": _dataset(tmp / "canary", 200),
    }
    r = apply_bundle(api, admin, bundle, ds)
    assert r.status_code == 200, r.text
    repo = factory.create("team")
    repo.commit(files, "solution")
    repo.tag("v1")
    return daemon.url("team"), user_token(settings, "alice")


def _job_list(api: Any, token: str, sid: int) -> list[dict[str, Any]]:
    return list(api.get(f"/api/v1/submissions/{sid}/jobs", headers=auth(token)).json())


def test_training_failing_on_public_canary_is_free_and_private_training_never_runs(
    live: Any,  # noqa: F811
) -> None:
    settings, api, _, _, admin, _ = live
    url, alice = _setup(live, codebase(network=PICKY))
    with celery_worker(settings):
        final = wait_final(api, alice, _submit(api, alice, url)["id"], timeout=400)
    kinds = [j["kind"] for j in _job_list(api, admin, final["id"])]
    assert "train" not in kinds, kinds  # no job ever trained on the private data
    assert final["status"] == "failed", final
    assert final["failure_code"].startswith("canary:"), final
    assert final["charged"] is False, final
    assert "does not count against your team's limits" in final["failure_message"]
    assert [t["to_status"] for t in final["transitions"]][-2:] == ["building", "failed"]
    assert kinds == ["validate", "build", "smoke_train"], kinds
    # The smoke run saw public data only: its log is the participant's.
    smoke = next(j for j in _job_list(api, alice, final["id"]) if j["kind"] == "smoke_train")
    log = api.get(f"/api/v1/jobs/{smoke['id']}/logs", headers=auth(alice))
    assert log.status_code == 200 and "smoke telling line P200" in log.json()["log"], log.text


def test_training_with_empty_output_on_public_canary_fails_free(live: Any) -> None:  # noqa: F811
    settings, api, _, _, admin, _ = live
    files = codebase(network="import sys; sys.exit(0)")  # exits 0, writes nothing
    url, alice = _setup(live, files)
    with celery_worker(settings):
        final = wait_final(api, alice, _submit(api, alice, url)["id"], timeout=400)
    kinds = [j["kind"] for j in _job_list(api, admin, final["id"])]
    assert "train" not in kinds, kinds
    assert final["status"] == "failed" and final["failure_code"].startswith("canary:"), final
    assert final["charged"] is False
    assert "/output" in final["failure_message"], final["failure_message"]


def test_good_codebase_smoke_trains_then_trains_and_scores(live: Any) -> None:  # noqa: F811
    settings, api, _, _, admin, _ = live
    url, alice = _setup(live, codebase())
    with celery_worker(settings):
        final = wait_final(api, alice, _submit(api, alice, url)["id"], timeout=400)
    assert final["status"] == "succeeded", final
    kinds = [j["kind"] for j in _job_list(api, admin, final["id"])]
    assert kinds.index("smoke_train") < kinds.index("train"), kinds
    assert [t["to_status"] for t in final["transitions"]] == [
        "received",
        "validating",
        "queued",
        "building",
        "training",
        "inferring",
        "evaluating",
        "succeeded",
    ]
