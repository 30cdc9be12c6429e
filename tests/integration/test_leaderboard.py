"""Several teams scored through the worker and the evaluation container (batch mode), the
leaderboard and its statistics read through the API, then a metric change re-scores every
submission once without re-running any algorithm."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient

from server.app import create_app
from server.config import Settings
from server.db import session_scope
from server.jobs import repository as jobs_repo
from tests.conftest import ON_POSTGRES, REDIS_URL, need
from tests.support import images
from tests.support.factories import apply_bundle, auth, stoic_bundle, upload_bytes, user_token
from tests.support.workers import celery_worker, wait_for

pytestmark = [pytest.mark.docker, pytest.mark.redis, pytest.mark.slow]
N = 30

# covid = f(age) for each team; severity as given.
PREDICTORS = {
    "good": ("min(age / 100, 1.0)", "min(age / 100, 1.0)"),
    "close": ("min((age + (age % 7)) / 110, 1.0)", "0.5"),
    "reversed": ("max(1 - age / 100, 0.0)", "0.5"),
}


def _dataset(root: Path) -> Path:
    def case(i: int) -> tuple[str, int, int, int]:
        age = 20 + 2 * i
        covid = int(age + (i % 5) * 6 >= 50)
        return f"P{i:03d}", age, covid, int(covid and age >= 60)

    return images.write_ct_dataset(root, map(case, range(N)))


def _script(covid: str, severe: str) -> str:
    return images.WELL_BEHAVED.replace(
        "json.dump(min(age / 100, 1.0), f)", f"json.dump({covid}, f)"
    ).replace("json.dump(0.25, f)", f"json.dump({severe}, f)")


@pytest.fixture
def live(settings: Settings) -> Any:
    need(REDIS_URL is not None, "Redis (HELDOUT_TEST_REDIS_URL)")
    client = images.client_or_none()
    need(client is not None, "a Docker engine")
    settings = settings.model_copy(update={"heartbeat_s": 1})
    redis.Redis.from_url(settings.broker_url).flushdb()
    with TestClient(create_app(settings)) as api:
        yield settings, api, client


@ON_POSTGRES
def test_ranked_with_statistics_and_rescored(live: Any, tmp_path: Path) -> None:
    settings, api, client = live
    admin = user_token(settings, "admin", admin=True)
    bundle = stoic_bundle(extra_phase={"batch_mode": True})
    ds = _dataset(tmp_path / "test")
    assert apply_bundle(api, admin, bundle, {"test": ds}).status_code == 200
    ids: dict[str, int] = {}
    tokens = {team: user_token(settings, team) for team in PREDICTORS}
    with celery_worker(settings):
        for team, (covid, severe) in PREDICTORS.items():
            tag = images.build_image(client, f"lb-{team}", _script(covid, severe))
            archive = images.save_image(client, [tag], tmp_path / f"{team}.tar")
            key = upload_bytes(api, tokens[team], archive.read_bytes(), archive.name)
            r = api.post(
                "/api/v1/challenges/stoic/phases/qualification/submissions",
                json={"upload": key},
                headers=auth(tokens[team]),
            )
            assert r.status_code == 201, r.text
            ids[team] = r.json()["id"]

        def all_done() -> bool:
            subs = api.get(
                "/api/v1/challenges/stoic/phases/qualification/submissions", headers=auth(admin)
            ).json()
            return len(subs) == 3 and all(s["status"] == "succeeded" for s in subs)

        wait_for(all_done, 300, "three scored submissions")
        board = api.get(
            "/api/v1/challenges/stoic/phases/qualification/leaderboard",
            headers=auth(tokens["good"]),
        ).json()
        assert board["entries"][0]["team"] == "good"
        assert board["entries"][-1]["team"] == "reversed"
        for e in board["entries"]:
            lo, hi = e["ci"]
            assert lo <= e["value"] <= hi
            assert e["bootstrap"] == {"resamples": 1000, "seed": 20211}
            assert "predictions" not in e and "case" not in e
        assert board["entries"][0]["rank"] == 1
        ranks = [e["rank"] for e in board["entries"]]
        assert ranks == sorted(ranks)
        ensemble = board["ensemble"]
        assert ensemble is not None and sorted(ensemble["teams"]) == sorted(PREDICTORS)
        assert ensemble["ci"][0] <= ensemble["value"] <= ensemble["ci"][1]

        stats = api.get(
            "/api/v1/challenges/stoic/phases/qualification/leaderboard/statistics",
            headers=auth(tokens["good"]),
        ).json()
        p = stats["p_values"]
        assert len(p) == 3 and all(p[i][i] == pytest.approx(1.0) for i in range(3))
        assert all(p[i][j] == pytest.approx(p[j][i]) for i in range(3) for j in range(3))
        roc = stats["roc"][str(ids["good"])]
        assert {"fpr", "tpr", "tpr_lower", "tpr_upper"} <= set(roc)
        assert (
            "P000"
            not in api.get(
                "/api/v1/challenges/stoic/phases/qualification/leaderboard/statistics",
                headers=auth(tokens["good"]),
            ).text
        )

        # The organizer switches the primary metric: every submission is re-scored once.
        bundle["phases"][0]["metrics"]["primary"] = "auc-covid"
        r = apply_bundle(api, admin, bundle)
        assert sorted(r.json()["rescored"]) == sorted(ids.values())
        wait_for(all_done, 300, "re-scoring")
        board2 = api.get(
            "/api/v1/challenges/stoic/phases/qualification/leaderboard", headers=auth(admin)
        ).json()
    assert board2["primary_metric"] == "auc-covid" and board2["metrics_version"] == 2
    assert board2["entries"][0]["value"] == pytest.approx(
        board["entries"][0]["metrics"]["auc-covid"]["value"]
    )
    with session_scope(settings) as session:
        for sid in ids.values():
            assert len(jobs_repo.for_submission(session, sid, "infer")) == 1  # batch, not re-run
            assert len(jobs_repo.for_submission(session, sid, "evaluate")) == 2
    # Applying the same bundle again re-scores nothing.
    assert apply_bundle(api, admin, bundle).json()["rescored"] == []
