"""Drive a submission through its jobs without an engine: claim a step as a worker would
and record an outcome through the pipeline's own recorder (`_record`), so every state
change, charge and follow-up job comes from the real code. The evaluation's metrics are
made up, in the evaluator's shape, from the metric config the claimed job ran with."""

from __future__ import annotations

from typing import Any

from evaluation.build_image import code_digest
from server.config import Settings
from server.db import session_scope
from server.jobs import repository as jobs_repo
from server.jobs import service as jobs
from worker import pipeline


def claim(settings: Settings, sid: int, kind: str) -> list[pipeline.JobContext]:
    with session_scope(settings) as session:
        ids = [j.id for j in jobs_repo.for_submission(session, sid, kind) if j.status == "pending"]
        claimed = [jobs.claim(session, i, "test-worker", 60, 60) for i in ids]
        return [pipeline._context(session, j) for j in claimed if j is not None]


def fake_metrics(ctx: pipeline.JobContext) -> dict[str, Any]:
    cfg = ctx.phase.metrics
    aggregates: dict[str, Any] = {
        m.name: {"value": 0.5 + i / 10, "ci_lower": 0.4, "ci_upper": 0.9, "n": 6}
        for i, m in enumerate(cfg.metrics)
    }
    aggregates["primary"] = cfg.primary
    return {"metrics": {"aggregates": aggregates}, "evaluator_version": code_digest()}


def ok(settings: Settings, ctx: pipeline.JobContext) -> None:
    result: dict[str, Any] = {
        "validate": {"image_id": "sha256:test"},
        "infer": {"outputs": {}},
    }.get(ctx.kind.value) or fake_metrics(ctx)
    pipeline._record(settings, ctx, outcome=pipeline.Outcome(result))


def fail(settings: Settings, ctx: pipeline.JobContext, code: str, message: str = "") -> None:
    failure = pipeline.StepFailed(code, message or f"failed with {code}")
    pipeline._record(settings, ctx, failure=failure)


def to_evaluation(settings: Settings, sid: int) -> None:
    """Validation and every case succeed: the submission is `evaluating`."""
    for ctx in claim(settings, sid, "validate"):
        ok(settings, ctx)
    for ctx in claim(settings, sid, "infer"):
        ok(settings, ctx)


def evaluate(settings: Settings, sid: int, error: str | None = None) -> None:
    (ctx,) = claim(settings, sid, "evaluate")
    if error is None:
        ok(settings, ctx)
    else:
        fail(settings, ctx, error, f"The phase's evaluation is misconfigured ({error}).")
