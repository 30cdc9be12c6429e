"""Images travel through a real registry by digest (Debian's docker-registry on loopback,
plain HTTP, which the engine allows for 127.0.0.0/8 unconfigured, with htpasswd
credentials; scripts/start-services.sh starts it as HELDOUT_TEST_REGISTRY): pushed where
they are loaded, gone from the engine, pulled back by digest with the same image id,
refused when a reference names another image, and nothing for whoever lacks the
credentials. A T2 submission's image, pushed at intake and removed from the engine, comes
back for its first case run."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
import requests
from fastapi.testclient import TestClient
from pydantic import SecretStr
from sqlalchemy import select

from server.app import create_app
from server.config import Settings
from server.db import session_scope
from server.jobs.models import Job
from server.submissions.models import Submission
from tests.conftest import REGISTRY, REGISTRY_AUTH, _sqlite_settings, need
from tests.support import images
from tests.support.factories import apply_bundle, stoic_bundle, submit_blob, user_token
from worker import pipeline
from worker.executor.docker_engine import DockerEngine
from worker.executor.engine import ImageNotFound, RegistryError
from worker.executor.sized_dir import unmount_all_under
from worker.images import submission_tag
from worker.registry import ImageMismatch, ensure_local, publish
from worker.steps import InfrastructureError

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
    need(all(REGISTRY_AUTH.values()), "the registry's credentials (HELDOUT_TEST_REGISTRY_USER)")
    try:
        answer = requests.get(f"http://{REGISTRY}/v2/", timeout=5).status_code
    except requests.RequestException as exc:
        pytest.fail(f"the registry at {REGISTRY} does not answer: {exc}")
    assert answer == 401, f"the registry at {REGISTRY} lets anyone in (HTTP {answer})"
    base = _sqlite_settings(tmp_path, tmp_path_factory)
    user, password = REGISTRY_AUTH["image_registry_user"], REGISTRY_AUTH["image_registry_password"]
    yield base.model_copy(
        update={
            "image_registry": REGISTRY,
            "image_registry_user": user,
            "image_registry_password": SecretStr(str(password)),
        }
    )
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


def test_no_one_gets_in_without_the_registrys_credentials(
    settings: Settings, client: docker.DockerClient
) -> None:
    """What a build step that reaches the registry (builds have network) could try: list
    the repositories, read a manifest, pull a pushed image, push over it."""
    engine = DockerEngine(client)
    _, image_id = _image(client, "registry-private")
    ref = publish(engine, settings, image_id, "image", 9)
    assert ref is not None
    name, _, digest = ref.partition("@")
    for path in ("_catalog", f"{name}/tags/list", f"{name}/manifests/{digest}"):
        r = requests.get(f"http://{REGISTRY}/v2/{path}", timeout=10)
        assert r.status_code == 401, (path, r.status_code, r.text[:200])
    # The one with the credentials lists it.
    listed = requests.get(f"http://{REGISTRY}/v2/_catalog", auth=settings.registry_auth, timeout=10)
    assert listed.status_code == 200 and name in listed.json()["repositories"]
    # What pruning asks before it drops a copy: the registry serves the reference, to the
    # credentials only; another digest it does not.
    assert engine.registry_holds(f"{REGISTRY}/{ref}", settings.registry_auth)
    assert not engine.registry_holds(f"{REGISTRY}/{ref}")
    assert not engine.registry_holds(f"{REGISTRY}/{name}@sha256:{'0' * 64}", settings.registry_auth)
    _drop(engine, image_id)
    with pytest.raises(RegistryError, match=r"(?i)auth|unauthorized|denied"):
        engine.pull_image(f"{REGISTRY}/{ref}")
    with pytest.raises(RegistryError, match=r"(?i)auth|unauthorized|denied"):
        engine.pull_image(f"{REGISTRY}/{ref}", ("heldout", "not-the-password"))
    anonymous = settings.model_copy(
        update={"image_registry_user": None, "image_registry_password": None}
    )
    with pytest.raises(InfrastructureError, match="could not be pulled"):
        ensure_local(engine, anonymous, image_id, ref)
    ensure_local(engine, settings, image_id, ref)
    assert engine.inspect_image(image_id)["Id"] == image_id
    engine.remove_image(image_id, force=True)


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
