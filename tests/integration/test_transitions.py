"""The one transition function: guarded by the state it read, so two actors cannot both
move a submission, and every move is recorded."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from server.config import Settings
from server.db import session_scope
from server.errors import InvalidTransition
from server.submissions import repository
from server.submissions import service as submissions
from server.submissions.models import Submission
from server.submissions.states import SubmissionStatus
from tests.support.factories import (
    apply_bundle,
    stoic_bundle,
    stoic_cases,
    submit_blob,
    user_token,
    write_dataset,
)


def test_stale_transition_is_refused(
    pg_settings: Settings, tmp_path: Path, sent_tasks: list[object]
) -> None:
    # PostgreSQL only: on SQLite the first transaction holds the write lock (BEGIN
    # IMMEDIATE), so the interleaving below cannot happen there at all.
    settings = pg_settings
    from server.app import create_app

    with TestClient(create_app(settings)) as api:
        _check(api, settings, tmp_path)


def _check(api: TestClient, settings: Settings, tmp_path: Path) -> None:
    admin = user_token(settings, "admin", admin=True)
    apply_bundle(api, admin, stoic_bundle(), {"test": write_dataset(tmp_path / "t", stoic_cases())})
    sid = submit_blob(api, user_token(settings, "alice")).json()["id"]

    with session_scope(settings) as first:
        a = first.get(Submission, sid)
        assert a is not None and a.status == "validating"
        # Someone else moves it meanwhile (its own transaction, committed).
        with session_scope(settings) as other:
            b = other.get(Submission, sid)
            assert b is not None
            submissions.transition(other, b, SubmissionStatus.queued)
        with pytest.raises(InvalidTransition, match="concurrently"):
            submissions.transition(first, a, SubmissionStatus.cancelled)

    with session_scope(settings) as session:
        sub = session.get(Submission, sid)
        assert sub is not None and sub.status == "queued"
        with pytest.raises(InvalidTransition, match="cannot go from queued to succeeded"):
            submissions.transition(session, sub, SubmissionStatus.succeeded)
        moves = [(t.from_status, t.to_status) for t in repository.transitions(session, sid)]
    assert moves == [(None, "received"), ("received", "validating"), ("validating", "queued")]
