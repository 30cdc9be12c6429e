"""Images travel through a real registry by digest (Debian's docker-registry on loopback,
plain HTTP, which the engine allows for 127.0.0.0/8 unconfigured; scripts/start-services.sh
starts it as HELDOUT_TEST_REGISTRY): pushed where they are loaded, gone from the engine,
pulled back by digest with the same image id, and refused when a reference names another
image. A T2 submission's image, pushed at intake and removed from the engine, comes back
for its first case run."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
import requests
from fastapi.testclient import TestClient
from sqlalchemy import select

from server.app import create_app
from server.config import Settings
from server.db import session_scope
from server.jobs.models import Job
from server.submissions.models import Submission
from tests.conftest import REGISTRY, _sqlite_settings, need
from tests.support import images
from tests.support.factories import apply_bundle, stoic_bundle, submit_blob, user_token
from worker import pipeline
from worker.executor.docker_engine import DockerEngine
from worker.executor.engine import ImageNotFound
from worker.executor.sized_dir import unmount_all_under
from worker.images import submission_tag
from worker.registry import ImageMismatch, ensure_local, publish

pytestmark = [pytest.mark.docker]


@pytest.fixture
def client() -> docker.DockerClient:
    found = images.client_or_none()
    need(found is not None, "a Docker engine")
    assert found is not None
    return found


@pytest.fixture
def settings(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, client: docker.DockerClient
) -> Iterator[Settings]:
    need(bool(REGISTRY), "an image registry (HELDOUT_TEST_REGISTRY)")
    try:
        requests.get(f"http://{REGISTRY}/v2/", timeout=5).raise_for_status()
    except requests.RequestException as exc:
        pytest.fail(f"the registry at {REGISTRY} does not answer: {exc}")
    base = _sqlite_settings(tmp_path, tmp_path_factory)
    yield base.model_copy(update={"image_registry": REGISTRY})
    unmount_all_under(tmp_path)


def _image(client: docker.DockerClient, name: str) -> tuple[str, str]:
    """A small image of its own (a label unique to this run): (tag, id)."""
    tag = images.build_image(
        client, name, images.NOOP, extra=f"LABEL heldout.test.run={uuid.uuid4().hex}"
    )
    return tag, str(client.images.get(tag).id)


def _drop(engine: DockerEngine, image_id: str) -> None:
    """Every tag and digest reference of the image, so the engine no longer has it."""
    engine.remove_image(image_id, force=True)
    with pytest.raises(ImageNotFound):
        engine.inspect_image(image_id)


def test_push_remove_pull_by_digest_and_refuse_another(
    settings: Settings, client: docker.DockerClient
) -> None:
    engine = DockerEngine(client)
    tag, image_id = _image(client, "registry-probe")
    sub_tag = submission_tag(settings, 7, "image")
    engine.tag_image(image_id, sub_tag)
    ref = publish(engine, settings, image_id, "image", 7)
    assert ref is not None
    # Recorded within the registry; the name is the submission's tag's.
    assert ref.startswith(f"{sub_tag.rpartition(':')[0]}@sha256:"), ref
    # The registry's name holds nothing locally: removing the image's own tags removes it.
    held = engine.inspect_image(image_id)
    assert sorted(held["RepoTags"]) == sorted([tag, sub_tag])
    _drop(engine, image_id)

    # Another node reaches the same registry by another address.
    address = str(settings.image_registry).replace("127.0.0.1", "localhost")
    elsewhere = settings.model_copy(update={"image_registry": address})
    ensure_local(engine, elsewhere, image_id, ref, tag=sub_tag)
    pulled = engine.inspect_image(sub_tag)
    assert pulled["Id"] == image_id
    assert pulled["RepoTags"] == [sub_tag] and pulled["RepoDigests"] == []

    # A reference by digest to another image (the registry serving something else).
    other_tag, other_id = _image(client, "registry-other")
    other_ref = publish(engine, settings, other_id, "image", 8)
    assert other_ref is not None and other_ref != ref
    # Releasing the submission (its tag) removes the pulled image, digest reference and all.
    engine.remove_image(sub_tag)
    with pytest.raises(ImageNotFound):
        engine.inspect_image(image_id)
    with pytest.raises(ImageMismatch) as caught:
        ensure_local(engine, settings, image_id, other_ref, tag=sub_tag)
    message = str(caught.value)
    assert "refusing" in message and image_id in message and other_id in message
    with pytest.raises(ImageNotFound):
        engine.inspect_image(image_id)
    with pytest.raises(ImageNotFound):
        engine.inspect_image(sub_tag)  # the refused image was not tagged as the submission's
    # The other image is still held under its own tag; only the pulled reference went.
    assert engine.inspect_image(other_tag)["Id"] == other_id
    engine.remove_image(other_id, force=True)


def test_a_case_run_pulls_the_image_the_intake_pushed(
    settings: Settings, client: docker.DockerClient, tmp_path: Path, sent_tasks: list[Any]
) -> None:
    settings = settings.model_copy(update={"allow_unsized_output": True})
    with TestClient(create_app(settings)) as api:
        admin = user_token(settings, "admin", admin=True)
        ds = images.write_ct_dataset(tmp_path / "test", [("P000", 40, 1, 0)])
        assert apply_bundle(api, admin, stoic_bundle(), {"test": ds}).status_code == 200
        tag, image_id = _image(client, "registry-algorithm")
        archive = images.save_image(client, [tag], tmp_path / "algo.tar")
        client.images.remove(image_id, force=True)
        r = submit_blob(api, user_token(settings, "alice"), data=archive.read_bytes())
        assert r.status_code == 201, r.text
        sid = int(r.json()["id"])

        pipeline.run_job(settings, _pending(settings, sid, "validate"))
        with session_scope(settings) as session:
            sub = session.get(Submission, sid)
            assert sub is not None and sub.image_id == image_id
            ref = sub.image_ref
        assert ref is not None and ref.startswith("heldout-")
        engine = DockerEngine(client)
        _drop(engine, image_id)  # this node never had it, as on another node

        pipeline.run_job(settings, _pending(settings, sid, "infer"))
        with session_scope(settings) as session:
            (infer,) = session.scalars(
                select(Job).where(Job.submission_id == sid, Job.kind == "infer")
            )
            assert infer.status == "succeeded", (infer.failure_code, infer.operator_detail)
        held = engine.inspect_image(image_id)
        assert submission_tag(settings, sid, "image") in held["RepoTags"]
    engine.remove_image(image_id, force=True)


def _pending(settings: Settings, sid: int, kind: str) -> int:
    with session_scope(settings) as session:
        (job_id,) = session.scalars(
            select(Job.id).where(
                Job.submission_id == sid, Job.kind == kind, Job.status == "pending"
            )
        )
        return int(job_id)
