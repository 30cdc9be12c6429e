"""Image intake on the real engine: real `docker save` archives load, bad ones are refused
with the participant-facing reason, and the engine's own images and tags stay untouched."""

from __future__ import annotations

import contextlib
import io
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest

from tests.conftest import need
from tests.support import images as im
from worker.executor.docker_engine import DockerEngine
from worker.intake import IntakeError, IntakeLimits, load_image

pytestmark = [pytest.mark.docker, pytest.mark.slow]

LOADED_TAG = "heldout-test/intake-loaded:1"
# A USER whose name is not root but whose uid is 0: only the loaded image shows it.
TOOR: dict[str, Any] = {
    "user": "toor",
    "extra": "USER root\nRUN useradd -o -u 0 -g 0 toor\nUSER toor",
}


@pytest.fixture(scope="module")
def client() -> Iterator[docker.DockerClient]:
    c = im.client_or_none()
    need(c is not None, "a Docker engine")
    assert c is not None
    yield c
    assert c.containers.list(all=True, filters={"label": "heldout.intake=1"}) == []


def _remove(client: docker.DockerClient, ref: str) -> None:
    with contextlib.suppress(docker.errors.ImageNotFound):
        client.images.remove(ref, force=True)


def _gone(client: docker.DockerClient, ref: str) -> bool:
    try:
        client.images.get(ref)
        return False
    except docker.errors.ImageNotFound:
        return True


def saved_then_removed(
    client: docker.DockerClient,
    tmp_path: Path,
    name: str,
    script: str,
    *,
    gz: bool = False,
    **build: object,
) -> tuple[Path, str]:
    """Build an image, `docker save` it, remove it from the engine: a fresh upload."""
    # The marker makes the image this test's own: no other tag shares its id.
    tag = im.build_image(client, name, f"{script}\n# {tmp_path.name}\n", **build)  # type: ignore[arg-type]
    image_id = client.images.get(tag).id
    archive = im.save_image(client, [tag], tmp_path / f"{name}.tar{'.gz' if gz else ''}", gz=gz)
    _remove(client, image_id)
    assert _gone(client, image_id)
    return archive, image_id


def refused(client: docker.DockerClient, archive: Path, **kw: object) -> str:
    with pytest.raises(IntakeError) as err:
        load_image(DockerEngine(client), archive, **kw)  # type: ignore[arg-type]
    assert not err.value.platform_caused
    return err.value.reason


@pytest.mark.parametrize("gz", [False, True])
def test_a_real_archive_loads_under_the_platforms_tag_only(
    client: docker.DockerClient, tmp_path: Path, gz: bool
) -> None:
    archive, image_id = saved_then_removed(client, tmp_path, "intake-ok", im.WELL_BEHAVED, gz=gz)
    try:
        loaded = load_image(DockerEngine(client), archive, tag=LOADED_TAG)
        assert loaded.image_id == image_id
        assert loaded.tags == [LOADED_TAG]
        assert loaded.user == "algorithm"
        assert loaded.entrypoint == ["/bin/sh", "-c", "python3 -u /opt/algorithm/process.py $0 $@"]
        assert 100e6 < loaded.size_bytes < 1e9
        assert len(loaded.archive_sha256) == 64
        assert client.images.get(LOADED_TAG).id == image_id
        # The tag written inside the archive was not applied.
        assert _gone(client, "heldout-test/intake-ok:latest")
    finally:
        _remove(client, LOADED_TAG)


def test_an_archive_cannot_retag_a_platform_image(
    client: docker.DockerClient, tmp_path: Path
) -> None:
    # A participant's image tagged as the platform's base image, saved and uploaded.
    tag = im.build_image(client, "impostor", im.WELL_BEHAVED)
    client.images.get(tag).tag("heldout/base", "bookworm-impostor")
    base_before = client.images.get(im.BASE_IMAGE).id
    archive = im.save_image(client, ["heldout/base:bookworm-impostor"], tmp_path / "i.tar")
    _remove(client, "heldout/base:bookworm-impostor")
    loaded = load_image(DockerEngine(client), archive)
    assert loaded.tags == []
    assert _gone(client, "heldout/base:bookworm-impostor")
    assert client.images.get(im.BASE_IMAGE).id == base_before


def _retagged_manifest(archive: Path, dest: Path, tags: list[str], *, split: bool) -> Path:
    """The archive with its manifest naming `tags`: in one entry (`docker save REPO` on this
    engine) or one entry per tag for the same image (what newer engines write)."""
    import json

    with tarfile.open(archive) as src, tarfile.open(dest, "w") as out:
        for member in src.getmembers():
            f = src.extractfile(member) if member.isreg() else None
            if member.name == "manifest.json":
                assert f is not None
                (entry,) = json.loads(f.read())
                entries = (
                    [dict(entry, RepoTags=[t]) for t in tags]
                    if split
                    else [dict(entry, RepoTags=tags)]
                )
                data = json.dumps(entries).encode()
                member.size = len(data)
                out.addfile(member, io.BytesIO(data))
            else:
                out.addfile(member, f)
    return dest


@pytest.mark.parametrize("split", [False, True])
def test_several_tags_of_one_image_are_one_image(
    client: docker.DockerClient, tmp_path: Path, split: bool
) -> None:
    """`docker save REPO` of a repository with two tags writes one image under two names;
    it loads as that one image, under the platform's tag only."""
    archive, image_id = saved_then_removed(client, tmp_path, "intake-tags", im.WELL_BEHAVED)
    tags = ["heldout-test/intake-tags:latest", "heldout-test/intake-tags:v2"]
    two = _retagged_manifest(archive, tmp_path / "two-tags.tar", tags, split=split)
    try:
        loaded = load_image(DockerEngine(client), two, tag=LOADED_TAG)
        assert loaded.image_id == image_id and loaded.tags == [LOADED_TAG]
        assert all(_gone(client, t) for t in tags)
    finally:
        _remove(client, LOADED_TAG)


def test_two_images_are_refused(client: docker.DockerClient, tmp_path: Path) -> None:
    a = im.build_image(client, "intake-a", im.WELL_BEHAVED)
    b = im.build_image(client, "intake-b", im.NOOP)
    archive = im.save_image(client, [a, b], tmp_path / "two.tar")
    assert "holds 2 images" in refused(client, archive)


@pytest.mark.parametrize(
    ("build", "reason"),
    [
        ({"user": None}, "has no USER"),
        ({"user": "root"}, "runs as 'root'"),
        ({"user": "0:0"}, "runs as '0:0'"),
        (TOOR, "has uid 0"),
        ({"user": "ghost"}, "not defined in its /etc/passwd"),
        ({"entrypoint": False}, "neither an ENTRYPOINT nor a CMD"),
    ],
)
def test_bad_images_are_refused_and_removed(
    client: docker.DockerClient, tmp_path: Path, build: dict[str, Any], reason: str
) -> None:
    archive, image_id = saved_then_removed(client, tmp_path, "intake-bad", im.WELL_BEHAVED, **build)
    assert reason in refused(client, archive, tag=LOADED_TAG)
    assert _gone(client, image_id) and _gone(client, LOADED_TAG)


def test_refusing_an_image_the_engine_already_had_keeps_it(
    client: docker.DockerClient, tmp_path: Path
) -> None:
    # Refused only after loading (its USER maps to uid 0), but the engine had it before the
    # upload: the platform's copy and tag survive.
    tag = im.build_image(client, "intake-kept", im.WELL_BEHAVED, **TOOR)
    archive = im.save_image(client, [tag], tmp_path / "kept.tar")
    assert "has uid 0" in refused(client, archive)
    assert not _gone(client, tag)
    # The base image itself (root, no command) is refused from its archive alone.
    im.ensure_base_image(client)
    base = im.save_image(client, [im.BASE_IMAGE], tmp_path / "base.tar")
    assert "neither an ENTRYPOINT nor a CMD" in refused(client, base)
    assert not _gone(client, im.BASE_IMAGE)


def test_image_size_cap(client: docker.DockerClient, tmp_path: Path) -> None:
    archive, image_id = saved_then_removed(client, tmp_path, "intake-big", im.WELL_BEHAVED)
    assert "the limit is 0.1 GB" in refused(
        client, archive, limits=IntakeLimits(max_image_bytes=100_000_000)
    )
    assert _gone(client, image_id)


def test_crafted_archives_fail_before_the_engine_sees_them(
    client: docker.DockerClient, tmp_path: Path
) -> None:
    real = im.save_image(
        client, [im.build_image(client, "intake-a", im.WELL_BEHAVED)], tmp_path / "real.tar"
    )
    traversal = tmp_path / "traversal.tar"
    with tarfile.open(real) as src, tarfile.open(traversal, "w") as dst:
        for member in src:
            dst.addfile(member, src.extractfile(member) if member.isreg() else None)
        evil = tarfile.TarInfo("../../etc/cron.d/evil")
        evil.size = 4
        dst.addfile(evil, io.BytesIO(b"evil"))
    assert "points outside the archive" in refused(client, traversal)

    plain = tmp_path / "plain.tar"
    with tarfile.open(plain, "w") as tar:
        info = tarfile.TarInfo("model.pth")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"abc"))
    assert "not a Docker image" in refused(client, plain)

    zipfile = tmp_path / "submission.zip"
    zipfile.write_bytes(b"PK\x03\x04" + b"\0" * 4096)
    assert "not a readable tar archive" in refused(client, zipfile)
