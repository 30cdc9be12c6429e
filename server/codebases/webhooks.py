"""GitHub-style push webhooks for codebase (T3) phases.

A team registers its repository and a shared secret; the forge then POSTs every push. Only a
tag push submits: branches move with every commit, and a submission is a deliberate act with
a name the team can point to later (`v1-final`). Branch pushes, tag deletions and other
events are acknowledged and ignored by the caller (`PushEvent.submits`).

The payload's commit is informative only: the endpoint should resolve the tag itself
(`server.codebases.git.resolve_ref`) so that what gets built is what the repository serves,
and should check the repository URL against the team's registered one.

Formats read: GitHub and Gitea/Forgejo (`repository.clone_url`, `after`, `head_commit.id`),
GitLab (`repository.git_http_url`, `checkout_sha`).

Replays: a signed body stays valid forever, so the receiver records each delivery that
submitted and refuses a second one (`server.codebases.service.receive_push`). Delivery ids
(`delivery_id`): GitHub sends `X-GitHub-Delivery`, a GUID per event that its redeliveries
keep; Gitea/Forgejo send `X-Gitea-Delivery` (Gogs `X-Gogs-Delivery`) and also
`X-GitHub-Delivery`; GitLab sends `X-Gitlab-Event-UUID`. No forge signs these headers, so the
signed body's digest is recorded too. Age: of the three, only GitHub's push payload carries
the time of the push (`repository.pushed_at`, Unix seconds; `PushEvent.pushed_at`): a
delivery whose push is older than `webhook_max_age_s` is refused. Gitea and GitLab push
payloads have only commit times, which say nothing about when the tag was pushed.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

SIGNATURE_HEADER = "X-Hub-Signature-256"
SIGNATURE_PREFIX = "sha256="
EVENT_HEADER = "X-GitHub-Event"  # "push" for pushes, "ping" when the hook is created

# Read in this order; the first present wins (Gitea sends its own and GitHub's, equal).
DELIVERY_HEADERS = (
    "X-GitHub-Delivery",
    "X-Gitea-Delivery",
    "X-Gogs-Delivery",
    "X-Gitlab-Event-UUID",
)
_DELIVERY_ID_RE = re.compile(r"^[\x21-\x7e]{1,100}$")  # printable ASCII, no spaces

ZERO_SHA = "0" * 40
_SHA_RE = re.compile(r"^[0-9a-f]{40}$")
_TAG_PREFIX = "refs/tags/"


class WebhookError(ValueError):
    """The payload is not a push event heldout can read; the message says which part."""


@dataclass(frozen=True)
class PushEvent:
    repo_url: str
    ref: str  # full ref name, e.g. refs/tags/v1
    sha: str  # the pushed commit (for a deletion: all zeros)
    is_tag: bool
    tag: str | None  # the tag name without refs/tags/, for tag pushes
    deleted: bool = False
    pushed_at: datetime | None = None  # GitHub's repository.pushed_at (module docstring)

    @property
    def submits(self) -> bool:
        """Only a tag that now exists starts a submission (see the module docstring)."""
        return self.is_tag and not self.deleted


def verify_signature(secret: bytes, body: bytes, header: str | None) -> bool:
    """Check `X-Hub-Signature-256: sha256=<hex>` against HMAC-SHA256(secret, raw body).

    `body` must be the raw request bytes, before any JSON parsing. An empty secret is a
    misconfiguration (anyone could sign), so it raises instead of returning False.
    """
    if not secret:
        raise ValueError("webhook secret is empty")
    if header is None:
        return False
    header = header.strip()
    if not header.startswith(SIGNATURE_PREFIX):
        return False
    received = header[len(SIGNATURE_PREFIX) :].lower()
    expected = hmac.new(secret, body, hashlib.sha256).hexdigest()
    # compare_digest on ASCII str; non-hex or wrong-length input simply fails.
    return hmac.compare_digest(expected, received) if received.isascii() else False


def delivery_id(headers: Mapping[str, str]) -> str | None:
    """The forge's id for this delivery (module docstring); None when it sent none."""
    lowered = {k.lower(): v for k, v in headers.items()}
    for name in DELIVERY_HEADERS:
        value = lowered.get(name.lower())
        if value is None:
            continue
        if not _DELIVERY_ID_RE.match(value.strip()):
            raise WebhookError(
                f"header {name} is not a delivery id (1 to 100 printable characters)"
            )
        return value.strip()
    return None


def sign(secret: bytes, body: bytes) -> str:
    """The header value a forge would send for `body` (used by tests and the CLI)."""
    return SIGNATURE_PREFIX + hmac.new(secret, body, hashlib.sha256).hexdigest()


def parse_push(payload: Mapping[str, Any]) -> PushEvent:
    """Read a push event's repository, ref and commit; raise `WebhookError` if malformed."""
    if not isinstance(payload, Mapping):
        raise WebhookError("payload is not a JSON object")
    ref = payload.get("ref")
    if not isinstance(ref, str) or not ref.startswith("refs/"):
        raise WebhookError("payload has no 'ref' of the form refs/...")

    repository = payload.get("repository")
    if not isinstance(repository, Mapping):
        raise WebhookError("payload has no 'repository' object")
    repo_url = next(
        (
            repository[key]
            for key in ("clone_url", "git_http_url")
            if isinstance(repository.get(key), str) and repository[key]
        ),
        None,
    )
    if repo_url is None:
        raise WebhookError("payload's repository has no clone_url or git_http_url")

    after = payload.get("after")
    deleted = payload.get("deleted") is True or after == ZERO_SHA
    # For an annotated tag `after` is the tag object; head_commit / checkout_sha is the commit.
    head_commit = payload.get("head_commit")
    candidates = [
        head_commit.get("id") if isinstance(head_commit, Mapping) else None,
        payload.get("checkout_sha"),
        after,
    ]
    sha = ZERO_SHA if deleted else next((c for c in candidates if _is_sha(c)), None)
    if sha is None:
        raise WebhookError("payload names no pushed commit (after / head_commit.id)")

    is_tag = ref.startswith(_TAG_PREFIX)
    tag = ref[len(_TAG_PREFIX) :] if is_tag else None
    if is_tag and not tag:
        raise WebhookError("payload's tag ref has no tag name")
    pushed = repository.get("pushed_at")
    # Only a number: other GitHub events carry an ISO string here, Gitea nothing.
    pushed_at = None
    if isinstance(pushed, int | float) and not isinstance(pushed, bool):
        try:
            pushed_at = datetime.fromtimestamp(pushed, UTC)
        except (OverflowError, OSError, ValueError):
            raise WebhookError("payload's repository.pushed_at is not a valid time") from None
    return PushEvent(
        repo_url=repo_url, ref=ref, sha=sha, is_tag=is_tag, tag=tag, deleted=deleted,
        pushed_at=pushed_at,
    )  # fmt: skip


def _is_sha(value: object) -> bool:
    return isinstance(value, str) and bool(_SHA_RE.match(value))
