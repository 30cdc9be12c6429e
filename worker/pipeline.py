"""The submission pipeline, one job at a time.

Each job runs in three steps, grand-challenge style: claim it under a row lock (re-checking
that it is still pending), act outside any transaction with a heartbeat going, then record
the outcome and schedule what comes next in one transaction (tasks are sent on commit).

Exceptions drive transitions:
- `StepFailed`: the participant's side (bad image, timeout, invalid output); the job fails
  with a message safe to show.
- `InfrastructureError`: the platform's side (engine, disk, worker); the job is retried
  and, if retries run out, fails without charging the team.
- anything else: the job fails with a generic message and the error is re-raised so it
  reaches the logs and monitoring.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from server.challenges.models import Phase
from server.challenges.schemas import Interface, InterfaceKind, PhaseSpec
from server.config import Settings
from server.datasets import coverage
from server.datasets import repository as datasets_repo
from server.datasets.models import Case, Dataset
from server.db import session_scope
from server.jobs import logs
from server.jobs import repository as jobs_repo
from server.jobs import service as jobs
from server.jobs.models import Job
from server.jobs.states import JobKind, JobStatus
from server.leaderboards import service as leaderboards
from server.nodes import service as nodes
from server.storage import ArtifactStore
from server.submissions import advance
from server.submissions.models import Submission
from worker import steps
from worker.artifacts import store_for
from worker.evaluation_container import EVALUATION_WALL_S
from worker.executor.base import LABEL_JOB
from worker.model import MODEL_MOUNT
from worker.node import NoGpuInTime, gpu_lease
from worker.runner import batch_limits
from worker.steps import (
    CaseRef,
    InfrastructureError,
    JobContext,
    Outcome,
    StepFailed,
    classified_execution,
    container_key,
    gpus_for,
    node_name,
    smoke_train_limits,
    worker_id,
)

log = logging.getLogger(__name__)

# --- the driver ------------------------------------------------------------------------


def run_job(settings: Settings, job_id: int) -> None:
    """Lease the job's GPUs on this node (waiting, the job still pending), then claim it:
    its deadline starts only once it holds what it needs to run."""
    me, node = worker_id(settings), node_name(settings)
    with session_scope(settings) as session:
        job = session.get(Job, job_id)
        if job is None:
            log.warning("job %s does not exist; message dropped", job_id)
            return
        if JobStatus(job.status) is not JobStatus.pending:
            log.info("job %s is not pending; nothing to do", job_id)
            return
        budget = _time_budget(settings, session, job)
        gpus = _gpus_needed(_phase_of(session, job).spec, JobKind(job.kind))
    devices = settings.gpu_device_ids
    # A node with too few GPUs claims the job and its step fails it as the platform's fault.
    lease_count = gpus if gpus <= len(devices) else 0
    try:
        with gpu_lease(settings, node, devices, lease_count, job_id) as leased:
            with session_scope(settings) as session:
                job = jobs.claim(session, job_id, me, budget, settings.deadline_margin_s,
                                 node=node)  # fmt: skip
                if job is None:
                    log.info("job %s is not pending; nothing to do", job_id)
                    return
                ctx = _context(session, job)
            ctx.gpu_devices = leased
            try:
                _run_step(settings, ctx, job_id, me)
            finally:
                # Once the submission is over (and no job open) its images leave the engine.
                from worker.images import release_in_background

                release_in_background(settings, ctx.submission_id)
    except NoGpuInTime as exc:
        log.warning("job %s: %s; back to its queue", job_id, exc)
        with session_scope(settings) as session:
            waiting = session.get(Job, job_id)
            if waiting is not None and JobStatus(waiting.status) is JobStatus.pending:
                jobs.requeue(session, waiting)


def _gpus_needed(spec: PhaseSpec, kind: JobKind) -> int:
    if kind in (JobKind.infer, JobKind.canary):
        return spec.limits.gpus
    if kind in (JobKind.smoke_train, JobKind.train):
        return (spec.training_limits or spec.limits).gpus
    return 0


def _run_step(settings: Settings, ctx: JobContext, job_id: int, me: str) -> None:
    with store_for(settings) as store, Heartbeat(settings, job_id, me):
        try:
            outcome = _steps()[ctx.kind](settings, store, ctx)
        except StepFailed as exc:
            _record(settings, ctx, failure=exc)
            return
        except InfrastructureError as exc:
            log.warning("job %s attempt %s: infrastructure error: %s", job_id, ctx.attempt, exc)
            _record_infrastructure(settings, ctx, str(exc))
            return
        except Exception as exc:
            log.exception("job %s failed unexpectedly", job_id)
            _record(
                settings,
                ctx,
                failure=StepFailed(
                    "internal_error",
                    "The platform hit an unexpected error; the organizers have been told.",
                    operator_detail=f"{type(exc).__name__}: {exc}"[:2000],
                ),
                platform_caused=True,
            )
            raise
    _record(settings, ctx, outcome=outcome)


class Heartbeat:
    """Marks the job alive every few seconds while the step runs, so the reaper can tell a
    slow job from one whose worker vanished."""

    def __init__(self, settings: Settings, job_id: int, me: str) -> None:
        self.settings, self.job_id, self.me = settings, job_id, me
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True, name=f"hb-{job_id}")

    def _beat(self) -> None:
        while not self._stop.wait(self.settings.heartbeat_s):
            try:
                with session_scope(self.settings) as session:
                    jobs.heartbeat(session, self.job_id, self.me)
                    nodes.renew(session, self.job_id)
            except Exception:  # a missed beat is retried at the next tick
                log.exception("heartbeat for job %s failed", self.job_id)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def _phase_of(session: Session, job: Job) -> Phase:
    submission = session.get(Submission, job.submission_id)
    assert submission is not None
    phase = session.get(Phase, submission.phase_id)
    assert phase is not None
    return phase


INTAKE_WALL_S = 900  # inspecting and loading a multi-GB image archive


def _time_budget(settings: Settings, session: Session, job: Job) -> int:
    """The longest a step may legitimately take; its deadline adds the margin to this, and
    the reaper hands back a job still running after that."""
    phase = _phase_of(session, job)
    spec, kind = phase.spec, JobKind(job.kind)
    if kind is JobKind.validate:
        return max(INTAKE_WALL_S, settings.git_timeout_s)
    if kind is JobKind.build:
        return 2 * settings.build_timeout_s  # the training and the inference image
    if kind is JobKind.smoke_train:
        return smoke_train_limits(settings, spec).wall_time_s
    if kind is JobKind.train:
        # Training, then adding its artifacts to the inference image.
        return (spec.training_limits or spec.limits).wall_time_s + settings.build_timeout_s
    if kind is JobKind.evaluate and spec.evaluation is not None and spec.evaluation.limits:
        return spec.evaluation.limits.wall_time_s + INTAKE_WALL_S  # may load the image first
    if kind is JobKind.evaluate:
        return EVALUATION_WALL_S + max(settings.build_timeout_s, INTAKE_WALL_S)
    if job.case_id is None and phase.test_dataset_id is not None:  # batch: all cases at once
        cases = len(datasets_repo.list_cases(session, phase.test_dataset_id))
        return batch_limits(spec.limits, cases).wall_time_s
    return spec.limits.wall_time_s


def _context(session: Session, job: Job) -> JobContext:
    submission = session.get(Submission, job.submission_id)
    assert submission is not None
    phase = _phase_of(session, job)
    ctx = JobContext(
        job_id=job.id,
        attempt=job.attempt,
        kind=JobKind(job.kind),
        submission_id=submission.id,
        phase_id=phase.id,
        phase=phase.spec,
        image_id=submission.image_id,
        archive_digest=submission.archive_digest,
        image_ref=submission.image_ref,
        repository_url=submission.repository_url,
        commit_sha=submission.commit_sha,
        metrics_version=phase.metrics_version,
        model_digest=submission.model_digest,
    )
    if ctx.kind is JobKind.evaluate:
        ctx.ground_truth = leaderboards.ground_truth_digest(session, phase)
    # Build and training read what the clone and the build produced; case runs need
    # nothing earlier, and loading every job of a large test set per case would be quadratic.
    if ctx.kind in (JobKind.build, JobKind.smoke_train, JobKind.train):
        for earlier in jobs_repo.for_submission(session, submission.id):
            if earlier.status == JobStatus.succeeded.value and earlier.kind in (
                "validate",
                "build",
            ):
                ctx.earlier[earlier.kind] = dict(earlier.result)
    training_set = phase.canary_dataset_id if ctx.kind is JobKind.smoke_train else None
    if ctx.kind is JobKind.train:
        training_set = phase.training_dataset_id
    if training_set is not None:
        training = session.get(Dataset, training_set)
        assert training is not None
        ctx.labels_digest = training.labels_digest
        ctx.cases = [_case_ref(c) for c in datasets_repo.list_cases(session, training.id)]
    if job.case_id is not None:
        case = session.get(Case, job.case_id)
        assert case is not None
        ctx.cases = [_case_ref(case)]
    elif ctx.kind is JobKind.infer and phase.test_dataset_id is not None:
        ctx.cases = [_case_ref(c) for c in datasets_repo.list_cases(session, phase.test_dataset_id)]
    return ctx


def _case_ref(case: Case) -> CaseRef:
    from server.datasets.service import input_files

    # Reference masks never travel with the case to an algorithm's run.
    return CaseRef(case.id, case.name, case.public_name, input_files(case.files))


# --- recording outcomes and scheduling the next step -----------------------------------


def _record(
    settings: Settings,
    ctx: JobContext,
    *,
    outcome: Outcome | None = None,
    failure: StepFailed | None = None,
    platform_caused: bool = False,
) -> None:
    log_text = outcome.log if outcome else failure.result.pop("log", "") if failure else ""
    # Stored before the row is locked: on a remote store this is an upload.
    log_digest = None
    if log_text:
        try:
            with store_for(settings) as store:
                log_digest = store.put_bytes(log_text.encode())
        except InfrastructureError as exc:  # the outcome still counts; only the log is lost
            log.warning("job %s: its log was not stored: %s", ctx.job_id, exc)
    with session_scope(settings) as session:
        job = advance.lock_for_record(session, ctx.job_id)
        if JobStatus(job.status) is not JobStatus.running or job.attempt != ctx.attempt:
            # Reaped and retried while we worked: the newer attempt owns the job.
            log.warning("job %s attempt %s superseded; result dropped", ctx.job_id, ctx.attempt)
            return
        # Runs on sequestered data keep their logs from participants until reviewed.
        _, phase = logs.job_phase(session, job)
        job.logs_held = bool(log_digest) and logs.held_for(ctx.kind, phase)
        job.log_review = logs.review_for(job.logs_held, failure is not None, phase)
        # An evaluation's result is stamped with the metric config it ran with.
        used: dict[str, Any] = {}
        if ctx.kind is JobKind.evaluate:
            used = {"metrics_version": ctx.metrics_version, "ground_truth": ctx.ground_truth}
        if failure is None:
            assert outcome is not None
            jobs.succeed(session, job, {**outcome.result, **used}, log_digest)
        else:
            jobs.fail(
                session,
                job,
                failure.code,
                failure.message,
                result={**failure.result, **used},
                log_digest=log_digest,
                operator_detail=failure.operator_detail,
            )
        advance.advance(session, job, platform_caused=platform_caused)


def _record_infrastructure(settings: Settings, ctx: JobContext, reason: str) -> None:
    with session_scope(settings) as session:
        job = advance.lock_for_record(session, ctx.job_id)
        if JobStatus(job.status) is not JobStatus.running or job.attempt != ctx.attempt:
            return
        advance.retry_or_fail(session, settings, job, reason)


# --- the steps -------------------------------------------------------------------------


def step_validate(settings: Settings, store: ArtifactStore, ctx: JobContext) -> Outcome:
    from server.challenges.evaluation import image_limits
    from worker.images import submission_tag
    from worker.intake import IntakeError, load_image
    from worker.registry import publish

    assert ctx.archive_digest is not None
    engine = steps.engine()
    try:
        loaded = load_image(
            engine,
            store.path(ctx.archive_digest),
            tag=submission_tag(settings, ctx.submission_id, "image"),
            limits=image_limits(settings),
        )
    except IntakeError as exc:
        if exc.platform_caused:
            raise InfrastructureError(exc.reason) from exc
        raise StepFailed("invalid_image", exc.reason) from exc
    ref = publish(engine, settings, loaded.image_id, "image", ctx.submission_id)
    if ctx.model_digest is not None:  # refused here, before any private data: not charged
        work = steps.job_dir(settings, ctx)
        try:
            _unpack_model(settings, store, ctx, work)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return Outcome(
        {
            "image_id": loaded.image_id,
            "size_bytes": loaded.size_bytes,
            "user": loaded.user,
            "entrypoint": loaded.entrypoint,
            "cmd": loaded.cmd,
            **({"image_ref": ref} if ref else {}),
        }
    )


def _unpack_model(settings: Settings, store: ArtifactStore, ctx: JobContext, work: Path) -> Path:
    """The submission's model tarball unpacked read-only under work/model."""
    from worker.model import ModelError, extract_model

    assert ctx.model_digest is not None
    try:
        return extract_model(
            store.path(ctx.model_digest),
            work / "model",
            max_bytes=settings.max_model_bytes,
            max_entries=settings.max_model_entries,
        )
    except ModelError as exc:
        raise StepFailed("invalid_model", str(exc)) from exc


def _case_files(
    store: ArtifactStore, case: CaseRef, inputs: list[Interface], work: Path
) -> dict[str, Path]:
    """The case's stored files, linked under names that carry their extension (the
    store names files by digest alone) so staging keeps `.mha`, `.nii.gz`..."""
    out: dict[str, Path] = {}
    for interface in inputs:
        entry = case.files[interface.slug]
        link = work / "sources" / case.public_name / f"{interface.slug}{entry['ext']}"
        link.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(store.path(entry["digest"]), link)
        except OSError:
            shutil.copyfile(store.path(entry["digest"]), link)
        out[interface.slug] = link
    return out


def _store_outputs(
    store: ArtifactStore, values: dict[str, Any], outputs: list[Interface]
) -> dict[str, Any]:
    """JSON values inline; files into the artifact store by digest."""
    stored: dict[str, Any] = {}
    for interface in outputs:
        value = values[interface.slug]
        if interface.kind is InterfaceKind.json:
            stored[interface.slug] = {"value": value}
            continue
        digest, size = store.put_file(Path(value))
        rel = interface.output_relpath()
        if interface.kind is InterfaceKind.image:
            # Either layout is kept as grand-challenge's newer one, under a fresh name: the
            # name the algorithm chose could carry something about the case.
            rel = f"{rel}/{uuid.uuid4()}{interface.extension}"
        stored[interface.slug] = {"digest": digest, "size": size, "relpath": rel}
    return stored


def step_infer(settings: Settings, store: ArtifactStore, ctx: JobContext) -> Outcome:
    # long: per-case and batch runs share one setup, GPU claim and output check
    from worker.executor.base import runtime_for
    from worker.images import submission_tag
    from worker.messages import operator_detail, private_failure
    from worker.output_rules import scored_outputs
    from worker.registry import ensure_local
    from worker.runner import run_batch, run_case

    assert ctx.image_id is not None
    # Canary cases are public and keep detailed messages; test cases are private.
    private = ctx.kind is JobKind.infer
    executor = steps.executor(settings)
    what = "image" if ctx.archive_digest else "inference"  # T2's upload, T3's trained image
    tag = submission_tag(settings, ctx.submission_id, what)
    ensure_local(executor, settings, ctx.image_id, ctx.image_ref, tag=tag)
    executor.cleanup_stale({LABEL_JOB: container_key(settings, ctx.job_id)})
    work = steps.job_dir(settings, ctx)
    common: dict[str, Any] = dict(
        image=ctx.image_id,
        job_id=container_key(settings, ctx.job_id),
        attempt=ctx.attempt,
        limits=ctx.phase.limits,
        inputs=ctx.phase.inputs,
        outputs=scored_outputs(ctx.phase),
        work=work,
        runtime=runtime_for(settings.container_runtime, ctx.phase.runtime, ctx.phase.limits.gpus),
    )
    if ctx.model_digest is not None:
        common["read_only_mounts"] = {_unpack_model(settings, store, ctx, work): MODEL_MOUNT}
    try:
        with gpus_for(settings, ctx, ctx.phase.limits.gpus) as devices, classified_execution():
            common["gpu_device_ids"] = devices
            if ctx.phase.batch_mode:
                done = run_batch(
                    executor,
                    cases={
                        c.public_name: _case_files(store, c, ctx.phase.inputs, work)
                        for c in ctx.cases
                    },
                    **common,
                )
            else:
                (case,) = ctx.cases
                done = run_case(
                    executor,
                    case=case.public_name,
                    files=_case_files(store, case, ctx.phase.inputs, work),
                    **common,
                )
        timing = {
            "duration_s": done.run.duration_s,
            "mode": "batch" if ctx.phase.batch_mode else "case",
        }
        log = steps.run_logs(done.run)
        if not ctx.phase.batch_mode:
            (only,) = done.cases.values()
            if only.failure is not None:
                code, message = only.failure.reason, only.failure.message
                if private:
                    code, message = private_failure(only.failure)
                raise StepFailed(
                    code,
                    message,
                    {**timing, "log": log},
                    operator_detail=operator_detail(only.failure),
                )
            outputs = _store_outputs(store, only.values, ctx.phase.outputs)
            return Outcome({**timing, "outputs": outputs}, log)
        ids = {c.public_name: c.id for c in ctx.cases}
        cases: dict[str, Any] = {}
        for name, res in done.cases.items():
            entry: dict[str, Any] = {"case_id": ids[name]}
            if res.failure is not None:
                code, message = res.failure.reason, res.failure.message
                if private:
                    code, message = private_failure(res.failure)
                # job.result is never shown to participants; `detail` is for operators.
                entry["failure"] = {
                    "code": code,
                    "message": message,
                    "detail": operator_detail(res.failure),
                }
            else:
                entry["outputs"] = _store_outputs(store, res.values, ctx.phase.outputs)
            cases[name] = entry
        out = {**timing, "cases": cases}
        if done.failed:
            raise StepFailed(
                "cases_failed", "The algorithm failed on one or more cases.", {**out, "log": log}
            )
        return Outcome(out, log)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _predictions(
    session: Session, store: ArtifactStore, submission_id: int, spec: PhaseSpec, dest: Path
) -> None:
    """grand-challenge's /input/predictions.json plus each job's output files."""
    entries: list[dict[str, Any]] = []
    submission = session.get(Submission, submission_id)
    assert submission is not None
    phase = session.get(Phase, submission.phase_id)
    assert phase is not None
    current = coverage.current_case_ids(session, phase.test_dataset_id or 0)
    infer_jobs = coverage.effective_infer_jobs(session, submission_id, phase.test_dataset_id)
    for j in infer_jobs:
        if j.case_id is not None:
            pairs = [(j.case_id, j.id, j.result.get("outputs", {}))]
        else:
            pairs = [
                (e["case_id"], int(f"{j.id}{i:06d}"), e.get("outputs", {}))
                for i, e in enumerate(j.result.get("cases", {}).values())
            ]
        for case_id, pk, outputs in pairs:
            if case_id not in current:
                continue  # retired since the batch ran: not in the ground truth
            case = session.get(Case, case_id)
            assert case is not None
            inputs = [
                {
                    "interface": i.slug,
                    "socket": i.slug,
                    "image": {"name": f"{case.name}{case.files[i.slug]['ext']}"},
                }
                for i in spec.inputs
            ]
            outs: list[dict[str, Any]] = []
            kinds = {o.slug: o for o in spec.outputs}
            for slug, stored in outputs.items():
                item: dict[str, Any] = {"interface": slug, "socket": slug}
                if "value" in stored:
                    item["value"] = stored["value"]
                else:
                    rel = stored["relpath"]
                    store.copy_to(stored["digest"], dest / str(pk) / "output" / rel)
                    interface = kinds.get(slug)
                    if interface is not None and interface.kind is InterfaceKind.image:
                        folder, _, name = rel.rpartition("/")
                        item["interface"] = {
                            "slug": slug,
                            "kind": "Image",
                            "super_kind": "Image",
                            "relative_path": folder,
                        }
                        item["image"] = {"name": name}
                    else:
                        item["file"] = f"/input/{pk}/output/{rel}"
                outs.append(item)
            entries.append({"pk": pk, "status": "Succeeded", "inputs": inputs, "outputs": outs})
    (dest / "predictions.json").write_text(json.dumps(entries))


def _copy_masks(session: Session, store: ArtifactStore, dataset_id: int, gt: Path) -> None:
    """The dataset's reference masks as <gt>/<folder>/<case><ext> (evaluation/
    segmentation_inputs.py), for the current cases only."""
    from server.datasets.service import truth_files

    for case_id in sorted(coverage.current_case_ids(session, dataset_id)):
        case = session.get(Case, case_id)
        assert case is not None
        for folder, entry in truth_files(case.files).items():
            (gt / folder).mkdir(exist_ok=True)
            store.copy_to(entry["digest"], gt / folder / f"{case.name}{entry['ext']}")


def step_evaluate(settings: Settings, store: ArtifactStore, ctx: JobContext) -> Outcome:
    # long: gathers predictions and ground truth, runs the image, reads its report
    from worker.executor import RunSpec

    work = steps.job_dir(settings, ctx)
    try:
        (work / "input").mkdir()
        gt = work / "ground-truth"
        gt.mkdir()
        with session_scope(settings) as session:
            _predictions(session, store, ctx.submission_id, ctx.phase, work / "input")
            phase = session.get(Phase, ctx.phase_id)
            assert phase is not None and phase.test_dataset_id is not None
            dataset = session.get(Dataset, phase.test_dataset_id)
            assert dataset is not None
            store.copy_to(dataset.labels_digest, gt / "labels.csv")
            _copy_masks(session, store, dataset.id, gt)
            ctx.ground_truth = dataset.digest
        for path in [work / "input", *(work / "input").rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        if ctx.phase.evaluation is not None:
            from worker import evaluation_container

            outcome = evaluation_container.evaluate(settings, store, ctx, work / "input", gt)
            outcome.result["evaluator_version"] = ctx.phase.evaluation.image
            return outcome
        assert ctx.phase.metrics is not None
        (gt / "metrics.json").write_text(ctx.phase.metrics.model_dump_json())
        for path in [gt, *gt.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)

        image, evaluator = ensure_evaluation_image(settings)
        spec = RunSpec(
            image=image,
            job_id=container_key(settings, ctx.job_id),
            attempt=ctx.attempt,
            inputs=work / "input",
            limits=ctx.phase.limits.model_copy(
                update={
                    "gpus": 0,
                    "memory_mb": max(2048, ctx.phase.limits.memory_mb),
                    "wall_time_s": EVALUATION_WALL_S,
                }
            ),
            read_only_mounts={gt: "/opt/ml/input/data/ground_truth"},
        )
        executor = steps.executor(settings)
        with classified_execution():
            result = executor.run(spec, work / "output")
        metrics_path = work / "output" / "metrics.json"
        metrics: dict[str, Any] = {}
        if metrics_path.is_file():
            try:
                metrics = json.loads(metrics_path.read_text())
            except ValueError:
                metrics = {}
        error = metrics.get("error")
        if isinstance(error, dict):
            # The evaluator's message names private cases, ground-truth columns and output
            # values: organizers read it; participants read fixed words and the slug.
            message = str(error.get("message", error))
            detail = json.dumps(error)[:20000]
            if error.get("kind") == "invalid_predictions":
                slug = error.get("interface")
                named = (
                    f" for output {slug!r}" if slug in {i.slug for i in ctx.phase.outputs} else ""
                )
                raise StepFailed(
                    "invalid_predictions",
                    f"The predictions could not be scored{named}: the evaluation refused the "
                    "values of one or more private cases. The organizers can see which.",
                    operator_detail=detail,
                )
            if error.get("kind") == "configuration":
                # The organizers' metric config or ground truth is wrong, not the team.
                raise StepFailed(
                    "evaluation_config_error",
                    "The phase's evaluation is misconfigured and the organizers have been "
                    "told; this does not count against your team's limits.",
                    operator_detail=detail,
                )
            raise InfrastructureError(f"evaluator error: {message}")
        if result.failure is not None or "aggregates" not in metrics:
            # The evaluator is ours: its failure is the platform's, not the team's.
            why = result.failure.reason if result.failure else "no metrics"
            raise InfrastructureError(
                f"evaluation container failed ({why}): {result.stderr_tail[-500:]}"
            )
        # Keyed by the evaluator that actually ran, not by what the worker believes is current.
        return Outcome({"metrics": metrics, "evaluator_version": evaluator})
    finally:
        shutil.rmtree(work, ignore_errors=True)


_eval_lock = threading.Lock()


def ensure_evaluation_image(settings: Settings) -> tuple[str, str]:
    """(image id, evaluator key) of the evaluation image. heldout's own is tagged by the
    digest of its code and built the first time that code is needed, so an upgrade never
    runs a stale image; its key is the digest recorded in the image it runs."""
    from evaluation.build_image import DIGEST_LABEL, default_tag
    from worker.executor.engine import ImageNotFound

    engine = steps.engine()
    if settings.evaluation_image:
        try:
            image = engine.inspect_image(settings.evaluation_image)
        except ImageNotFound:
            raise InfrastructureError(
                f"evaluation image {settings.evaluation_image} (HELDOUT_EVALUATION_IMAGE) "
                "is not on this worker's engine"
            ) from None
        return str(image["Id"]), settings.evaluation_image
    tag = default_tag()
    with _eval_lock:
        try:
            image = engine.inspect_image(tag)
        except ImageNotFound:
            engine.build_evaluation_image(tag)
            image = engine.inspect_image(tag)
    key = ((image.get("Config") or {}).get("Labels") or {}).get(DIGEST_LABEL)
    if not key:
        raise InfrastructureError(f"evaluation image {tag} carries no {DIGEST_LABEL} label")
    return str(image["Id"]), str(key)


def step_validate_any(settings: Settings, store: ArtifactStore, ctx: JobContext) -> Outcome:
    if ctx.archive_digest is None:
        from worker.training import step_clone

        return step_clone(settings, store, ctx)
    return step_validate(settings, store, ctx)


def _steps() -> dict[JobKind, Any]:
    from worker.training import step_build, step_smoke_train, step_train

    return {
        JobKind.validate: step_validate_any,
        JobKind.build: step_build,
        JobKind.smoke_train: step_smoke_train,
        JobKind.train: step_train,
        JobKind.canary: step_infer,
        JobKind.infer: step_infer,
        JobKind.evaluate: step_evaluate,
    }
