"""Drive a submission through the worker's recording path without containers: each step's
outcome is recorded with `pipeline._record` (so every transition, job and result is the
platform's own), the algorithm's outputs are given, and the evaluation program runs
in-process on the predictions.json the worker would hand its container."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from evaluation import evaluate as program
from evaluation.build_image import code_digest
from server.challenges.models import Phase
from server.config import Settings
from server.datasets.models import Case, Dataset
from server.db import session_scope
from server.jobs import repository as jobs_repo
from server.jobs import service as jobs
from server.storage import ArtifactStore
from worker import pipeline


def _claim(settings: Settings, submission_id: int, kind: str) -> list[pipeline.JobContext]:
    with session_scope(settings) as session:
        pending = [
            j.id
            for j in jobs_repo.for_submission(session, submission_id, kind)
            if j.status == "pending"
        ]
        claimed = [jobs.claim(session, i, "test-worker", 600, 60) for i in pending]
        return [pipeline._context(session, j) for j in claimed if j is not None]


def run_algorithm(
    settings: Settings, submission_id: int, outputs: dict[str, dict[str, Any]], log: str = ""
) -> None:
    """Validate, then 'run' the algorithm: `outputs` maps case name -> slug -> JSON value;
    `log` is what each inference run printed (held for review where the phase says so)."""
    for ctx in _claim(settings, submission_id, "validate"):
        pipeline._record(settings, ctx, outcome=pipeline.Outcome({"image_id": "sha256:fake"}))
    for ctx in _claim(settings, submission_id, "infer"):
        with session_scope(settings) as session:
            job = jobs_repo.lock(session, ctx.job_id)
            assert job is not None and job.case_id is not None
            case = session.get(Case, job.case_id)
            assert case is not None
            name = case.name
        result = {"outputs": {s: {"value": v} for s, v in outputs[name].items()}}
        pipeline._record(settings, ctx, outcome=pipeline.Outcome(result, log=log))


def run_evaluation(settings: Settings, submission_id: int, work: Path) -> None:
    """Run the submission's pending evaluate job with the evaluation program in-process."""
    store = ArtifactStore(settings.artifacts_path)
    for ctx in _claim(settings, submission_id, "evaluate"):
        root = work / f"eval-{ctx.job_id}"
        (root / "input").mkdir(parents=True)
        with session_scope(settings) as session:
            pipeline._predictions(session, store, submission_id, ctx.phase, root / "input")
            phase = session.get(Phase, ctx.phase_id)
            assert phase is not None and phase.test_dataset_id is not None
            dataset = session.get(Dataset, phase.test_dataset_id)
            assert dataset is not None
            store.copy_to(dataset.labels_digest, root / "labels.csv")
        (root / "metrics.json").write_text(ctx.phase.metrics.model_dump_json())
        metrics = program.evaluate(
            root / "input" / "predictions.json", root / "labels.csv", root / "metrics.json"
        )
        json.dumps(metrics)  # what the container writes must be plain JSON
        # Stamped as the worker stamps it: by the evaluator that ran.
        outcome = pipeline.Outcome({"metrics": metrics, "evaluator_version": code_digest()})
        pipeline._record(settings, ctx, outcome=outcome)


def score(
    settings: Settings,
    submission_id: int,
    outputs: dict[str, dict[str, Any]],
    work: Path,
    log: str = "",
) -> None:
    run_algorithm(settings, submission_id, outputs, log)
    run_evaluation(settings, submission_id, work)


def fail_by_platform(settings: Settings, submission_id: int, kind: str = "validate") -> None:
    """The platform fails the step on every attempt (a lost engine, say): the submission
    fails with platform_error and is not charged, as the worker records it."""
    for _ in range(settings.max_attempts + 1):
        claimed = _claim(settings, submission_id, kind)
        if not claimed:
            return
        for ctx in claimed:
            pipeline._record_infrastructure(settings, ctx, "the engine went away (test)")


def fail_evaluation(settings: Settings, submission_id: int, code: str, message: str) -> None:
    """The evaluation step fails with `code` (e.g. the organizers' metric configuration is
    wrong: evaluation_config_error), recorded as the worker records it."""
    for ctx in _claim(settings, submission_id, "evaluate"):
        failure = pipeline.StepFailed(code, message, operator_detail=f"{code} (test)")
        pipeline._record(settings, ctx, failure=failure)
