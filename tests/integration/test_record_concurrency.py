"""Cases of one submission finishing at the same moment, on PostgreSQL.

Each finishing case updates its job row and then locks the submission to decide what comes
next. Updating a row twice in one transaction makes PostgreSQL re-check its foreign key,
which share-locks the submission; two cases doing that together, and then both asking for
the submission exclusively, deadlocked (seen in the composed stack: PostgreSQL aborted one,
and the case was rerun after the reaper noticed). The barrier below holds every recorder
right after its job update, which is where that interleaving needs them.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from server.app import create_app
from server.config import Settings
from server.db import session_scope
from server.jobs import repository as jobs_repo
from server.jobs import service as jobs
from server.jobs.models import Job
from server.submissions.models import Submission
from tests.support.factories import (
    apply_bundle,
    stoic_bundle,
    stoic_cases,
    submit_blob,
    user_token,
    write_dataset,
)
from worker import pipeline

N_CASES = 6


def _running_cases(settings: Settings, tmp_path: Path) -> tuple[int, list[pipeline.JobContext]]:
    """A submission in `inferring` whose case jobs are all claimed by a worker."""
    with TestClient(create_app(settings)) as api:
        admin = user_token(settings, "admin", admin=True)
        dataset = write_dataset(tmp_path / "t", stoic_cases(N_CASES))
        assert apply_bundle(api, admin, stoic_bundle(), {"test": dataset}).status_code == 200
        sid = int(submit_blob(api, user_token(settings, "alice")).json()["id"])

    def claim_all(kind: str) -> list[pipeline.JobContext]:
        with session_scope(settings) as session:
            ids = [j.id for j in jobs_repo.for_submission(session, sid, kind)]
            claimed = [jobs.claim(session, i, "w1", 60, 60) for i in ids]
            return [pipeline._context(session, j) for j in claimed if j is not None]

    (validate,) = claim_all("validate")
    pipeline._record(settings, validate, outcome=pipeline.Outcome({"image_id": "sha256:x"}))
    cases = claim_all("infer")
    assert len(cases) == N_CASES
    return sid, cases


def _held_after(real: Callable[..., None], barrier: threading.Barrier) -> Callable[..., None]:
    def succeed(*args: Any, **kwargs: Any) -> None:
        real(*args, **kwargs)
        # Where recorders are serialized before this point, nobody else can arrive.
        with contextlib.suppress(threading.BrokenBarrierError):
            barrier.wait()

    return succeed


def test_cases_finishing_together_all_record(
    pg_settings: Settings,
    tmp_path: Path,
    sent_tasks: list[object],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = pg_settings
    sid, cases = _running_cases(settings, tmp_path)
    barrier = threading.Barrier(N_CASES, timeout=3)
    monkeypatch.setattr(jobs, "succeed", _held_after(jobs.succeed, barrier))

    errors: list[BaseException] = []

    def record(ctx: pipeline.JobContext) -> None:
        try:
            # A log on private data is held for review: one more write to the job row.
            outcome = pipeline.Outcome({"outputs": {}}, log="case done\n")
            pipeline._record(settings, ctx, outcome=outcome)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=record, args=(c,)) for c in cases]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors

    with session_scope(settings) as session:
        sub = session.get(Submission, sid)
        assert sub is not None and sub.status == "evaluating"
        all_jobs = jobs_repo.for_submission(session, sid)
        by_kind = sorted((j.kind, j.status) for j in all_jobs if isinstance(j, Job))
    assert by_kind.count(("infer", "succeeded")) == N_CASES
    assert by_kind.count(("evaluate", "pending")) == 1  # the last case started it, once
