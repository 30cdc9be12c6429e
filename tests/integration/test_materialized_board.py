"""The leaderboard is computed when a result changes and served from one stored row: an
ETag answers 304 while nothing changed, a new result replaces the board, and while a
recompute is running readers are served the previous board, whole, without waiting."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from server.challenges.models import Phase
from server.config import Settings
from server.db import session_scope
from server.leaderboards import boards, service
from server.leaderboards.models import Board
from tests.integration.test_leaderboard_fairness import (
    _challenge,
    _stoic_cases,
    _stoic_outputs,
    _submit,
)
from tests.support.factories import auth, user_token
from tests.support.scoring import score

BOARD = "/api/v1/challenges/stoic/phases/qualification/leaderboard"
STATS = BOARD + "/statistics"


def test_etag_then_a_new_result_replaces_the_board(
    api: TestClient, settings: Settings, tmp_path: Path
) -> None:
    cases = _stoic_cases()
    admin, _ = _challenge(api, settings, tmp_path, cases)
    first = _submit(api, user_token(settings, "alice"))
    score(settings, first, _stoic_outputs(cases, 0.0), tmp_path / "a")

    r = api.get(BOARD, headers=auth(admin))
    assert r.status_code == 200 and r.headers["etag"].startswith('"')
    etag = r.headers["etag"]
    assert [e["submission_id"] for e in r.json()["entries"]] == [first]
    # Unchanged: 304 with no body, for the board and for the statistics (one version).
    again = api.get(BOARD, headers=auth(admin) | {"If-None-Match": etag})
    assert again.status_code == 304 and again.content == b""
    assert api.get(STATS, headers=auth(admin) | {"If-None-Match": etag}).status_code == 304

    second = _submit(api, user_token(settings, "bob"))
    score(settings, second, _stoic_outputs(cases, 0.9), tmp_path / "b")
    r = api.get(BOARD, headers=auth(admin) | {"If-None-Match": etag})
    assert r.status_code == 200 and r.headers["etag"] != etag
    assert sorted(e["submission_id"] for e in r.json()["entries"]) == [first, second]
    # The stored board is what a from-scratch computation gives.
    with session_scope(settings) as session:
        phase = session.query(Phase).one()
        live = service.leaderboard(session, phase)
        stats = service.statistics(session, phase)
        assert session.query(Board).count() == 1
    assert r.json() == live
    assert api.get(STATS, headers=auth(admin)).json() == stats


def test_readers_get_the_old_board_while_it_is_recomputed(
    api: TestClient,
    settings: Settings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cases = _stoic_cases()
    admin, _ = _challenge(api, settings, tmp_path, cases)
    first = _submit(api, user_token(settings, "alice"))
    score(settings, first, _stoic_outputs(cases, 0.0), tmp_path / "a")
    old = api.get(BOARD, headers=auth(admin)).json()

    release = threading.Event()
    computing = threading.Event()
    calls: list[int] = []
    real = service.compute

    def slow(session: Any, phase: Any) -> Any:
        calls.append(phase.id)
        computing.set()
        release.wait(30)
        return real(session, phase)

    monkeypatch.setattr(service, "compute", slow)
    monkeypatch.setattr(api.app.state.settings, "leaderboard_fresh_wait_s", 0.2)  # type: ignore[attr-defined]
    second = _submit(api, user_token(settings, "bob"))
    score(settings, second, _stoic_outputs(cases, 0.9), tmp_path / "b")
    try:
        # Many readers during one recompute: each served the whole previous board.
        for _ in range(5):
            r = api.get(BOARD, headers=auth(admin))
            assert r.status_code == 200 and r.json() == old
        assert computing.is_set() and len(calls) == 1  # coalesced: one recompute
    finally:
        release.set()
    # The recompute let go stores the new board (on a busy machine it takes longer than
    # the reader's fresh wait, so wait for it here rather than race it).
    for future in list(boards._running.values()):
        future.result(timeout=120)
    boards._running.clear()
    done = api.get(BOARD, headers=auth(admin)).json()
    assert sorted(e["submission_id"] for e in done["entries"]) == [first, second]


def test_a_held_board_costs_one_read_and_keeps_every_check(
    api: TestClient, settings: Settings, tmp_path: Path
) -> None:
    """Looking at an unchanged board is one indexed SELECT (token, phase, generation), and
    is still refused at once to a revoked token, without a token, or for no such phase."""
    from sqlalchemy import event

    from server.accounts import service as accounts
    from server.accounts.models import ApiToken
    from server.db import get_engine

    cases = _stoic_cases()
    _challenge(api, settings, tmp_path, cases)
    first = _submit(api, user_token(settings, "alice"))
    score(settings, first, _stoic_outputs(cases, 0.0), tmp_path / "a")
    reader = user_token(settings, "carol")
    board = api.get(BOARD, headers=auth(reader))
    assert board.status_code == 200

    selects: list[str] = []

    def count(_c: Any, _cur: Any, statement: str, *_: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            selects.append(statement)

    engine = get_engine(settings)
    event.listen(engine, "before_cursor_execute", count)
    try:
        again = api.get(BOARD, headers=auth(reader))
        assert again.status_code == 200 and again.content == board.content
        assert again.headers["etag"] == board.headers["etag"]
        assert len(selects) == 1, selects
        selects.clear()
        cached = api.get(BOARD, headers=auth(reader) | {"If-None-Match": board.headers["etag"]})
        assert cached.status_code == 304 and cached.content == b"" and len(selects) == 1
        stats = api.get(STATS, headers=auth(reader))
        assert stats.status_code == 200 and isinstance(stats.json(), dict)
    finally:
        event.remove(engine, "before_cursor_execute", count)

    assert api.get(BOARD).status_code == 401
    assert api.get(BOARD, headers=auth("hld_not-a-token")).status_code == 401
    missing = api.get(BOARD.replace("qualification", "nope"), headers=auth(reader))
    assert missing.status_code == 404 and missing.json()["field"] == "phase"
    with session_scope(settings) as session:
        row = session.query(ApiToken).filter_by(token_hash=accounts.hash_token(reader)).one()
        accounts.revoke_token(session, accounts.get_user(session, "carol"), row.id)
    refused = api.get(BOARD, headers=auth(reader))
    assert refused.status_code == 401 and "revoked" in refused.json()["detail"]
