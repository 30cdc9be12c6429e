"""Repository links and push webhooks: a GitHub-style, HMAC-signed push of a tag submits
that tag to the linked codebase phase, under the same rules as any submission."""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from server.accounts.models import User
from server.challenges import service as challenges
from server.challenges.models import Challenge, Phase
from server.codebases import repository, webhooks
from server.codebases.addresses import AddressPolicy
from server.codebases.models import RepositoryLink, WebhookDelivery
from server.config import Settings
from server.db import no_transaction, utcnow
from server.errors import Conflict, InvalidInput, NotFound, Unauthorized
from server.submissions import service as submissions
from server.submissions.models import Submission
from server.submissions.schemas import SubmissionCreate
from server.teams import service as teams


def link(
    session: Session,
    settings: Settings,
    user: User,
    challenge_slug: str,
    phase_slug: str,
    url: str,
) -> tuple[RepositoryLink, str]:
    from server.codebases import git

    challenge, phase = challenges.get_phase(session, challenge_slug, phase_slug)
    if phase.kind != "codebase":
        raise InvalidInput("only codebase phases take repository links", field="phase")
    try:
        with no_transaction(session):  # it resolves the host's addresses (DNS)
            clean = git.validate_repository_url(
                url, settings.allowed_local_repo_roots, policy=AddressPolicy.from_settings(settings)
            )
    except git.CodebaseError as exc:
        raise InvalidInput(exc.message, field=exc.field) from exc
    team = teams.team_for(session, challenge.id, user)
    row = session.scalar(
        select(RepositoryLink).where(
            RepositoryLink.phase_id == phase.id, RepositoryLink.team_id == team.id
        )
    )
    secret = secrets.token_hex(32)
    if row is None:
        row = RepositoryLink(
            phase_id=phase.id, team_id=team.id, user_id=user.id, repository_url=clean, secret=secret
        )
        session.add(row)
    else:
        row.repository_url, row.secret, row.user_id = clean, secret, user.id
    session.flush()
    return row, secret


def _same_repo(a: str, b: str) -> bool:
    def norm(u: str) -> str:
        u = u.strip().rstrip("/")
        return u[:-4] if u.endswith(".git") else u

    return norm(a) == norm(b)


def receive_push(
    session: Session,
    settings: Settings,
    link_id: int,
    event: str | None,
    signature: str | None,
    body: bytes,
    headers: Mapping[str, str] | None = None,
) -> Submission | None:
    """Verify and act on a push. Returns the submission, or None for an ignored event.

    A delivery that submits is recorded in the same transaction as its submission; a later
    delivery with the same id or the same signed body is refused (409), so neither a replay
    nor a forge's redelivery charges the team twice. A delivery that failed (the tag was not
    on the server yet, a rule refused it) is not recorded and may be redelivered."""
    verified = _verified_push(session, link_id, event, signature, body, headers or {})
    if verified is None:
        return None
    row, push, delivery = verified
    digest = hashlib.sha256(body).hexdigest()
    _refuse_replay(session, row.id, delivery, digest)
    _refuse_stale(settings, push)
    phase = session.get(Phase, row.phase_id)
    assert phase is not None
    challenge = session.get(Challenge, phase.challenge_id)
    user = session.get(User, row.user_id)
    assert challenge is not None and user is not None
    # The ref is resolved again through git: the payload's sha is not trusted.
    submission = submissions.create(
        session,
        settings,
        user,
        challenge.slug,
        phase.slug,
        SubmissionCreate(
            repository_url=row.repository_url,
            ref=f"refs/tags/{push.tag}",
            comment=f"webhook: tag {push.tag}",
        ),
    )
    session.add(
        WebhookDelivery(
            link_id=row.id, delivery_id=delivery, body_sha256=digest, submission_id=submission.id
        )
    )
    try:
        session.flush()
    except IntegrityError:
        # The same delivery, arriving concurrently, committed first: this one rolls back.
        raise Conflict(
            f"{_delivery_name(delivery)} is being received already; a replayed webhook does "
            "not submit again",
            field="delivery",
        ) from None
    return submission


def _verified_push(
    session: Session,
    link_id: int,
    event: str | None,
    signature: str | None,
    body: bytes,
    headers: Mapping[str, str],
) -> tuple[RepositoryLink, webhooks.PushEvent, str | None] | None:
    """The link, the tag push and its delivery id of a signed delivery; None when it is an
    event that does not submit."""
    row = session.get(RepositoryLink, link_id)
    # A missing link answers as a bad signature does: the webhook is unauthenticated, and
    # link ids must not be enumerable.
    if row is None or not webhooks.verify_signature(row.secret.encode(), body, signature):
        raise Unauthorized("the X-Hub-Signature-256 signature does not match", field="signature")
    if event not in ("push", None):
        return None
    try:
        delivery = webhooks.delivery_id(headers)
    except webhooks.WebhookError as exc:
        raise InvalidInput(str(exc), field="delivery") from exc
    try:
        payload: Any = json.loads(body)
        push = webhooks.parse_push(payload)
    except (ValueError, webhooks.WebhookError) as exc:
        raise InvalidInput(f"not a push event payload: {exc}", field="body") from exc
    if not _same_repo(push.repo_url, row.repository_url) and not any(
        _same_repo(u, row.repository_url) for u in _payload_urls(payload)
    ):
        raise InvalidInput(
            "the push is for another repository than the linked one", field="repository"
        )
    if not push.submits:
        return None  # only tag pushes submit
    return row, push, delivery


def _delivery_name(delivery: str | None) -> str:
    return f"delivery {delivery}" if delivery else "this payload"


def _refuse_replay(session: Session, link_id: int, delivery: str | None, digest: str) -> None:
    earlier = repository.earlier_delivery(session, link_id, delivery, digest)
    if earlier is None:
        return
    if earlier.delivery_id is not None and earlier.delivery_id == delivery:
        what = f"delivery {delivery} was already received"
    elif earlier.delivery_id is not None:
        # Delivery ids are not signed: the same signed body under a new id is a replay.
        what = f"this payload was already received as delivery {earlier.delivery_id}"
    else:
        what = "this payload was already received"
    raise Conflict(
        f"{what} ({earlier.received_at:%Y-%m-%d %H:%M} UTC) and submitted; a replayed "
        "webhook does not submit again",
        field="delivery",
    )


# Forges' and our clocks disagree by a little; a push from further ahead is made up.
_CLOCK_SKEW = timedelta(minutes=5)


def _refuse_stale(settings: Settings, push: webhooks.PushEvent) -> None:
    if push.pushed_at is None:
        return
    now = utcnow()
    if push.pushed_at > now + _CLOCK_SKEW:
        raise Conflict(
            f"the payload says the tag was pushed at {push.pushed_at:%Y-%m-%d %H:%M} UTC, "
            "in the future; refused",
            field="delivery",
        )
    if now - push.pushed_at > timedelta(seconds=settings.webhook_max_age_s):
        raise Conflict(
            f"the payload says the tag was pushed at {push.pushed_at:%Y-%m-%d %H:%M} UTC, "
            f"older than the {settings.webhook_max_age_s} s a delivery is accepted for; "
            "push a new tag to submit",
            field="delivery",
        )


def trained_artifacts(session: Session, user: User, submission_id: int) -> str:
    """The digest of a codebase's trained /output (a tar). Participants get it only from a
    feedback round, which trains on public data; organizers always."""
    from server.accounts import service as accounts
    from server.errors import NotPermitted
    from server.jobs import repository as jobs_repo

    sub = submissions.get_visible(session, user, submission_id)
    phase = session.get(Phase, sub.phase_id)
    assert phase is not None
    if not phase.spec.feedback_round and not accounts.is_organizer(
        session, user, phase.challenge_id
    ):
        raise NotPermitted(
            "trained artifacts are downloadable only in a feedback round: this phase "
            "trained on sequestered data"
        )
    for job in jobs_repo.for_submission(session, sub.id, "train"):
        digest = job.result.get("artifacts_digest")
        if job.status == "succeeded" and digest:
            return str(digest)
    raise NotFound(f"submission {submission_id} has no trained artifacts", field="submission")


def _payload_urls(payload: Any) -> list[str]:
    repo = payload.get("repository") if isinstance(payload, dict) else None
    if not isinstance(repo, dict):
        return []
    return [
        str(repo[k]) for k in ("clone_url", "git_url", "html_url", "url", "ssh_url") if repo.get(k)
    ]
