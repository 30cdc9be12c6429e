"""The leaderboard is computed when a result changes and served from one stored row: an
ETag answers 304 while nothing changed, a new result replaces the board, and while a
recompute is running readers are served the previous board, whole, without waiting."""

from __future__ import annotations

import threading
import time
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
from tests.support.statements import driver_statements

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
    api: TestClient, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Looking at an unchanged board is one indexed SELECT (token, phase, generation) sent
    straight to the database driver, with no BEGIN or ROLLBACK statement, no ORM session
    and no route reached; it is still refused at once to a revoked token, without a token,
    or for no such phase."""
    from server.accounts import service as accounts
    from server.accounts.models import ApiToken
    from server.db import get_engine
    from server.leaderboards import endpoints

    reader, board = _one_board_held(api, settings, tmp_path)

    real_board = endpoints._board
    routed: list[str] = []

    def route(*args: Any) -> Any:
        routed.append("route")
        return real_board(*args)

    monkeypatch.setattr(endpoints, "_board", route)
    with driver_statements(get_engine(settings), get_engine(settings, hot=True)) as statements:
        again = api.get(BOARD, headers=auth(reader))
        assert again.status_code == 200 and again.content == board.content
        assert again.headers["etag"] == board.headers["etag"]
        assert again.headers["content-type"] == "application/json"
        assert again.headers["cache-control"] == "private, no-cache"
        assert len(statements) == 1 and statements[0].lstrip().startswith("SELECT"), statements
        statements.clear()
        cached = api.get(BOARD, headers=auth(reader) | {"If-None-Match": board.headers["etag"]})
        assert cached.status_code == 304 and cached.content == b"" and len(statements) == 1
        stats = api.get(STATS, headers=auth(reader))
        assert stats.status_code == 200 and isinstance(stats.json(), dict)
        assert stats.headers["etag"] == board.headers["etag"]
    assert routed == []  # all three answered in front of the routes

    assert api.get(BOARD).status_code == 401
    assert api.get(BOARD, headers=auth("hld_not-a-token")).status_code == 401
    missing = api.get(BOARD.replace("qualification", "nope"), headers=auth(reader))
    assert missing.status_code == 404 and missing.json()["field"] == "phase"
    with session_scope(settings) as session:
        row = session.query(ApiToken).filter_by(token_hash=accounts.hash_token(reader)).one()
        accounts.revoke_token(session, accounts.get_user(session, "carol"), row.id)
    refused = api.get(BOARD, headers=auth(reader))
    assert refused.status_code == 401 and "revoked" in refused.json()["detail"]


def test_a_hung_hot_read_holds_up_no_other_reader(
    api: TestClient, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lane's one reader thread stuck in a read (a database that stopped answering)
    delays another look at the board by the reader's start deadline at most: it is then
    answered by the normal path, whole, and the stuck request still gets its answer."""
    from server import readers

    reader, board = _one_board_held(api, settings, tmp_path)

    monkeypatch.setattr(readers, "START_WITHIN_S", 0.5)
    real = boards.served
    entered, release = threading.Event(), threading.Event()

    def hung(*args: Any) -> Any:
        if not entered.is_set():
            entered.set()
            release.wait(30)
        return real(*args)

    monkeypatch.setattr(boards, "served", hung)
    stuck: list[Any] = []
    first_look = threading.Thread(target=lambda: stuck.append(api.get(BOARD, headers=auth(reader))))
    first_look.start()
    try:
        assert entered.wait(10)
        t0 = time.monotonic()
        other = api.get(BOARD, headers=auth(user_token(settings, "bob")))
        waited = time.monotonic() - t0
    finally:
        release.set()
        first_look.join(30)
    assert other.status_code == 200 and other.json() == board.json()
    assert 0.5 <= waited < 5, waited
    assert stuck and stuck[0].status_code == 200 and stuck[0].content == board.content


def _one_board_held(api: TestClient, settings: Settings, tmp_path: Path) -> tuple[str, Any]:
    """A phase with one scored submission, its board looked at once (so held), and the
    token of a participant who looked (with the response)."""
    cases = _stoic_cases()
    _challenge(api, settings, tmp_path, cases)
    first = _submit(api, user_token(settings, "alice"))
    score(settings, first, _stoic_outputs(cases, 0.0), tmp_path / "a")
    reader = user_token(settings, "carol")
    board = api.get(BOARD, headers=auth(reader))
    assert board.status_code == 200
    return reader, board
