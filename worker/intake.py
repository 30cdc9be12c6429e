"""Intake of an uploaded `docker save` archive (.tar, .tar.gz; legacy or OCI layout).

    info = inspect_archive(path)                 # streaming checks, no engine involved
    image = load_image(engine, path, tag=...)    # inspect_archive, docker load, image checks

Archives may be several GB: both passes stream the file and never hold a layer in
memory. The archive's own tags are stripped before `docker load` (a participant's archive
tagged `heldout/evaluation:latest` must not replace the platform's image); the caller
passes the tag the platform wants instead. Every refusal raises `IntakeError` with a
sentence the participant can act on.

Checked here: the outer archive and the image config it carries (before loading, so a
root image is refused without unpacking GBs). Layer tarballs are unpacked by the engine
itself, which confines them to the layer directory.
"""

from __future__ import annotations

import json
import logging
import shutil
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The engine-free checks live with the client, which runs them before uploading.
from heldout.archive import (
    METADATA,
    OCI_NAME_KEYS,
    READ_CHUNK,
    GiB,
    HashingReader,
    IntakeError,
    IntakeLimits,
    MiB,
    archive_members,
    check_config,
    check_member,
    inspect_archive,
    read_small,
    sha256_file,
)
from worker.executor.engine import ArchiveRefused, Engine, EngineError, resolve_user

__all__ = [
    "GiB",
    "HashingReader",
    "IntakeError",
    "IntakeLimits",
    "LoadedImage",
    "MiB",
    "check_config",
    "check_image",
    "check_member",
    "inspect_archive",
    "load_image",
    "sha256_file",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadedImage:
    image_id: str
    tags: list[str]
    size_bytes: int
    user: str
    entrypoint: list[str] | None
    cmd: list[str] | None
    archive_sha256: str


# ---------------------------------------------------------------------------------------
# Pass 2: docker load, without the archive's own tags


def _untagged_stream(path: Path) -> Iterator[bytes]:
    """The archive re-emitted as an uncompressed tar with its tag metadata stripped."""
    with open(path, "rb") as raw:
        for member, tar in archive_members(raw):
            name = check_member(member)
            if name == "repositories":
                continue  # legacy tags; unused when manifest.json is present
            if name in METADATA:
                data = _strip_tags(name, read_small(tar, member, 64 * MiB))
                member = tarfile.TarInfo(member.name)
                member.size = len(data)
                yield member.tobuf(tarfile.PAX_FORMAT)
                yield data + _padding(len(data))
                continue
            yield member.tobuf(tarfile.PAX_FORMAT)
            if member.isreg():
                f = tar.extractfile(member)
                assert f is not None
                while chunk := f.read(READ_CHUNK):
                    yield chunk
                yield _padding(member.size)
    yield b"\0" * (2 * tarfile.BLOCKSIZE)


def _padding(size: int) -> bytes:
    return b"\0" * (-size % tarfile.BLOCKSIZE)


def _strip_tags(name: str, data: bytes) -> bytes:
    doc = json.loads(data)  # parsed once already by inspect_archive
    entries = doc if name == "manifest.json" else doc.get("manifests", [])
    for entry in entries:
        if name == "manifest.json":
            entry["RepoTags"] = None
        elif isinstance(entry.get("annotations"), dict):
            for key in OCI_NAME_KEYS:
                entry["annotations"].pop(key, None)
    return json.dumps(doc).encode()


def load_image(
    engine: Engine,
    path: Path,
    *,
    tag: str | None = None,
    limits: IntakeLimits = IntakeLimits(),
) -> LoadedImage:
    """Check, load and vet an uploaded image archive; tag it `tag` ("repo:tag") if given.

    A refused image is removed again, unless the engine already had it before.
    """
    info = inspect_archive(path, limits)
    _check_free_disk(engine, info.expanded_bytes)
    # Without a known id assume it existed: never delete an image this call did not add.
    existed = info.image_id is None or engine.has_image(info.image_id)
    try:
        loaded = engine.load_archive(_untagged_stream(path))
    except ArchiveRefused as e:
        raise IntakeError(f"Docker could not load the archive: {str(e)[:300]}") from e
    except EngineError as e:
        log.error("docker load failed: %s", e)
        raise IntakeError("The platform could not load the image.", platform_caused=True) from e
    if len(loaded) != 1:
        raise IntakeError(f"Docker loaded {len(loaded)} images from the archive; expected one.")
    (loaded_id,) = loaded
    attrs = engine.inspect_image(loaded_id)
    image_id = str(attrs["Id"])
    if info.image_id is not None and image_id != info.image_id:
        raise IntakeError("The loaded image does not match the archive's manifest.")
    try:
        check_image(engine, attrs, limits)
    except IntakeError:
        if not existed:
            engine.remove_image(image_id, force=True)
        raise
    tags: list[str] = []
    if tag:
        engine.tag_image(image_id, tag)
        tags.append(tag if ":" in tag else f"{tag}:latest")
    config = attrs.get("Config") or {}
    return LoadedImage(
        image_id=image_id,
        tags=tags,
        size_bytes=int(attrs.get("Size") or 0),
        user=config.get("User") or "",
        entrypoint=config.get("Entrypoint"),
        cmd=config.get("Cmd"),
        archive_sha256=info.sha256,
    )


def check_image(engine: Engine, attrs: dict[str, Any], limits: IntakeLimits) -> None:
    """The loaded image's own checks: its config again, size, and the uid of its USER."""
    config = attrs.get("Config") or {}
    check_config(attrs.get("Os"), attrs.get("Architecture"), config)
    user = config.get("User") or ""
    size = int(attrs.get("Size") or 0)
    if size > limits.max_image_bytes:
        raise IntakeError(
            f"The image is {size / 1e9:.1f} GB; the limit is {limits.max_image_bytes / 1e9:.1f} GB."
        )
    # A USER name may still map to uid 0 in the image's own /etc/passwd.
    wanted = ["/etc/passwd", "/etc/group"] if ":" in user else ["/etc/passwd"]
    files = engine.read_image_files(attrs["Id"], wanted, labels={"heldout.intake": "1"})
    passwd_file, group_file = files["/etc/passwd"], files.get("/etc/group")
    passwd = passwd_file.text() if passwd_file else None
    group = group_file.text() if group_file else None
    ids = resolve_user(user, passwd, group)
    if ids is None:
        raise IntakeError(f"The image's USER {user!r} is not defined in its /etc/passwd.")
    if ids[0] == 0:
        raise IntakeError(f"The image's USER {user!r} has uid 0 (root); use a non-root user.")


def _check_free_disk(engine: Engine, needed: int) -> None:
    root = engine.storage_root()
    if root is None:
        return  # a remote engine: its disk is not ours to measure
    free = shutil.disk_usage(root).free
    if free < 2 * needed:  # the layers land once in the engine's temp dir, once unpacked
        raise IntakeError(
            "The worker lacks the disk space to load this image; it will be retried.",
            platform_caused=True,
        )
