"""A phase holding back a private part of its test set, on SQLite and PostgreSQL: three teams
scored through the worker's recording path and the real evaluation program; while the phase
is open every participant-facing GET endpoint shows numbers of the public part only (none of
the private part or of all cases); from closes_at on the board ranks on the private part; the
organizers' shake-up uses the phase's own split."""

from __future__ import annotations

import copy
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from evaluation.metrics import roc_auc
from server.challenges.models import Phase
from server.config import Settings
from server.db import session_scope
from server.jobs import repository as jobs_repo
from server.leaderboards import split
from server.leaderboards.models import Result
from server.submissions.models import Submission
from tests.support.factories import (
    apply_bundle,
    auth,
    stoic_bundle,
    submit_blob,
    user_token,
    write_dataset,
)
from tests.support.scoring import score

N = 60
BENDS = {"alpha": 0.45, "beta": 0.6, "gamma": 0.9}
BOARD = "/api/v1/challenges/split/phases/qualification/leaderboard"


def _cases() -> dict[str, dict[str, Any]]:
    return {f"P{i:03d}": {"probCOVID": int(i % 2 == 0), "probSevere": int(i % 4 == 0)}
            for i in range(N)}  # fmt: skip


def _outputs(cases: dict[str, dict[str, Any]], bend: float) -> dict[str, Any]:
    return {
        c: {
            "probability-covid-19": round(
                0.05 + 0.25 * v["probCOVID"] + 0.7 * bend * ((i * 7) % 11) / 11, 4
            ),
            "probability-severe-covid-19": round(
                min(1.0, 0.1 + 0.5 * v["probSevere"] + bend * ((i * 5) % 7) / 10), 4
            ),
        }
        for i, (c, v) in enumerate(cases.items())
    }


def _bundle(closes_at: datetime) -> dict[str, Any]:
    bundle = stoic_bundle("split")
    phase = bundle["phases"][0]
    phase["metrics"]["primary"] = "auc-covid"
    phase.update(private_fraction=0.5, closes_at=closes_at.isoformat())
    return bundle


def _floats(value: Any) -> set[float]:
    if isinstance(value, float):
        return {value}
    if isinstance(value, dict):
        return set().union(*(_floats(v) for v in value.values())) if value else set()
    if isinstance(value, list):
        return set().union(*(_floats(v) for v in value)) if value else set()
    return set()


def _participant_gets(api: TestClient, token: str, ids: dict[str, Any]) -> dict[str, Any]:
    """Every GET route of the API, its path parameters filled with this participant's
    objects: path -> parsed JSON (or text)."""
    seen: dict[str, Any] = {}
    spec = api.get("/api/v1/openapi.json").json()
    for template, ops in spec["paths"].items():
        if "get" not in ops:
            continue
        params = re.findall(r"{(\w+)}", template)
        if any(p not in ids for p in params):
            # Fail, so that a new route's parameter gets a value and the route is checked.
            raise AssertionError(f"no value for {params} of {template}")
        path = template.format(**ids)
        r = api.get(path, headers=auth(token))
        if template.startswith("/api/v1/node/"):
            # Node-only routes (a case file by its digest): a user's token opens none.
            assert r.status_code == 401, (path, r.status_code)
        ctype = r.headers.get("content-type", "")
        seen[path] = r.json() if "json" in ctype else r.text
    return seen


def _a_case_digest(session: Any) -> str:
    """A test case's stored image, what the node artifact route would stream."""
    from server.datasets.models import Case

    case = session.query(Case).first()
    return str(next(iter(case.files.values()))["digest"])


def test_open_board_shows_public_part_only_then_private_at_close(
    api: TestClient, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    admin = user_token(settings, "admin", admin=True)
    cases = _cases()
    ds = write_dataset(tmp_path / "test", cases)
    closes = datetime.now(UTC) + timedelta(days=30)
    r = apply_bundle(api, admin, _bundle(closes), {"test": ds})
    assert r.status_code == 200, r.text
    tokens = {team: user_token(settings, team) for team in BENDS}
    subs: dict[str, int] = {}
    for team, bend in BENDS.items():
        sub = submit_blob(api, tokens[team], challenge="split")
        assert sub.status_code == 201, sub.text
        subs[team] = int(sub.json()["id"])
        score(settings, subs[team], _outputs(cases, bend), tmp_path / team)
    names = sorted(cases)
    with session_scope(settings) as session:
        phase_id = session.query(Phase).one().id
    private = split.private_mask(split.key(settings), phase_id, names, 0.5)
    assert 0 < private.sum() < N
    # gamma's second submission is perfect on the public cases and reversed on the private
    # ones: its best on the public board, its worst at the reveal.
    probe = _outputs(cases, BENDS["gamma"])
    for i, c in enumerate(names):
        label = cases[c]["probCOVID"]
        probe[c]["probability-covid-19"] = 0.1 + 0.8 * (1 - label if private[i] else label)
    sub = submit_blob(api, tokens["gamma"], challenge="split")
    assert sub.status_code == 201, sub.text
    probe_id = int(sub.json()["id"])
    score(settings, probe_id, probe, tmp_path / "probe")

    with session_scope(settings) as session:
        phase = session.query(Phase).one()
        # What a participant must not see: every number of the stored (all-case) results
        # and of the private part.
        forbidden: set[float] = set()
        public_numbers: set[float] = set()
        for result in session.query(Result):
            forbidden |= _floats(result.metrics.get("aggregates"))
            forbidden |= _floats(result.metrics.get("roc"))
            forbidden |= _floats(split.view(settings, phase, result, "private").metrics)
            public_numbers |= _floats(split.view(settings, phase, result, "public").metrics)
    y = np.array([cases[c]["probCOVID"] for c in names])

    def expected(team: str, mask: Any) -> float:
        out = _outputs(cases, BENDS[team])
        scores = np.array([out[c]["probability-covid-19"] for c in names])
        return roc_auc(y[mask], scores[mask])

    board = api.get(BOARD, headers=auth(tokens["alpha"])).json()
    assert board["part"] == "public"
    values = {e["team"]: e["value"] for e in board["entries"]}
    shown = {e["team"]: e["submission_id"] for e in board["entries"]}
    assert shown == {"alpha": subs["alpha"], "beta": subs["beta"], "gamma": probe_id}
    # Top of the public board (another team may tie at 1.0 on some splits; the split is
    # keyed per installation, so it differs between the two databases).
    ranks = {e["team"]: e["rank"] for e in board["entries"]}
    assert values["gamma"] == 1.0 and ranks["gamma"] == 1
    for team in ("alpha", "beta"):
        assert abs(values[team] - expected(team, ~private)) < 1e-12, team
    # The board could show the private (or all-case) number unnoticed only if every team
    # scored alike on it and on the public part. One team's parts can tie by chance (AUCs
    # are fractions of few pairs and the split is random per installation: 0.975 on both
    # was seen), so for each, at least one team's must differ.
    for mask in (private, np.ones(N, bool)):
        gaps = [abs(expected(t, ~private) - expected(t, mask)) for t in ("alpha", "beta")]
        assert max(gaps) > 1e-9, gaps
    assert all(e["metrics"]["auc-covid"]["n"] == int((~private).sum()) for e in board["entries"])

    ids = {
        "challenge": "split",
        "phase": "qualification",
        "submission_id": subs["alpha"],
        "team_id": 1,
        "job_id": 1,
        "key": "none",
        "task": "none",  # not a multi-task phase: the task routes answer 404, and leak nothing
    }
    with session_scope(settings) as session:
        ids["team_id"] = session.get(Submission, subs["alpha"]).team_id  # type: ignore[union-attr]
        ids["job_id"] = jobs_repo.for_submission(session, subs["alpha"], "evaluate")[0].id
        ids["digest"] = _a_case_digest(session)
    seen = _participant_gets(api, tokens["alpha"], ids)
    assert BOARD in seen and BOARD + "/statistics" in seen and len(seen) >= 15, sorted(seen)
    trivial = {0.0, 1.0, 0.5, 0.95}
    for path, body in seen.items():
        leaked = (_floats(body) & forbidden) - public_numbers - trivial
        assert not leaked, (path, sorted(leaked)[:5])
        text = str(body)
        assert not any(names[i] in text for i in np.flatnonzero(private)), path

    # The organizers' shake-up uses the phase's split; participants get 403.
    shake = "/api/v1/challenges/split/phases/qualification/analysis/shake-up"
    s = api.get(shake, headers=auth(admin))
    assert s.status_code == 200, s.text
    body = s.json()
    assert body["reason"] is None, body["reason"]
    assert body["what_if"] is False
    assert body["cases"] == {"public": int((~private).sum()), "private": int(private.sum())}
    assert all(0.0 <= t["p_rank_changes"] <= 1.0 for t in body["teams"])
    what_if = api.get(shake, params={"public_fraction": 0.8}, headers=auth(admin)).json()
    assert what_if["what_if"] is True and what_if["cases"]["public"] > body["cases"]["public"]
    denied = api.get(shake, headers=auth(tokens["alpha"]))
    assert denied.status_code == 403 and "beta" not in denied.text

    # At closes_at the board turns to the private part by itself (its rule key changes).
    monkeypatch.setattr(split, "_now", lambda: closes + timedelta(seconds=1))
    turned = api.get(BOARD, headers=auth(tokens["alpha"])).json()
    assert turned["part"] == "private"
    monkeypatch.undo()
    assert api.get(BOARD, headers=auth(tokens["alpha"])).json() == board

    # From closes_at on the board ranks on the private part.
    later = copy.deepcopy(_bundle(datetime.now(UTC) - timedelta(minutes=1)))
    later["phases"][0]["opens_at"] = (datetime.now(UTC) - timedelta(days=1)).isoformat()
    r = apply_bundle(api, admin, later, {"test": ds})
    assert r.status_code == 200, r.text
    final = api.get(BOARD, headers=auth(tokens["alpha"])).json()
    assert final["part"] == "private"
    for e in final["entries"]:
        assert abs(e["value"] - expected(e["team"], private)) < 1e-12, e["team"]
    assert {e["team"]: e["submission_id"] for e in final["entries"]}["gamma"] == subs["gamma"]
    with session_scope(settings) as session:
        assert session.query(Phase).one().id == phase_id
