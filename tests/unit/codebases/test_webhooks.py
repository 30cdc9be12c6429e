"""Push webhooks: signature checks and payload parsing (GitHub, Gitea, GitLab shapes)."""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
from datetime import UTC, datetime
from typing import Any

import pytest

from server.codebases.webhooks import (
    ZERO_SHA,
    WebhookError,
    delivery_id,
    parse_push,
    sign,
    verify_signature,
)

SECRET = b"s3cret-shared-with-the-team"
BODY = json.dumps({"ref": "refs/tags/v1", "after": "a" * 40}).encode()
COMMIT = "4f1c0b8e2d7a9c3b5e6f708192a3b4c5d6e7f809"
TAG_OBJECT = "9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a291807"


def _github_sig(body: bytes, secret: bytes = SECRET) -> str:
    # Written out independently of `sign` so that a bug in both cannot cancel out.
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def test_good_signature() -> None:
    assert verify_signature(SECRET, BODY, _github_sig(BODY))
    assert sign(SECRET, BODY) == _github_sig(BODY)


def test_signature_hex_is_case_insensitive() -> None:
    header = "sha256=" + _github_sig(BODY)[len("sha256=") :].upper()
    assert verify_signature(SECRET, BODY, header)


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "sha256=",
        "sha256=" + "0" * 64,
        _github_sig(BODY, b"another secret"),
        _github_sig(BODY + b" "),
        "sha1=" + hmac.new(SECRET, BODY, hashlib.sha1).hexdigest(),
        _github_sig(BODY)[len("sha256=") :],  # digest without its prefix
        "SHA256=" + _github_sig(BODY)[len("sha256=") :],
        _github_sig(BODY)[:-1],
        _github_sig(BODY) + "00",
        "sha256=" + "é" * 64,
    ],
    ids=lambda h: "missing" if h is None else repr(h)[:24],
)
def test_bad_signatures(header: str | None) -> None:
    assert verify_signature(SECRET, BODY, header) is False


def test_tampered_body_fails() -> None:
    assert not verify_signature(SECRET, BODY.replace(b"v1", b"v2"), _github_sig(BODY))


def test_empty_secret_is_a_configuration_error() -> None:
    with pytest.raises(ValueError, match="secret is empty"):
        verify_signature(b"", BODY, _github_sig(BODY, b""))


GITHUB_TAG_PUSH: dict[str, Any] = {
    "ref": "refs/tags/v1.0",
    "before": ZERO_SHA,
    "after": COMMIT,
    "created": True,
    "deleted": False,
    "base_ref": "refs/heads/main",
    "head_commit": {"id": COMMIT, "message": "final model"},
    "repository": {
        "full_name": "team/stoic",
        "clone_url": "https://github.com/team/stoic.git",
        "html_url": "https://github.com/team/stoic",
        "ssh_url": "git@github.com:team/stoic.git",
    },
}


def test_github_lightweight_tag_push_submits() -> None:
    event = parse_push(GITHUB_TAG_PUSH)
    assert event.repo_url == "https://github.com/team/stoic.git"
    assert event.ref == "refs/tags/v1.0"
    assert event.sha == COMMIT
    assert event.is_tag and event.tag == "v1.0"
    assert event.submits


def test_annotated_tag_push_names_the_commit_not_the_tag_object() -> None:
    payload = copy.deepcopy(GITHUB_TAG_PUSH)
    payload["after"] = TAG_OBJECT
    assert parse_push(payload).sha == COMMIT


def test_branch_push_does_not_submit() -> None:
    payload = copy.deepcopy(GITHUB_TAG_PUSH)
    payload["ref"] = "refs/heads/main"
    event = parse_push(payload)
    assert not event.is_tag and event.tag is None
    assert not event.submits


def test_tag_deletion_does_not_submit() -> None:
    payload = copy.deepcopy(GITHUB_TAG_PUSH)
    payload.update(after=ZERO_SHA, deleted=True, head_commit=None)
    event = parse_push(payload)
    assert event.is_tag and event.deleted
    assert event.sha == ZERO_SHA
    assert not event.submits


def test_gitlab_tag_push() -> None:
    payload = {
        "object_kind": "tag_push",
        "ref": "refs/tags/final",
        "after": TAG_OBJECT,
        "checkout_sha": COMMIT,
        "repository": {"git_http_url": "https://gitlab.example.org/team/stoic.git"},
    }
    event = parse_push(payload)
    assert event.repo_url == "https://gitlab.example.org/team/stoic.git"
    assert event.sha == COMMIT
    assert event.tag == "final" and event.submits


def _without(key: str) -> dict[str, Any]:
    payload = copy.deepcopy(GITHUB_TAG_PUSH)
    del payload[key]
    return payload


@pytest.mark.parametrize(
    ("payload", "fragment"),
    [
        ([], "not a JSON object"),
        (_without("ref"), "no 'ref'"),
        ({**GITHUB_TAG_PUSH, "ref": "v1"}, "no 'ref'"),
        (_without("repository"), "no 'repository'"),
        ({**GITHUB_TAG_PUSH, "repository": {"html_url": "x"}}, "no clone_url"),
        ({**GITHUB_TAG_PUSH, "after": "zz", "head_commit": None}, "names no pushed commit"),
        ({**GITHUB_TAG_PUSH, "ref": "refs/tags/"}, "no tag name"),
    ],
)
def test_malformed_payloads(payload: Any, fragment: str) -> None:
    with pytest.raises(WebhookError, match=fragment):
        parse_push(payload)


def test_delivery_id_from_each_forge_header() -> None:
    assert delivery_id({"X-GitHub-Delivery": "72d3162e-cc78-11e3-81ab-4c9367dc0958"}) == (
        "72d3162e-cc78-11e3-81ab-4c9367dc0958"
    )
    assert delivery_id({"x-gitea-delivery": " 1b2c "}) == "1b2c"  # case-insensitive, trimmed
    assert delivery_id({"X-Gitlab-Event-UUID": "u-1"}) == "u-1"
    # Gitea sends both of its own and GitHub's header: GitHub's is read first.
    assert delivery_id({"X-Gitea-Delivery": "b", "X-GitHub-Delivery": "a"}) == "a"
    assert delivery_id({"Content-Type": "application/json"}) is None
    for bad in ("", "has space", "x" * 101, "caf\u00e9"):
        with pytest.raises(WebhookError, match="X-GitHub-Delivery is not a delivery id"):
            delivery_id({"X-GitHub-Delivery": bad})


def test_pushed_at_is_read_only_as_github_push_time() -> None:
    base = {"ref": "refs/tags/v1", "after": COMMIT, "repository": {"clone_url": "https://h/r"}}
    at = copy.deepcopy(base)
    at["repository"]["pushed_at"] = 1_700_000_000
    assert parse_push(at).pushed_at == datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)
    iso = copy.deepcopy(base)
    iso["repository"]["pushed_at"] = "2023-11-14T22:13:20Z"  # other events: not a push time
    assert parse_push(iso).pushed_at is None
    assert parse_push(base).pushed_at is None
    huge = copy.deepcopy(base)
    huge["repository"]["pushed_at"] = 10**20
    with pytest.raises(WebhookError, match="pushed_at"):
        parse_push(huge)
