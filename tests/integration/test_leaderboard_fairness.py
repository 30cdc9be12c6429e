"""Leaderboards over every metric kind, on SQLite and PostgreSQL: boards that used to 500
(kappa and macro-AUROC ensembles, DeLong on a subset with one positive), renounced
submissions, and ensemble ties across re-evaluation. Submissions go through the worker's
recording path and the real evaluation program (in-process; see tests/support/scoring.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from server.config import Settings
from tests.support.factories import (
    apply_bundle,
    auth,
    stoic_bundle,
    submit_blob,
    user_token,
    write_dataset,
)
from tests.support.scoring import run_evaluation, score

BOARD = "/api/v1/challenges/{slug}/phases/qualification/leaderboard"
CLASSES = ["a", "b", "c"]


def _challenge(
    api: TestClient,
    settings: Settings,
    root: Path,
    cases: dict[str, dict[str, Any]],
    *,
    slug: str = "stoic",
    outputs: list[dict[str, Any]] | None = None,
    metrics: dict[str, Any] | None = None,
    rules: dict[str, Any] | None = None,
) -> tuple[str, dict[str, Any]]:
    bundle = stoic_bundle(slug, rules=rules)
    phase = bundle["phases"][0]
    if outputs is not None:
        phase["outputs"] = outputs
    if metrics is not None:
        phase["metrics"] = metrics
    admin = user_token(settings, "admin", admin=True)
    ds = write_dataset(root / "test", cases)
    r = apply_bundle(api, admin, bundle, {"test": ds})
    assert r.status_code == 200, r.text
    return admin, bundle


def _submit(api: TestClient, token: str, slug: str = "stoic") -> int:
    r = submit_blob(api, token, challenge=slug)
    assert r.status_code == 201, r.text
    return int(r.json()["id"])


def _board(api: TestClient, token: str, slug: str = "stoic") -> dict[str, Any]:
    r = api.get(BOARD.format(slug=slug), headers=auth(token))
    assert r.status_code == 200, r.text
    return dict(r.json())


def _three_teams(
    api: TestClient,
    settings: Settings,
    tmp_path: Path,
    predictions: dict[str, dict[str, dict[str, Any]]],
    slug: str,
) -> dict[str, int]:
    ids = {}
    for team, outputs in predictions.items():
        ids[team] = _submit(api, user_token(settings, team), slug)
        score(settings, ids[team], outputs, tmp_path / team)
    return ids


def test_kappa_board_with_an_ensemble(api: TestClient, settings: Settings, tmp_path: Path) -> None:
    n = 24
    cases = {f"K{i:03d}": {"grade": i % 4, "split": i % 3} for i in range(n)}
    admin, _ = _challenge(
        api,
        settings,
        tmp_path,
        cases,
        slug="grading",
        outputs=[{"slug": "grade", "kind": "json", "value_type": "number"}],
        metrics={
            "primary": "qwk",
            "bootstrap_resamples": 200,
            "metrics": [
                {"name": "qwk", "kind": "quadratic_kappa", "output": "grade", "label": "grade"},
                {"name": "kappa-split", "kind": "cohen_kappa", "output": "grade",
                 "label": "grade", "subset_label": "split", "subset_value": 0},
            ],
        },
    )  # fmt: skip
    shifts = {"alpha": 0.0, "beta": 0.4, "gamma": -0.6}
    predictions = {
        team: {c: {"grade": min(3.0, max(0.0, v["grade"] + s + 0.3 * (i % 2)))}
               for i, (c, v) in enumerate(cases.items())}
        for team, s in shifts.items()
    }  # fmt: skip
    _three_teams(api, settings, tmp_path, predictions, "grading")
    board = _board(api, admin, "grading")
    assert board["entries"][0]["rank"] == 1
    assert all(e["ci"][0] <= e["value"] <= e["ci"][1] for e in board["entries"])
    ens = board["ensemble"]
    assert ens is not None and sorted(ens["teams"]) == sorted(shifts)
    assert ens["reason"] is None and ens["ci"][0] <= ens["value"] <= ens["ci"][1]


def test_macro_auroc_board_with_an_ensemble(
    api: TestClient, settings: Settings, tmp_path: Path
) -> None:
    n = 30
    cases = {f"M{i:03d}": {"tissue": CLASSES[i % 3]} for i in range(n)}
    admin, _ = _challenge(
        api,
        settings,
        tmp_path,
        cases,
        slug="tissue",
        outputs=[{"slug": "probs", "kind": "json", "value_type": "object"}],
        metrics={
            "primary": "macro",
            "bootstrap_resamples": 200,
            "metrics": [
                {"name": "macro", "kind": "macro_auroc", "output": "probs", "label": "tissue",
                 "classes": CLASSES},
            ],
        },
    )  # fmt: skip

    def probs(i: int, skill: float) -> dict[str, float]:
        noise = [((i * 7 + k * 3) % 5) / 10 for k in range(3)]
        raw = [skill * (k == i % 3) + noise[k] + 0.05 for k in range(3)]
        return {c: round(r / sum(raw), 4) for c, r in zip(CLASSES, raw, strict=True)}

    predictions = {
        team: {c: {"probs": probs(i, skill)} for i, c in enumerate(cases)}
        for team, skill in {"alpha": 1.0, "beta": 0.4, "gamma": 0.1}.items()
    }
    _three_teams(api, settings, tmp_path, predictions, "tissue")
    board = _board(api, admin, "tissue")
    assert board["entries"][0]["team"] == "alpha"
    ens = board["ensemble"]
    assert ens is not None and len(ens["members"]) == 3
    assert ens["reason"] is None and ens["ci"][0] <= ens["value"] <= ens["ci"][1]


def _stoic_outputs(cases: dict[str, dict[str, Any]], bend: float) -> dict[str, Any]:
    return {
        c: {
            "probability-covid-19": round(0.2 + 0.6 * v["probCOVID"] * (0.5 + bend / 2), 3),
            "probability-severe-covid-19": round(
                min(1.0, 0.1 + 0.5 * v["probSevere"] + bend * ((i * 5) % 7) / 10), 3
            ),
        }
        for i, (c, v) in enumerate(cases.items())
    }


def test_delong_on_a_subset_with_one_positive_is_unranked_with_a_reason(
    api: TestClient, settings: Settings, tmp_path: Path
) -> None:
    # Severity among COVID-positive cases: only P000 is severe.
    cases = {f"P{i:03d}": {"probCOVID": int(i % 2 == 0), "probSevere": int(i == 0)}
             for i in range(12)}  # fmt: skip
    admin, _ = _challenge(api, settings, tmp_path, cases)
    for team, bend in (("alpha", 0.1), ("beta", 0.4)):
        sid = _submit(api, user_token(settings, team))
        score(settings, sid, _stoic_outputs(cases, bend), tmp_path / team)
    board = _board(api, admin)
    assert len(board["entries"]) == 2
    for e in board["entries"]:
        assert e["rank"] is None and e["value"] is not None
        assert "DeLong needs at least two positive" in e["unranked_reason"]
        assert "P0" not in e["unranked_reason"]
    assert board["ensemble"] is None  # nothing ranked, nothing to combine
    stats = api.get(BOARD.format(slug="stoic") + "/statistics", headers=auth(admin))
    assert stats.status_code == 200, stats.text
    assert stats.json()["p_values"] is None and "DeLong" in stats.json()["reason"]


def _stoic_cases(n: int = 12) -> dict[str, dict[str, Any]]:
    return {f"P{i:03d}": {"probCOVID": int(i % 2 == 0), "probSevere": int(i % 4 == 0)}
            for i in range(n)}  # fmt: skip


def test_a_renounced_submission_is_off_the_board(
    api: TestClient, settings: Settings, tmp_path: Path
) -> None:
    cases = _stoic_cases()
    admin, _ = _challenge(
        api, settings, tmp_path, cases, rules={"single_shot": True, "allow_renounce": True}
    )
    alice = user_token(settings, "alice")
    first = _submit(api, alice)
    score(settings, first, _stoic_outputs(cases, 0.0), tmp_path / "first")
    r = api.post(f"/api/v1/submissions/{first}/renounce", headers=auth(alice))
    assert r.status_code == 200 and r.json()["renounced"] is True
    second = _submit(api, alice)
    score(settings, second, _stoic_outputs(cases, 0.9), tmp_path / "second")
    entries = _board(api, admin)["entries"]
    assert [e["submission_id"] for e in entries] == [second]


def test_ensemble_ties_break_by_submission_time_across_reevaluation(
    api: TestClient, settings: Settings, tmp_path: Path
) -> None:
    cases = _stoic_cases()
    admin, bundle = _challenge(api, settings, tmp_path, cases)
    same = _stoic_outputs(cases, 0.2)  # four teams, identical predictions: all tied
    order = ["t1", "t2", "t3", "t4"]
    ids = {team: _submit(api, user_token(settings, team)) for team in order}
    for team in order:
        score(settings, ids[team], same, tmp_path / team)
    before = _board(api, admin)
    assert before["ensemble"]["teams"] == ["t1", "t2", "t3"]
    # A metric change re-scores everyone; the evaluations happen to finish newest first.
    bundle["phases"][0]["metrics"]["bootstrap_resamples"] = 500
    r = apply_bundle(api, admin, bundle)
    assert sorted(r.json()["rescored"]) == sorted(ids.values())
    for team in reversed(order):
        run_evaluation(settings, ids[team], tmp_path / f"re-{team}")
    after = _board(api, admin)
    assert after["metrics_version"] == before["metrics_version"] + 1
    assert after["ensemble"]["teams"] == ["t1", "t2", "t3"]
    assert [e["team"] for e in after["entries"]] == order
