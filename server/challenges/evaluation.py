"""A phase's organizer evaluation image and ground-truth tarball, at `challenge apply`.

The bundle names each by upload key or sha256 digest; both become the digest of a
completed upload of the applying organizer (or the digest the phase already runs, so a
co-organizer can re-apply the bundle). The image archive passes the same engine-free
intake as an algorithm archive (`heldout.archive.inspect_archive`: size, entries,
compression, one linux/amd64 image with a non-root USER and an entrypoint) before any
phase changes; the worker loads it through the full intake (`worker/evaluation_container.py`).
"""

from __future__ import annotations

import tarfile

from sqlalchemy.orm import Session

from heldout.archive import IntakeError, IntakeLimits, inspect_archive
from server.accounts.models import User
from server.challenges import repository
from server.challenges.models import Challenge
from server.challenges.schemas import ChallengeSpec, EvaluationSpec, PhaseSpec
from server.config import Settings, get_settings
from server.errors import InvalidInput
from server.storage import ArtifactStore
from server.uploads import repository as uploads_repo
from server.uploads import service as uploads


def image_limits(settings: Settings) -> IntakeLimits:
    """The installation's image limits (HELDOUT_MAX_IMAGE_*): algorithms and evaluations."""
    return IntakeLimits(
        max_archive_bytes=settings.max_image_archive_bytes,
        max_image_bytes=settings.max_image_bytes,
        max_expanded_bytes=settings.max_image_expanded_bytes,
        max_compression_ratio=settings.max_image_compression_ratio,
    )


def _digest(
    session: Session, user: User, ref: str, current: set[str], field: str, what: str
) -> str:
    if not ref.startswith("sha256:"):
        return str(uploads.get_complete(session, user, ref).digest)
    if ref in current or uploads_repo.own_with_digest(session, user.id, ref, "complete"):
        return ref
    raise InvalidInput(f"{what} {ref} is none of your completed uploads", field=field)


def _resolve(
    session: Session,
    store: ArtifactStore,
    settings: Settings,
    user: User,
    phase: PhaseSpec,
    current: EvaluationSpec | None,
) -> PhaseSpec:
    spec = phase.evaluation
    assert spec is not None
    field = f"phases.{phase.slug}.evaluation"
    known = {d for d in (current.image, current.ground_truth) if d} if current else set()
    image = _digest(session, user, spec.image, known, f"{field}.image", "evaluation image")
    try:
        inspect_archive(store.path(image), image_limits(settings))
    except IntakeError as exc:
        raise InvalidInput(
            f"phase {phase.slug!r}: the evaluation image was refused: {exc.reason}",
            field=f"{field}.image",
        ) from None
    ground_truth = spec.ground_truth
    if ground_truth is not None:
        ground_truth = _digest(
            session, user, ground_truth, known, f"{field}.ground_truth", "ground-truth tarball"
        )
        try:
            with tarfile.open(store.path(ground_truth)) as tar:
                tar.getmembers()
        except (tarfile.TarError, OSError):
            raise InvalidInput(
                f"phase {phase.slug!r}: the ground-truth upload is not a tar archive "
                "(.tar, .tar.gz)",
                field=f"{field}.ground_truth",
            ) from None
    resolved = spec.model_copy(update={"image": image, "ground_truth": ground_truth})
    return phase.model_copy(update={"evaluation": resolved})


def resolve_uploads(
    session: Session,
    store: ArtifactStore,
    user: User,
    spec: ChallengeSpec,
    challenge: Challenge | None,
) -> ChallengeSpec:
    """The bundle with each evaluation's uploads as digests, its image vetted."""
    settings = session.info.get("settings") or get_settings()
    phases = []
    for phase in spec.phases:
        if phase.evaluation is None:
            phases.append(phase)
            continue
        existing = repository.get_phase(session, challenge.id, phase.slug) if challenge else None
        current = existing.spec.evaluation if existing is not None else None
        phases.append(_resolve(session, store, settings, user, phase, current))
    return spec.model_copy(update={"phases": phases})
