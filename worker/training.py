"""T3 steps: clone the codebase, build its training image and its inference image (without
artifacts), train on the sequestered training set, then add the trained artifacts to the
inference image in a platform-written, RUN-free, networkless build (worker.inference_image;
contracts.md, STOIC Final phase). Inference and evaluation then run as for T2."""

from __future__ import annotations

import shutil
import tarfile
from pathlib import Path

from server.challenges.schemas import Limits
from server.config import Settings
from server.storage import ArtifactStore, extract_tar
from worker import steps
from worker.executor import RunResult
from worker.executor.base import LABEL_JOB, runtime_for
from worker.images import submission_tag
from worker.registry import ensure_local, publish
from worker.steps import (
    JobContext,
    Outcome,
    StepFailed,
    classified_execution,
    container_key,
    gpus_for,
    smoke_train_limits,
)


def _tar_tree(store: ArtifactStore, root: Path, *, exclude: str | None = None) -> str:
    tmp = store.tmp_path()
    try:
        with tarfile.open(tmp, "w") as tar:
            for path in sorted(root.rglob("*")):
                rel = path.relative_to(root)
                if exclude and rel.parts and rel.parts[0] == exclude:
                    continue
                tar.add(path, arcname=str(rel), recursive=False)
        return store.put_file(tmp)[0]
    finally:
        tmp.unlink(missing_ok=True)


def _untar(store: ArtifactStore, digest: str, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    extract_tar(store.path(digest), dest)
    return dest


def step_clone(settings: Settings, store: ArtifactStore, ctx: JobContext) -> Outcome:
    from server.codebases.addresses import AddressPolicy
    from worker.builder import CloneError, clone

    assert ctx.repository_url and ctx.commit_sha
    work = steps.job_dir(settings, ctx)
    try:
        try:
            res = clone(
                ctx.repository_url,
                ctx.commit_sha,
                work / "repo",
                max_bytes=settings.max_repo_bytes,
                timeout_s=settings.git_timeout_s,
                policy=AddressPolicy.from_settings(settings),
            )
        except CloneError as exc:
            raise StepFailed("clone_failed", exc.message) from exc
        for rel in (ctx.phase.training_dir, ctx.phase.inference_dir):
            if not (work / "repo" / rel / "Dockerfile").is_file():
                raise StepFailed(
                    "missing_dockerfile",
                    f"The repository has no {rel}/Dockerfile at commit {ctx.commit_sha[:12]}.",
                )
            # Both, now: an inference Dockerfile refused after training would waste it.
            _vet(settings, ctx, work / "repo" / rel / "Dockerfile", f"{rel}/Dockerfile")
        source = _tar_tree(store, work / "repo", exclude=".git")
        log = (
            f"cloned {ctx.repository_url} at {res.commit} ({res.tree_bytes} bytes, "
            f"shallow={res.shallow}, lfs files={res.lfs_files})\n"
        )
        if res.submodules:
            log += f"submodules are not fetched: {', '.join(res.submodules)}\n"
        return Outcome(
            {
                "source_digest": source,
                "commit": res.commit,
                "tree_bytes": res.tree_bytes,
                "submodules": list(res.submodules),
            },
            log,
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _vet(settings: Settings, ctx: JobContext, dockerfile: Path, shown: str) -> None:
    from worker.images import BaseImageError, vet_dockerfile

    try:
        vet_dockerfile(steps.engine(), settings, ctx.phase, dockerfile, shown)
    except BaseImageError as exc:
        raise StepFailed(exc.code, exc.message) from exc


def _build(
    settings: Settings, context: Path, tag: str, ctx: JobContext, what: str
) -> tuple[str, str]:
    from worker.builder import BuildError, build_image

    dir_ = ctx.phase.training_dir if what == "training" else ctx.phase.inference_dir
    _vet(settings, ctx, context / "Dockerfile", f"{dir_}/Dockerfile")
    try:
        res = build_image(
            steps.engine(),
            context,
            context,
            tag,
            timeout_s=settings.build_timeout_s,
            max_image_bytes=settings.max_image_bytes,
            network=settings.build_network,
            labels={"heldout.submission": str(ctx.submission_id)},
        )
    except BuildError as exc:
        raise StepFailed(
            "build_failed", f"The {what} image did not build: {exc.message}", {"log": exc.log}
        ) from exc
    return res.image_id, res.log


def step_build(settings: Settings, store: ArtifactStore, ctx: JobContext) -> Outcome:
    """Both of the participant's images, before any private data exists: the training
    image, and the inference image without its artifacts (worker.inference_image)."""
    from worker.builder import ArtifactError, BuildError
    from worker.inference_image import build_inference_base

    work = steps.job_dir(settings, ctx)
    try:
        repo = _untar(store, ctx.earlier["validate"]["source_digest"], work / "repo")
        image_id, log = _build(
            settings,
            repo / ctx.phase.training_dir,
            submission_tag(settings, ctx.submission_id, "training"),
            ctx,
            "training",
        )
        try:
            base = build_inference_base(
                steps.engine(),
                repo,
                ctx.phase.inference_dir,
                work,
                submission_tag(settings, ctx.submission_id, "inference-base"),
                timeout_s=settings.build_timeout_s,
                max_image_bytes=settings.max_image_bytes,
                network=settings.build_network,
                labels={"heldout.submission": str(ctx.submission_id)},
            )
        except ArtifactError as exc:
            raise StepFailed("missing_dockerfile", exc.message, {"log": log}) from exc
        except BuildError as exc:
            raise StepFailed(
                "build_failed",
                f"The inference image did not build: {exc.message}",
                {"log": f"{log}\n--- inference image ---\n{exc.log}"},
            ) from exc
        refs = {
            f"{key}_ref": publish(steps.engine(), settings, id_, what, ctx.submission_id)
            for key, id_, what in (
                ("training_image", image_id, "training"),
                ("inference_base_image", base.image_id, "inference-base"),
            )
        }
        return Outcome(
            {
                "training_image_id": image_id,
                "inference_base_image_id": base.image_id,
                "artifact_places": [p.as_dict() for p in base.places],
                **{k: v for k, v in refs.items() if v},
            },
            f"{log}\n--- inference image ---\n{base.log}",
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _stored(store: ArtifactStore, entry: dict[str, object], work: Path) -> Path:
    """A stored file under a name with its extension (the store names by digest only)."""
    link = work / "sources" / f"{str(entry['digest'])[7:]}{entry['ext']}"
    link.parent.mkdir(parents=True, exist_ok=True)
    if not link.exists():
        shutil.copyfile(store.path(str(entry["digest"])), link)
    return link


def _run(
    settings: Settings, store: ArtifactStore, ctx: JobContext, limits: Limits, work: Path
) -> tuple[RunResult, str]:
    """The training image on ctx.cases (the training set, or the public canary cases) in
    the training sandbox; a failed run raises StepFailed with its log."""
    from worker.runner import run_training

    executor = steps.executor(settings)
    executor.cleanup_stale({LABEL_JOB: container_key(settings, ctx.job_id)})
    slug = ctx.phase.inputs[0].slug
    assert ctx.labels_digest is not None
    built = ctx.earlier["build"]
    tag = submission_tag(settings, ctx.submission_id, "training")
    ref = built.get("training_image_ref")
    ensure_local(executor, settings, built["training_image_id"], ref, tag=tag)
    with gpus_for(settings, ctx, limits.gpus) as gpus, classified_execution():
        result = run_training(
            executor,
            image=built["training_image_id"],
            job_id=container_key(settings, ctx.job_id),
            attempt=ctx.attempt,
            limits=limits,
            data={c.name: _stored(store, c.files[slug], work) for c in ctx.cases},
            labels=store.path(ctx.labels_digest),
            work=work,
            gpu_device_ids=gpus,
            runtime=runtime_for(settings.container_runtime, ctx.phase.runtime, limits.gpus),
        )
    log = steps.run_logs(result)
    if result.failure is not None:
        raise StepFailed(
            result.failure.reason,
            result.failure.message,
            {"log": log, "duration_s": result.duration_s},
        )
    return result, log


def step_smoke_train(settings: Settings, store: ArtifactStore, ctx: JobContext) -> Outcome:
    """The training image on the phase's public canary cases, before private training: it
    must exit 0 and write something to /output. Nothing it writes is kept."""

    work = steps.job_dir(settings, ctx)
    try:
        result, log = _run(settings, store, ctx, smoke_train_limits(settings, ctx.phase), work)
        files = [p for p in (work / "output").rglob("*") if p.is_file()]
        if not files:
            raise StepFailed(
                "no_artifacts",
                "Training on the public check cases exited 0 but wrote nothing to /output.",
                {"log": log, "duration_s": result.duration_s},
            )
        return Outcome({"duration_s": result.duration_s, "output_files": len(files)}, log)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def step_train(settings: Settings, store: ArtifactStore, ctx: JobContext) -> Outcome:
    from worker.builder import ArtifactError, BuildError
    from worker.inference_image import AFTER_TRAINING, add_artifacts

    limits = ctx.phase.training_limits or ctx.phase.limits
    work = steps.job_dir(settings, ctx)
    built = ctx.earlier["build"]
    engine = steps.engine()
    # The image the artifacts go into, pulled before training: a failed pull after days of
    # training would retry the training. This node's pruning leaves it while the job runs.
    base_tag = submission_tag(settings, ctx.submission_id, "inference-base")
    base_ref = built.get("inference_base_image_ref")
    ensure_local(engine, settings, built["inference_base_image_id"], base_ref, tag=base_tag)
    try:
        result, log = _run(settings, store, ctx, limits, work)
        artifacts = _tar_tree(store, work / "output")
        # Participant code saw private data: from here on, fixed words only (the detail
        # goes to this job's log, held for review).
        try:
            image_id, build_log = add_artifacts(
                engine,
                built["inference_base_image_id"],
                built["artifact_places"],
                work / "output",
                work,
                submission_tag(settings, ctx.submission_id, "inference"),
                timeout_s=settings.build_timeout_s,
                max_image_bytes=settings.max_image_bytes,
                labels={"heldout.submission": str(ctx.submission_id)},
            )
        except (ArtifactError, BuildError) as exc:
            detail = f"{log}\n--- adding the trained artifacts ---\n{exc.message}\n"
            raise StepFailed(
                "invalid_artifacts",
                AFTER_TRAINING,
                {"log": detail + getattr(exc, "log", ""), "duration_s": result.duration_s},
            ) from exc
        ref = publish(engine, settings, image_id, "inference", ctx.submission_id)
        return Outcome(
            {
                "artifacts_digest": artifacts,
                "inference_image_id": image_id,
                **({"inference_image_ref": ref} if ref else {}),
                "duration_s": result.duration_s,
                "inference_build_log_digest": store.put_bytes(build_log.encode()),
            },
            log,
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
