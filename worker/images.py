"""Submission images on the shared engine: vetted bases, unguessable tags, removal at the end.

Every team's images sit on one engine. So a codebase builds only from the base images the
organizers allow (`vet_dockerfile`), a submission's images are tagged with a keyed MAC of
its id (`submission_tag`: nothing to guess, and per installation), and once a submission is
over and none of its jobs is open its tags are removed (`release_images`), which deletes
the images unless another tag (an identical image of another submission) still holds them.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
import threading
from collections.abc import Iterable
from pathlib import Path

from sqlalchemy import select

from server.challenges.schemas import PhaseSpec
from server.codebases.baseimages import ImageReference, parse_allowed
from server.config import Settings
from server.db import session_scope
from server.jobs.models import Job
from server.jobs.states import FINAL as JOB_FINAL
from server.submissions.models import Submission
from server.submissions.states import FINAL as SUBMISSION_FINAL
from worker.dockerfile import DockerfileError, check_images
from worker.executor.engine import Engine, EngineError, ImageNotFound
from worker.steps import engine as connect
from worker.steps import instance_prefix

log = logging.getLogger(__name__)

# Without HELDOUT_IMAGE_TAG_KEY: tags are only written, never looked up again (jobs use
# image ids; removal reads the submission id from the tag), so a per-process key will do.
_PROCESS_KEY = secrets.token_bytes(32)
REMOVE_TIMEOUT_S = 900
_sweep: threading.Thread | None = None
TAG_RE = re.compile(r"^heldout-([0-9a-f]{8})/sub-([0-9]+)-[0-9a-f]{32}:[a-z][a-z-]*$")


class BaseImageError(Exception):
    """A Dockerfile heldout will not build; `code` is the job's failure code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


def installation_id(settings: Settings) -> str:
    return instance_prefix(settings).rstrip("-")


def submission_tag(settings: Settings, submission_id: int, what: str) -> str:
    """`heldout-<installation>/sub-<id>-<mac>:<what>`; what: image, training, inference-base
    (the participant's inference build, before training) or inference (with artifacts)."""
    key = (
        settings.image_tag_key.get_secret_value().encode()
        if settings.image_tag_key
        else _PROCESS_KEY
    )
    inst = installation_id(settings)
    mac = hmac.new(key, f"{inst}/{submission_id}".encode(), hashlib.sha256).hexdigest()[:32]
    return f"heldout-{inst}/sub-{submission_id}-{mac}:{what}"


def allowed_rules(settings: Settings, phase: PhaseSpec) -> list[list[ImageReference]]:
    rules = [parse_allowed(settings.allowed_base_images)]
    if phase.allowed_base_images is not None:
        rules.append(parse_allowed(phase.allowed_base_images))
    return rules


def vet_dockerfile(
    engine: Engine, settings: Settings, phase: PhaseSpec, path: Path, shown: str
) -> None:
    """Refuse `path` unless each image it builds from is allowed and, where pinned, is the
    pinned image on this engine. `shown` names the file in messages ("training/Dockerfile")."""
    rules = allowed_rules(settings, phase)
    try:
        uses = check_images(path.read_text(errors="replace"), rules)
    except DockerfileError as exc:
        raise BaseImageError("base_image_refused", f"{shown}: {exc.message}") from exc
    for use in uses:
        pins = {ref.digest for rule in rules for ref in rule if ref.name == use.image.name}
        pins.discard(None)
        if not pins:
            continue
        try:
            attrs = engine.inspect_image(use.image.name)
        except ImageNotFound:
            attrs = {"Id": "none", "RepoDigests": []}
        held = {attrs["Id"]} | {d.partition("@")[2] for d in attrs.get("RepoDigests") or []}
        for pin in sorted(p for p in pins if p):
            if pin not in held:
                raise BaseImageError(
                    "base_image_mismatch",
                    f"{shown}: Dockerfile line {use.line}: the allowed base image "
                    f"{use.image.name} is pinned to {pin}, but this worker's image under that "
                    f"name is {attrs['Id']}; the organizers have been told, and this does not "
                    "count against your team's limits",
                )


def release_images(settings: Settings, submission_ids: Iterable[int] | None = None) -> list[str]:
    """Remove the tags of this installation's submissions that are over with no open job
    (all such submissions, or those of `submission_ids`); returns the tags removed."""
    # Deleting layers can take minutes on a busy engine.
    engine = connect(wait_s=0, timeout=REMOVE_TIMEOUT_S)
    inst = installation_id(settings)
    wanted = None if submission_ids is None else set(submission_ids)
    tags: dict[int, list[str]] = {}
    for image in engine.list_images(f"heldout-{inst}/*"):
        for tag in image.tags:
            match = TAG_RE.match(tag)
            if match and match[1] == inst and (wanted is None or int(match[2]) in wanted):
                tags.setdefault(int(match[2]), []).append(tag)
    if not tags:
        return []
    with session_scope(settings) as session:
        live = set(
            session.scalars(
                select(Submission.id).where(
                    Submission.id.in_(tags),
                    Submission.status.not_in([s.value for s in SUBMISSION_FINAL]),
                )
            )
        )
        live |= set(
            session.scalars(
                select(Job.submission_id).where(
                    Job.submission_id.in_(tags), Job.status.not_in([s.value for s in JOB_FINAL])
                )
            )
        )
    removed: list[str] = []
    for submission_id in sorted(set(tags) - live):
        for tag in tags[submission_id]:
            try:
                engine.remove_image(tag)
                removed.append(tag)
            except ImageNotFound:
                pass
            except EngineError as exc:  # a container still uses it: next pass
                log.info("image %s of submission %s stays for now: %s", tag, submission_id, exc)
    return removed


def release_in_background(settings: Settings, submission_id: int | None = None) -> None:
    """`release_images` off the caller's thread (a slow engine must not hold up a job or the
    reaper): for one submission, or a sweep of all unless one is still going."""
    global _sweep

    def work() -> None:
        try:
            release_images(settings, None if submission_id is None else [submission_id])
        except Exception:  # the reaper's next sweep tries again
            log.exception("could not remove finished submissions' images")

    if submission_id is None:
        if _sweep is not None and _sweep.is_alive():
            return
        _sweep = thread = threading.Thread(target=work, daemon=True, name="release-images")
    else:
        thread = threading.Thread(target=work, daemon=True, name=f"release-{submission_id}")
    thread.start()
