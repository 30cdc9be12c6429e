"""Hole 6, webhook replay: a signed tag push delivered twice (a replay by someone who saw it,
or a forge's redelivery) must not make a second, charged submission.

GitHub sends `X-GitHub-Delivery` (one GUID per event, kept by redeliveries), Gitea/Forgejo
`X-Gitea-Delivery` (and `X-GitHub-Delivery`), GitLab `X-Gitlab-Event-UUID`. None of these
headers is covered by the HMAC signature, so a replay is also recognised by its signed body.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from server.codebases import service
from server.codebases.webhooks import sign
from server.config import Settings
from server.db import session_scope
from server.errors import Conflict
from tests.support.factories import auth, codebase_challenge
from tests.support.gitserver import GitDaemon, RepoFactory, codebase_repo

LIST = "/api/v1/challenges/stoic/phases/final/submissions"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The shared fixture (SQLite and PostgreSQL), with the test's git daemon on loopback."""
    return settings.model_copy(update={"allow_loopback_repos": True})


class Hook:
    def __init__(self, api: TestClient, settings: Settings, tmp_path: Path) -> None:
        self.api = api
        _, self.alice = codebase_challenge(api, settings, tmp_path / "data")
        self.factory = RepoFactory(tmp_path / "repos")
        self.repo = codebase_repo(self.factory, "team")
        for tag in ("v1", "v2", "v3"):
            self.repo.commit({"training/train.py": f"print('{tag}')\n"}, tag)
            self.repo.tag(tag)
        self.daemon = GitDaemon(self.factory.root)

    def link(self) -> None:
        self.url = self.daemon.url("team")
        r = self.api.post(
            "/api/v1/challenges/stoic/phases/final/repository-link",
            json={"repository_url": self.url},
            headers=auth(self.alice),
        )
        assert r.status_code == 201, r.text
        self.hook, self.secret = r.json()["webhook_url"], r.json()["secret"].encode()

    def payload(self, tag: str, *, pushed_at: float | None = None, **extra: Any) -> bytes:
        body: dict[str, Any] = {
            "ref": f"refs/tags/{tag}",
            "after": self.repo.sha(tag),
            "deleted": False,
            "repository": {"clone_url": self.url, **extra},
        }
        if pushed_at is not None:
            body["repository"]["pushed_at"] = int(pushed_at)  # GitHub: Unix seconds
        return json.dumps(body).encode()

    def post(self, body: bytes, headers: dict[str, str] | None = None) -> Any:
        signed = {
            "X-GitHub-Event": "push",
            "Content-Type": "application/json",
            "X-Hub-Signature-256": sign(self.secret, body),
            **(headers or {}),
        }
        return self.api.post(self.hook, content=body, headers=signed)

    def submissions(self) -> list[str]:
        r = self.api.get(LIST, headers=auth(self.alice))
        return sorted(s["ref"] for s in r.json())


@pytest.fixture
def hook(api: TestClient, settings: Settings, tmp_path: Path) -> Iterator[Hook]:
    """A team's repository (tags v1 to v3) served by git daemon and linked to the phase."""
    linked = Hook(api, settings, tmp_path)
    with linked.daemon:
        linked.link()
        yield linked


def test_replayed_delivery_is_refused_and_submits_nothing(hook: Hook) -> None:
    first = str(uuid.uuid4())
    body = hook.payload("v1", pushed_at=time.time())
    ok = hook.post(body, {"X-GitHub-Delivery": first})
    assert ok.status_code == 201, ok.text

    again = hook.post(body, {"X-GitHub-Delivery": first})
    assert again.status_code == 409, again.text
    assert first in again.json()["detail"] and again.json()["field"] == "delivery"
    # The delivery id is not signed: a replay under a fresh id is the same signed body.
    fresh_id = hook.post(body, {"X-GitHub-Delivery": str(uuid.uuid4())})
    assert fresh_id.status_code == 409, fresh_id.text
    assert first in fresh_id.json()["detail"]
    assert hook.submissions() == ["refs/tags/v1"]

    # Gitea's header, and a delivery without any id (then the body alone is the key).
    gitea = str(uuid.uuid4())
    body2 = hook.payload("v2")
    assert hook.post(body2, {"X-Gitea-Delivery": gitea}).status_code == 201
    replay2 = hook.post(body2, {"X-Gitea-Delivery": gitea})
    assert replay2.status_code == 409 and gitea in replay2.json()["detail"]
    body3 = hook.payload("v3")
    assert hook.post(body3).status_code == 201
    assert hook.post(body3).status_code == 409
    assert hook.submissions() == ["refs/tags/v1", "refs/tags/v2", "refs/tags/v3"]


def test_delivery_that_failed_can_be_redelivered(hook: Hook) -> None:
    """Only a delivery that submitted is recorded: a forge's redelivery of one that failed
    (here: the tag was not on the server yet) is not a replay."""
    sha = hook.repo.commit({"training/train.py": "print('v4')\n"}, "v4")
    body = json.dumps(
        {"ref": "refs/tags/v4", "after": sha, "repository": {"clone_url": hook.url}}
    ).encode()
    delivery = {"X-GitHub-Delivery": str(uuid.uuid4())}
    early = hook.post(body, delivery)
    assert early.status_code == 422 and early.json()["field"] == "ref", early.text
    hook.repo.tag("v4")
    assert hook.post(body, delivery).status_code == 201
    assert hook.post(body, delivery).status_code == 409
    assert hook.submissions() == ["refs/tags/v4"]


def test_stale_or_future_deliveries_are_refused(hook: Hook, settings: Settings) -> None:
    too_old = time.time() - settings.webhook_max_age_s - 60
    stale = hook.post(hook.payload("v1", pushed_at=too_old))
    assert stale.status_code == 409, stale.text
    assert "older than" in stale.json()["detail"]
    future = hook.post(hook.payload("v1", pushed_at=time.time() + 3600))
    assert future.status_code == 409 and "in the future" in future.json()["detail"]
    assert hook.submissions() == []
    bad_id = hook.post(hook.payload("v1"), {"X-GitHub-Delivery": "x" * 500})
    assert bad_id.status_code == 422 and bad_id.json()["field"] == "delivery"


def test_concurrent_replays_make_one_submission(hook: Hook, settings: Settings) -> None:
    """Two copies of one delivery arriving at once: the unique keys decide, not the timing.
    (Through the service, two sessions in two threads: the test client runs one request at
    a time.)"""
    body = hook.payload("v1")
    headers = {"X-GitHub-Delivery": str(uuid.uuid4())}
    link_id = int(hook.hook.rsplit("/", 1)[1])
    start = threading.Barrier(2)
    outcomes: list[object] = []

    def deliver() -> None:
        start.wait()
        try:
            with session_scope(settings) as session:
                sub = service.receive_push(
                    session, settings, link_id, "push", sign(hook.secret, body), body, headers
                )
                outcomes.append(sub is not None)
        except Conflict as exc:
            outcomes.append(exc)

    threads = [threading.Thread(target=deliver) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert sorted(map(type, outcomes), key=str) == sorted([bool, Conflict], key=str), outcomes
    assert hook.submissions() == ["refs/tags/v1"]
