"""An organizer's evaluation image (the phase's `evaluation`), grand-challenge style.

The image is an uploaded `docker save` archive and passes the same intake as an
algorithm image (`worker/intake.py`: size, layers, config, non-root USER); it is loaded
once per worker under a tag derived from the archive digest. It runs through the executor
like any container: no network, all capabilities dropped, `/input` (predictions.json and
each job's outputs) and the ground truth at /opt/ml/input/data/ground_truth read-only (the
phase's labels.csv, plus the organizer's ground-truth tarball extracted), the evaluation's
limits. Its /output/metrics.json is read by the phase's JSON paths (`evaluation/external.py`).

Everything that goes wrong here (the image refused at intake, a crash, a timeout, a
missing path, a non-finite value) is the organizers' configuration, not the team's: the
job fails as `evaluation_config_error` (never charged, an organizer event), the
participant reads `EVALUATION_FAILED_MESSAGE` and the organizer reads the reason and the
container's stdout/stderr in `operator_detail`.
"""

from __future__ import annotations

import json
import tarfile
import threading
from pathlib import Path
from typing import Any

from evaluation.external import Column, ReportError, read_report
from server.challenges.schemas import EvaluationSpec, Limits
from server.config import Settings
from server.storage import ArtifactStore
from worker import steps
from worker.messages import EVALUATION_FAILED_MESSAGE
from worker.steps import (
    InfrastructureError,
    JobContext,
    Outcome,
    StepFailed,
    classified_execution,
    container_key,
)

GROUND_TRUTH = "/opt/ml/input/data/ground_truth"
TAG_REPO = "heldout/organizer-evaluation"
DETAIL_CHARS = 20000
EVALUATION_WALL_S = 1800
# The organizer's document is kept with the result for their own analysis, when small.
KEEP_REPORT_BYTES = 1 << 20

_load_lock = threading.Lock()


def misconfigured(detail: str) -> StepFailed:
    return StepFailed(
        "evaluation_config_error", EVALUATION_FAILED_MESSAGE, operator_detail=detail[-DETAIL_CHARS:]
    )


def image_tag(archive_digest: str) -> str:
    return f"{TAG_REPO}:{archive_digest.removeprefix('sha256:')[:32]}"


def ensure_image(settings: Settings, store: ArtifactStore, archive_digest: str) -> str:
    """The loaded image's id: loaded from the uploaded archive through the algorithm
    intake the first time this worker needs it."""
    from server.challenges.evaluation import image_limits
    from worker.executor.engine import ImageNotFound
    from worker.intake import IntakeError, load_image

    engine = steps.engine()
    tag = image_tag(archive_digest)
    with _load_lock:
        try:
            return str(engine.inspect_image(tag)["Id"])
        except ImageNotFound:
            pass
        if not store.exists(archive_digest):
            raise misconfigured(f"the evaluation image archive {archive_digest} is not stored")
        try:
            loaded = load_image(
                engine, store.path(archive_digest), tag=tag, limits=image_limits(settings)
            )
        except IntakeError as exc:
            if exc.platform_caused:
                raise InfrastructureError(exc.reason) from exc
            reason = f"the evaluation image was refused at intake: {exc.reason}"
            raise misconfigured(reason) from exc
    return loaded.image_id


def evaluation_limits(spec: EvaluationSpec, phase_limits: Limits) -> Limits:
    """The evaluation's own limits, or the phase's with no GPU, at least 2 GB and the
    built-in evaluator's wall time."""
    if spec.limits is not None:
        return spec.limits.model_copy(update={"gpus": 0})
    return phase_limits.model_copy(
        update={
            "gpus": 0,
            "memory_mb": max(2048, phase_limits.memory_mb),
            "wall_time_s": EVALUATION_WALL_S,
        }
    )


def stage_ground_truth(store: ArtifactStore, spec: EvaluationSpec, gt: Path) -> None:
    """The organizer's tarball, extracted beside labels.csv (regular files and directories
    only, nothing outside the directory: tarfile's `data` filter)."""
    if spec.ground_truth is None:
        return
    if not store.exists(spec.ground_truth):
        raise misconfigured(f"the ground-truth tarball {spec.ground_truth} is not stored")
    try:
        with tarfile.open(store.path(spec.ground_truth)) as tar:
            tar.extractall(gt, filter="data")
    except (tarfile.TarError, OSError) as exc:
        raise misconfigured(f"the ground-truth tarball could not be extracted: {exc}") from exc


def _logs(result: Any) -> str:
    return steps.run_logs(result)[-DETAIL_CHARS:]


def evaluate(
    settings: Settings, store: ArtifactStore, ctx: JobContext, inputs: Path, gt: Path
) -> Outcome:
    """Run the organizer's image on the staged inputs; the board's report."""
    from worker.executor import RunSpec

    spec = ctx.phase.evaluation
    assert spec is not None
    stage_ground_truth(store, spec, gt)
    for path in [gt, *gt.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    run = RunSpec(
        image=ensure_image(settings, store, spec.image),
        job_id=container_key(settings, ctx.job_id),
        attempt=ctx.attempt,
        inputs=inputs,
        limits=evaluation_limits(spec, ctx.phase.limits),
        read_only_mounts={gt: GROUND_TRUTH},
    )
    out = inputs.parent / "output"
    try:
        with classified_execution():
            result = steps.executor(settings).run(run, out)
    except StepFailed as exc:
        raise misconfigured(f"the evaluation container could not run: {exc.message}") from exc
    if result.failure is not None:
        failure = result.failure
        raise misconfigured(
            f"the evaluation container failed ({failure.reason}: {failure.message})\n"
            + _logs(result)
        )
    return Outcome({"metrics": _report(ctx, spec, out / "metrics.json", result)})


def _report(ctx: JobContext, spec: EvaluationSpec, path: Path, result: Any) -> dict[str, Any]:
    if not path.is_file():
        raise misconfigured("the evaluation wrote no /output/metrics.json\n" + _logs(result))
    try:
        doc = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise misconfigured(f"/output/metrics.json is not JSON: {exc}\n" + _logs(result)) from exc
    columns = [
        Column(name, col.path, col.per_case_key()) for name, col in spec.all_columns().items()
    ]
    cfg = ctx.phase.board_metrics()
    try:
        report = read_report(
            doc,
            columns,
            per_case=spec.per_case,
            n_resamples=cfg.bootstrap_resamples,
            seed=cfg.bootstrap_seed,
            level=cfg.ci_level,
        )
    except ReportError as exc:
        raise misconfigured(f"/output/metrics.json: {exc}\n" + _logs(result)) from exc
    if len(json.dumps(doc)) > KEEP_REPORT_BYTES:
        report.pop("external")
    return report
