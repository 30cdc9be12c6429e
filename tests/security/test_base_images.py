"""Builds start only from the base images the organizers allow; submission images carry
unguessable tags and leave the engine once their submission is over.

The attack this closes: builds share one engine, and submission images used to be tagged
`heldout/submission-<id>:latest` and kept forever, so a codebase saying
`FROM heldout/submission-<other>:latest` plus `RUN cat /secret` printed another team's file
into its own build log. Real engine, real git daemon on 127.0.0.1, a real worker."""

from __future__ import annotations

import io
import json
import re
import secrets
import tarfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from server.db import session_scope
from server.jobs import repository as jobs_repo
from tests.integration.test_pipeline_t3 import _jobs, _setup, _submit, codebase, live
from tests.support import images
from tests.support.factories import auth
from tests.support.workers import celery_worker, wait_final, wait_for

pytestmark = [pytest.mark.docker, pytest.mark.redis, pytest.mark.slow]
__all__ = ["live"]  # the fixture, imported for pytest

INFERENCE = 'FROM heldout/base:bookworm\nCOPY . /opt/x/\nUSER nobody\nENTRYPOINT ["true"]\n'


@pytest.fixture
def victim() -> Iterator[tuple[str, str]]:
    """Another team's image, under the name the platform used to give it, holding a file."""
    client = images.client_or_none()
    assert client is not None
    images.ensure_base_image(client)
    token = f"team-b-secret-{secrets.token_hex(8)}"
    tag = f"heldout/submission-{90000 + secrets.randbelow(9999)}:latest"
    dockerfile = f"FROM heldout/base:bookworm\nRUN echo {token} > /secret\n".encode()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(dockerfile)
        tar.addfile(info, io.BytesIO(dockerfile))
    buf.seek(0)
    client.images.build(fileobj=buf, custom_context=True, tag=tag, rm=True)
    try:
        yield tag, token
    finally:
        client.images.remove(tag, force=True)


def _leaked(settings: Any, api: Any, token_: str, sid: int, secret: str) -> list[str]:
    """Where `secret` shows: the job logs the team may read, and every file the platform wrote
    (artifact store with the held logs, the worker's own log)."""
    found = []
    for kind, job in _jobs(api, token_, sid).items():
        r = api.get(f"/api/v1/jobs/{job['id']}/logs", headers=auth(token_))
        if secret in r.text:
            found.append(f"{kind} log")
    for path in Path(settings.data_dir).rglob("*"):
        if path.is_file() and secret.encode() in path.read_bytes():
            found.append(str(path))
    return found


def _refused(live: Any, files: dict[str, str], **worker_env: str) -> tuple[dict[str, Any], Any]:
    settings, api, *_ = live
    url, alice = _setup(live, files)
    with celery_worker(settings, **worker_env):
        final = wait_final(api, alice, _submit(api, alice, url)["id"], timeout=300)
    return final, alice


def test_from_another_submissions_image_is_refused(live: Any, victim: tuple[str, str]) -> None:
    settings, api, *_ = live
    tag, secret = victim
    files = {
        "training/Dockerfile": f"# a comment\nfrom {tag}\nRUN cat /secret\nUSER nobody\n",
        "training/train.py": "print('hi')\n",
        "inference/Dockerfile": INFERENCE,
    }
    final, alice = _refused(live, files)
    assert _leaked(settings, api, alice, final["id"], secret) == []
    assert final["status"] == "failed", final
    message = final["failure_message"]
    assert f"line 2: FROM {tag} is not an allowed base image" in message, message
    assert "heldout/base:bookworm" in message  # it names what is allowed


def test_copy_from_another_image_is_refused(live: Any, victim: tuple[str, str]) -> None:
    settings, api, *_ = live
    tag, secret = victim
    files = codebase()
    # In the inference Dockerfile: refused before any training is spent.
    files["inference/Dockerfile"] = (
        "ARG BASE=heldout/base:bookworm\nFROM $BASE AS run\n"
        f"COPY --chown=1000 \\\n  --from={tag} /secret /s\nRUN cat /s\nUSER nobody\n"
    )
    final, alice = _refused(live, files)
    assert _leaked(settings, api, alice, final["id"], secret) == []
    assert final["status"] == "failed", final
    message = final["failure_message"]
    assert f"line 3: COPY --from={tag} is not an allowed base image" in message, message
    assert "train" not in _jobs(api, alice, final["id"])


def test_allowed_base_pinned_to_another_digest_is_refused(live: Any) -> None:
    wrong = "sha256:" + "0" * 64
    files = codebase()
    final, _ = _refused(
        live,
        files,
        HELDOUT_ALLOWED_BASE_IMAGES=json.dumps([f"heldout/base:bookworm@{wrong}"]),
    )
    assert final["status"] == "failed", final
    message = final["failure_message"]
    assert "heldout/base:bookworm" in message and wrong in message, message
    assert "pinned" in message, message
    assert final["charged"] is False  # the organizers' pin, not the team's doing


def test_a_phase_narrows_the_allowed_bases(live: Any) -> None:
    settings, api, *_ = live
    files = codebase()
    url, alice = _setup(live, files, allowed_base_images=["heldout/python:bookworm"])
    with celery_worker(settings):
        final = wait_final(api, alice, _submit(api, alice, url)["id"], timeout=300)
    assert final["status"] == "failed", final
    assert (
        "line 2: FROM heldout/base:bookworm is not an allowed base image; allowed: "
        "heldout/python:bookworm" in final["failure_message"]
    ), final["failure_message"]


def test_submission_images_are_unguessable_and_removed_at_the_end(live: Any) -> None:
    settings, api, *_ = live
    client = docker.from_env()
    # Its own image ids: an identical build elsewhere (another test, another installation on
    # this engine) would share the training image, and its tags would keep it.
    url, alice = _setup(live, codebase(build=f"LABEL org.heldout.test={uuid.uuid4().hex}\n"))
    with celery_worker(settings):
        sid = _submit(api, alice, url)["id"]
        final = wait_final(api, alice, sid, timeout=300)
        assert final["status"] == "succeeded", final
        with session_scope(settings) as session:
            results = {j.kind: dict(j.result) for j in jobs_repo.for_submission(session, sid)}
        built = [results["build"]["training_image_id"], results["train"]["inference_image_id"]]

        def gone() -> bool:
            for image_id in built:
                try:
                    client.images.get(image_id)
                    return False
                except docker.errors.ImageNotFound:
                    pass
            return True

        wait_for(gone, 120, f"the images of submission {sid} to leave the engine")
    # The engine tagged what it built with the keyed name, not the submission's plain id.
    build_log = api.get(f"/api/v1/jobs/{_jobs(api, alice, sid)['build']['id']}/logs",
                        headers=auth(alice)).json()["log"]  # fmt: skip
    assert re.search(r"Successfully tagged heldout-[0-9a-f]{8}/sub-\d+-[0-9a-f]{32}:training",
                     build_log), build_log[-500:]  # fmt: skip
    assert "heldout/submission-" not in build_log
