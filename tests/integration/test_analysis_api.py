"""The challenge analysis and its report through the API, on SQLite and PostgreSQL: three
teams scored on two phases (tasks) through the worker's recording path and the real
evaluation program; organizers get rank uncertainty, robustness, the significance map, the
consensus and the report; a participant gets 403 and never another team's numbers."""

from __future__ import annotations

import copy
import io
import zipfile
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from server.config import Settings
from tests.conftest import ON_SQLITE
from tests.support.factories import (
    apply_bundle,
    auth,
    stoic_bundle,
    submit_blob,
    user_token,
    write_dataset,
)
from tests.support.scoring import score

ANALYSIS = "/api/v1/challenges/{slug}/analysis"
BENDS = {"alpha": 0.0, "beta": 0.3, "gamma": 0.9}


def _cases(n: int = 24) -> dict[str, dict[str, Any]]:
    return {f"P{i:03d}": {"probCOVID": int(i % 2 == 0), "probSevere": int(i % 4 == 0)}
            for i in range(n)}  # fmt: skip


def _outputs(cases: dict[str, dict[str, Any]], bend: float) -> dict[str, Any]:
    return {
        c: {
            "probability-covid-19": round(
                0.2 + 0.6 * v["probCOVID"] * (1 - bend / 2) + bend * ((i * 3) % 5) / 10, 3
            ),
            "probability-severe-covid-19": round(
                min(1.0, 0.1 + 0.5 * v["probSevere"] + bend * ((i * 5) % 7) / 10), 3
            ),
        }
        for i, (c, v) in enumerate(cases.items())
    }


def _challenge(api: TestClient, settings: Settings, root: Path) -> tuple[str, dict[str, str]]:
    bundle = stoic_bundle("twotask")
    second = copy.deepcopy(bundle["phases"][0])
    second.update(slug="covid", title="COVID")
    second["metrics"]["primary"] = "auc-covid"
    bundle["phases"].append(second)
    admin = user_token(settings, "admin", admin=True)
    cases = _cases()
    r = apply_bundle(api, admin, bundle, {"test": write_dataset(root / "test", cases)})
    assert r.status_code == 200, r.text
    tokens = {team: user_token(settings, team) for team in BENDS}
    for phase in ("qualification", "covid"):
        for team, bend in BENDS.items():
            sub = submit_blob(api, tokens[team], challenge="twotask", phase=phase)
            assert sub.status_code == 201, sub.text
            score(settings, int(sub.json()["id"]), _outputs(cases, bend), root / phase / team)
    return admin, tokens


@ON_SQLITE
def test_analysis_and_report_are_for_organizers_only(
    api: TestClient, settings: Settings, tmp_path: Path
) -> None:
    admin, tokens = _challenge(api, settings, tmp_path)
    r = api.get(ANALYSIS.format(slug="twotask"), headers=auth(admin))
    assert r.status_code == 200, r.text
    body = r.json()
    assert [p["phase"] for p in body["phases"]] == ["qualification", "covid"]
    for phase in body["phases"]:
        assert phase["reason"] is None, phase["reason"]
        teams = phase["teams"]
        assert sorted(t["team"] for t in teams) == sorted(BENDS)
        for t in teams:
            assert abs(sum(t["rank_distribution"]) - 1.0) < 1e-9
            lo, hi = t["rank_interval"]
            assert 1 <= lo <= t["median_rank"] <= hi <= 3
        assert phase["significance"]["test"] == "delong"
        assert len(phase["significance"]["significant"]) == 3
        schemes = phase["ranking"]["schemes"]
        assert schemes["aggregate-then-rank"]["kendall_tau_vs_official"] == 1.0
        assert "no per-case scores" in schemes["rank-then-aggregate"]["reason"]
        assert phase["bootstrap"]["resamples"] == 1000
        assert phase["data"]["scored"]["cases"] > 0
    covid = body["phases"][1]
    assert covid["teams"][0]["team"] == "alpha"
    consensus = body["consensus"]
    assert consensus is not None and len(consensus["teams"]) == 3
    assert consensus["teams"][0]["team"] == "alpha"
    assert "P000" not in r.text

    report = api.get(ANALYSIS.format(slug="twotask") + "/report", headers=auth(admin))
    assert report.status_code == 200, report.text
    assert report.headers["content-type"] == "application/zip"
    names = zipfile.ZipFile(io.BytesIO(report.content)).namelist()
    assert {"report.html", "report.pdf", "analysis.json"} <= set(names)
    assert "figures/qualification-blob.svg" in names and "figures/covid-roc.png" in names
    assert "data/covid-significance.csv" in names and "data/consensus.csv" in names
    again = api.get(ANALYSIS.format(slug="twotask") + "/report", headers=auth(admin))
    first, second = (zipfile.ZipFile(io.BytesIO(x.content)) for x in (report, again))
    for name in names:
        if name.endswith((".csv", ".json", ".svg", ".html")):
            assert first.read(name) == second.read(name), name

    for path in ("", "/report"):
        denied = api.get(ANALYSIS.format(slug="twotask") + path, headers=auth(tokens["beta"]))
        assert denied.status_code == 403, denied.text
        assert "alpha" not in denied.text and "gamma" not in denied.text
        missing = api.get(ANALYSIS.format(slug="nope") + path, headers=auth(tokens["beta"]))
        assert missing.status_code == 404
        assert api.get(ANALYSIS.format(slug="twotask") + path).status_code == 401

    shake = "/api/v1/challenges/twotask/phases/covid/analysis/shake-up"
    r = api.get(shake, params={"public_fraction": 0.5}, headers=auth(admin))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["reason"] is None, body["reason"]
    assert body["cases"]["public"] + body["cases"]["private"] == 24
    assert sorted(t["team"] for t in body["teams"]) == sorted(BENDS)
    assert all(0.0 <= t["p_rank_changes"] <= 1.0 for t in body["teams"])
    assert api.get(shake, params={"public_fraction": 0.5}, headers=auth(admin)).json() == body
    denied = api.get(shake, headers=auth(tokens["alpha"]))
    assert denied.status_code == 403 and "beta" not in denied.text
    bad = api.get(shake, params={"public_fraction": 1.5}, headers=auth(admin))
    assert bad.status_code == 422 and "public_fraction" in bad.text
