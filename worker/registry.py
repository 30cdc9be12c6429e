"""Images travel between worker nodes through the installation's registry, by digest.

    ref = publish(engine, settings, image_id, "image", submission_id)  # after intake, builds
    ensure_local(engine, settings, image_id, ref, tag=...)              # before a run
    prune(settings)                                                     # a reaper pass

Jobs name images by id (the config's digest), which no registry serves; so each image a
worker loads or builds is pushed to `HELDOUT_IMAGE_REGISTRY` and its reference by manifest
digest is recorded with the job's result (the submission's image in `image_ref`). A node
that lacks the id pulls that reference and keeps the image only if its id is the recorded
one: a registry serving anything else (tampered, or a stale name) must not get to run.
Without a registry nothing is pushed or pulled, and a missing image fails the run as before.

References are recorded without the registry's address ("heldout-<inst>/sub-...@sha256:"),
and each node pulls from the address it is configured with: the composed workers reach the
registry on 127.0.0.1, a node on another machine by the first machine's address.
"""

from __future__ import annotations

import logging
import shutil
from contextlib import suppress
from pathlib import Path

from sqlalchemy import or_, select

from server.config import Settings
from server.db import session_scope
from server.jobs.models import Job
from server.jobs.states import JobKind, JobStatus
from server.submissions.models import Submission
from worker import steps
from worker.executor.engine import Engine, EngineError, ImageNotFound, RegistryError
from worker.images import TAG_RE, installation_id, submission_tag
from worker.steps import InfrastructureError

log = logging.getLogger(__name__)


class ImageMismatch(InfrastructureError):
    """The registry answered a recorded reference with another image than the recorded one."""


def publish(
    engine: Engine, settings: Settings, image_id: str, what: str, submission_id: int
) -> str | None:
    """Push the submission's image (`what`: image, training, inference-base, inference) to
    the registry; its reference by digest within the registry, or None without one. A
    failed push is the platform's: the job is retried."""
    if not settings.image_registry:
        return None
    prefix = f"{settings.image_registry}/"
    try:
        ref = engine.push_image(
            image_id, prefix + submission_tag(settings, submission_id, what), settings.registry_auth
        )
    except (RegistryError, ImageNotFound) as exc:
        raise InfrastructureError(
            f"could not push image {image_id} to the registry {settings.image_registry}: {exc}"
        ) from exc
    return ref.removeprefix(prefix)


def _address(settings: Settings, ref: str) -> str | None:
    """The reference as this node pulls it: in its own registry; None without one."""
    return f"{settings.image_registry}/{ref}" if settings.image_registry else None


def ensure_local(
    engine: Engine, settings: Settings, image_id: str, ref: str | None, *, tag: str | None = None
) -> None:
    """Make sure the engine holds `image_id`, pulling `ref` (as `publish` recorded it) from
    this node's registry when it does not; the pulled image is held by `tag` alone (a
    submission tag, so releasing the submission removes it here too). Without a reference
    or a registry, a missing image is left for the run to report, as on one machine."""
    address = _address(settings, ref) if ref else None
    if address is None or engine.has_image(image_id):
        return
    log.info("image %s is not on this node; pulling %s", image_id, address)
    try:
        pulled = engine.pull_image(address, settings.registry_auth)
    except RegistryError as exc:
        raise InfrastructureError(
            f"image {image_id} is not on this node and could not be pulled from {address}: {exc}"
        ) from exc
    if pulled != image_id:
        # Drop what the pull added (only the reference, should the image be held otherwise).
        with suppress(EngineError):
            engine.remove_image(address)
        raise ImageMismatch(
            f"refusing the image the registry serves as {address}: it is {pulled}, but the "
            f"recorded image is {image_id}"
        )
    if tag:
        engine.tag_image(image_id, tag)
        # The engine keeps a pulled digest reference (another repository than the tag's)
        # after the last tag goes: without this, releasing the submission would leave the
        # image behind.
        with suppress(ImageNotFound):
            engine.remove_image(address)


def prune(settings: Settings, engine: Engine | None = None) -> list[str]:
    """With a registry, and the engine's disk below `image_prune_free_bytes` free: remove
    this installation's submission images that no queued job and no job running on this
    node uses and that the registry holds (they can be pulled again), oldest submission
    first, until the disk is above the bound again. Returns the tags removed."""
    bound = settings.image_prune_free_bytes
    if not settings.image_registry or not bound:
        return []
    engine = engine or steps.engine(wait_s=0)
    root = engine.storage_root()
    if root is None or _free(root) >= bound:
        return []
    inst = installation_id(settings)
    found: list[tuple[int, str, str]] = []
    for image in engine.list_images(f"heldout-{inst}/*"):
        for tag in image.tags:
            match = TAG_RE.match(tag)
            if match and match[1] == inst:
                found.append((int(match[2]), tag, image.id))
    busy_submissions, busy_images = _in_use(settings)
    pullable = _pushed(settings, {submission_id for submission_id, _, _ in found})
    removed: list[str] = []
    for submission_id, tag, image_id in sorted(found):
        if submission_id in busy_submissions or image_id in busy_images:
            continue
        ref = pullable.get(image_id)
        # The record says it was pushed; the registry must still serve it (a wiped or
        # replaced registry, another address): else this copy may be the only one.
        if ref is None or not engine.registry_holds(
            f"{settings.image_registry}/{ref}", settings.registry_auth
        ):
            continue
        try:
            # Not forced: an image a container still uses (a job claimed since the query
            # above) stays; the engine refuses to remove it.
            engine.remove_image(tag)
        except ImageNotFound:
            continue
        except EngineError as exc:
            log.info("image %s stays for now: %s", tag, exc)
            continue
        removed.append(tag)
        if _free(root) >= bound:
            break
    if removed:
        log.warning("disk low on the engine: removed %d image tag(s): %s", len(removed), removed)
    return removed


def _free(root: Path) -> int:
    return shutil.disk_usage(root).free


def _pushed(settings: Settings, submission_ids: set[int]) -> dict[str, str]:
    """The images of these submissions recorded with a reference in the registry (a job's
    "<x>image_ref" beside its "<x>image_id"), image id -> reference. The pushing engine
    keeps no trace of the push, so the record is what says where to pull an image again."""
    refs: dict[str, str] = {}
    with session_scope(settings) as session:
        pushing = [JobKind.validate.value, JobKind.build.value, JobKind.train.value]
        for result in session.scalars(
            select(Job.result).where(
                Job.submission_id.in_(submission_ids),
                Job.kind.in_(pushing),
                Job.status == JobStatus.succeeded.value,
            )
        ):
            for key, ref in (result or {}).items():
                if not (key.endswith("image_ref") and ref):
                    continue
                image_id = result.get(key.removesuffix("ref") + "id")  # x_image_id
                if image_id:
                    refs[str(image_id)] = str(ref)
        # A multi-task child runs its parent's image (the reference is copied, no job's).
        for image_id, ref in session.execute(
            select(Submission.image_id, Submission.image_ref).where(
                Submission.id.in_(submission_ids), Submission.image_ref.is_not(None)
            )
        ):
            if image_id and ref:
                refs.setdefault(str(image_id), str(ref))
    return refs


def _in_use(settings: Settings) -> tuple[set[int], set[str]]:
    """Submissions with a job running on this node or queued (for any node: this one may
    claim it next), and the images those jobs run: a multi-task child runs its parent's
    image under the parent's tag."""
    with session_scope(settings) as session:
        # Ids only: every queued case of the installation may match, no rows needed.
        ids = set(
            session.scalars(
                select(Job.submission_id)
                .where(
                    or_(
                        (Job.status == JobStatus.running.value)
                        & (Job.node == steps.node_name(settings)),
                        Job.status == JobStatus.pending.value,
                    )
                )
                .distinct()
            )
        )
        images = {
            image_id
            for image_id in session.scalars(
                select(Submission.image_id).where(Submission.id.in_(ids))
            )
            if image_id
        }
        for job in session.scalars(
            select(Job).where(Job.submission_id.in_(ids), Job.kind == JobKind.build.value)
        ):
            images |= {str(v) for k, v in job.result.items() if k.endswith("image_id") and v}
    return ids, images
