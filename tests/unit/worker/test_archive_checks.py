"""Streaming checks of uploaded image archives, on crafted tars (no engine needed)."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from pathlib import Path
from typing import Any

import pytest

from worker.intake import (
    IntakeError,
    IntakeLimits,
    _untagged_stream,
    inspect_archive,
    sha256_file,
)

CONFIG = "a" * 64
MANIFEST = [
    {
        "Config": f"{CONFIG}.json",
        "RepoTags": ["heldout/evaluation:latest"],
        "Layers": ["l1/layer.tar"],
    }
]


def entry(name: str, data: bytes = b"", **kw: object) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    for k, v in kw.items():
        setattr(info, k, v)
    return info, data


IMAGE_CONFIG: dict[str, Any] = {
    "architecture": "amd64",
    "os": "linux",
    "config": {"User": "algorithm", "Entrypoint": ["python3", "-m", "process"]},
}


def valid_entries(
    manifest: object = MANIFEST, config: dict[str, Any] = IMAGE_CONFIG
) -> list[tuple[tarfile.TarInfo, bytes]]:
    return [
        entry(f"{CONFIG}.json", json.dumps(config).encode()),
        entry("l1", type=tarfile.DIRTYPE),
        entry("l1/layer.tar", b"\0" * 2048),
        # docker save deduplicates a repeated layer with a relative symlink
        entry("l2", type=tarfile.DIRTYPE),
        entry("l2/layer.tar", type=tarfile.SYMTYPE, linkname="../l1/layer.tar"),
        entry("manifest.json", json.dumps(manifest).encode()),
        entry("repositories", b'{"heldout/evaluation": {"latest": "l1"}}'),
    ]


def write_tar(path: Path, entries: list[tuple[tarfile.TarInfo, bytes]], gz: bool = False) -> Path:
    with tarfile.open(path, "w:gz" if gz else "w") as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return path


def refused(path: Path, limits: IntakeLimits = IntakeLimits()) -> str:
    with pytest.raises(IntakeError) as err:
        inspect_archive(path, limits)
    assert not err.value.platform_caused
    return err.value.reason


@pytest.mark.parametrize("gz", [False, True])
def test_a_valid_archive_passes(tmp_path: Path, gz: bool) -> None:
    path = write_tar(tmp_path / "img.tar", valid_entries(), gz=gz)
    info = inspect_archive(path)
    assert info.layout == "docker" and info.image_id == f"sha256:{CONFIG}"
    assert info.members == 7 and info.archive_bytes == path.stat().st_size
    assert info.sha256 == hashlib.sha256(path.read_bytes()).hexdigest() == sha256_file(path)


def oci_archive(path: Path, config: dict[str, Any]) -> Path:
    index = {
        "schemaVersion": 2,
        "manifests": [
            {"digest": "sha256:" + "b" * 64, "annotations": {"io.containerd.image.name": "x:1"}},
        ],
    }
    manifest = {"config": {"digest": "sha256:" + "c" * 64}, "layers": []}
    return write_tar(
        path,
        [
            entry("oci-layout", b'{"imageLayoutVersion": "1.0.0"}'),
            entry("blobs/sha256/" + "c" * 64, json.dumps(config).encode()),
            entry("blobs/sha256/" + "b" * 64, json.dumps(manifest).encode()),
            entry("index.json", json.dumps(index).encode()),
        ],
    )


def test_oci_layout_with_one_image_passes(tmp_path: Path) -> None:
    info = inspect_archive(oci_archive(tmp_path / "oci.tar", IMAGE_CONFIG))
    assert info.layout == "oci" and info.image_id == "sha256:" + "c" * 64


@pytest.mark.parametrize(
    ("config", "reason"),
    [
        ({"User": ""}, "has no USER"),
        ({"User": "root"}, "runs as 'root'"),
        ({"User": "0:0"}, "runs as '0:0'"),
        ({"Entrypoint": None, "Cmd": None}, "neither an ENTRYPOINT nor a CMD"),
    ],
)
def test_bad_image_configs_are_refused_from_the_archive(
    tmp_path: Path, config: dict[str, Any], reason: str
) -> None:
    bad = {**IMAGE_CONFIG, "config": {**IMAGE_CONFIG["config"], **config}}
    assert reason in refused(write_tar(tmp_path / "bad.tar", valid_entries(config=bad)))
    assert reason in refused(oci_archive(tmp_path / "bad-oci.tar", bad))


def test_foreign_platforms_are_refused_from_the_archive(tmp_path: Path) -> None:
    arm = {**IMAGE_CONFIG, "architecture": "arm64"}
    assert "built for linux/arm64" in refused(
        write_tar(tmp_path / "arm.tar", valid_entries(config=arm))
    )


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (entry("../evil", b"x"), "points outside the archive"),
        (entry("l1/../../evil", b"x"), "points outside the archive"),
        (entry("/etc/cron.d/evil", b"x"), "absolute or malformed path"),
        (entry("link", type=tarfile.SYMTYPE, linkname="/etc/passwd"), "absolute or malformed"),
        (entry("link", type=tarfile.SYMTYPE, linkname="../../etc/passwd"), "outside the archive"),
        (entry("l1/link", type=tarfile.SYMTYPE, linkname="../.."), "outside the archive"),
        # lexically inside, but wrong once l1 is itself a link: refused outright
        (entry("link", type=tarfile.SYMTYPE, linkname="l1/../x"), "outside the archive"),
        (entry("hard", type=tarfile.LNKTYPE, linkname="../x"), "outside the archive"),
        (entry("dev", type=tarfile.CHRTYPE, devmajor=1, devminor=3), "a character device"),
        (entry("disk", type=tarfile.BLKTYPE, devmajor=8, devminor=0), "a block device"),
        (entry("fifo", type=tarfile.FIFOTYPE), "a FIFO"),
        (entry("manifest.json", b"[]"), "lists 'manifest.json' twice"),
    ],
)
def test_unsafe_members_are_refused(
    tmp_path: Path, bad: tuple[tarfile.TarInfo, bytes], reason: str
) -> None:
    path = write_tar(tmp_path / "bad.tar", [*valid_entries(), bad])
    assert reason in refused(path)


def test_two_images_are_refused(tmp_path: Path) -> None:
    two = [*MANIFEST, {"Config": "c" * 64 + ".json", "RepoTags": None, "Layers": []}]
    assert "holds 2 images" in refused(write_tar(tmp_path / "two.tar", valid_entries(two)))
    # Two tags of one image are one image.
    same = [*MANIFEST, {**MANIFEST[0], "RepoTags": ["other:tag"]}]
    assert inspect_archive(write_tar(tmp_path / "same.tar", valid_entries(same))).image_id


def test_not_an_image(tmp_path: Path) -> None:
    plain = write_tar(tmp_path / "plain.tar", [entry("hello.txt", b"hi")])
    assert "neither manifest.json nor index.json" in refused(plain)
    garbage = tmp_path / "garbage.tar"
    garbage.write_bytes(b"MZ\x90\x00 this is not a tar" * 100)
    assert "not a readable tar archive" in refused(garbage)
    truncated_gz = tmp_path / "truncated.tar.gz"
    truncated_gz.write_bytes(gzip.compress((tmp_path / "plain.tar").read_bytes())[:60])
    assert "not a readable tar archive" in refused(truncated_gz)
    bad_manifest = write_tar(tmp_path / "m.tar", [entry("manifest.json", b'{"not": "a list"}')])
    assert "manifest is malformed" in refused(bad_manifest)


def test_size_caps(tmp_path: Path) -> None:
    path = write_tar(tmp_path / "img.tar", valid_entries())
    assert "the limit is" in refused(path, IntakeLimits(max_archive_bytes=1000))
    # A gzip bomb: tiny compressed, large uncompressed; stops at the uncompressed cap.
    bomb = write_tar(tmp_path / "bomb.tar.gz", [entry("zeros", b"\0" * 5_000_000)], gz=True)
    assert bomb.stat().st_size < 50_000
    assert "unpacks to more than" in refused(bomb, IntakeLimits(max_uncompressed_bytes=1_000_000))
    assert "more than 3 entries" in refused(path, IntakeLimits(max_members=3))
    huge_manifest = valid_entries([{**MANIFEST[0], "pad": "x" * 5000}])
    assert "not a small regular file" in refused(
        write_tar(tmp_path / "hm.tar", huge_manifest), IntakeLimits(max_metadata_bytes=4096)
    )


@pytest.mark.parametrize("gz", [False, True])
def test_load_stream_strips_the_archives_tags(tmp_path: Path, gz: bool) -> None:
    path = write_tar(tmp_path / "img.tar", valid_entries(), gz=gz)
    rebuilt = b"".join(_untagged_stream(path))
    with tarfile.open(fileobj=io.BytesIO(rebuilt)) as tar:
        names = tar.getnames()
        manifest = json.loads(tar.extractfile("manifest.json").read())  # type: ignore[union-attr]
        layer = tar.extractfile("l1/layer.tar").read()  # type: ignore[union-attr]
        link = tar.getmember("l2/layer.tar")
    assert "repositories" not in names
    assert manifest == [{**MANIFEST[0], "RepoTags": None}]
    assert layer == b"\0" * 2048 and link.issym() and link.linkname == "../l1/layer.tar"
