"""The model tarball an algorithm brings: unpacked for /opt/ml/model, checked first."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from worker.model import ModelError, extract_model


def _tar(path: Path, entries: list[tarfile.TarInfo], data: bytes = b"w") -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for info in entries:
            if info.isfile():
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(info)
    return path


def _file(name: str) -> tarfile.TarInfo:
    return tarfile.TarInfo(name)


def _link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


def test_a_model_unpacks_readable(tmp_path: Path) -> None:
    archive = _tar(tmp_path / "m.tar.gz", [_file("weights/model.json"), _file("README")])
    dest = extract_model(archive, tmp_path / "model", max_bytes=1024, max_entries=10)
    assert (dest / "weights" / "model.json").read_bytes() == b"w"
    assert (dest / "weights" / "model.json").stat().st_mode & 0o004


@pytest.mark.parametrize(
    "entry",
    [
        _file("/etc/cron.d/x"),
        _file("../outside"),
        _file("a/../../outside"),
        _link("escape", "../../etc"),
        _link("abs", "/etc/passwd"),
        _link("hard", "../x", tarfile.LNKTYPE),
    ],
    ids=["absolute", "dotdot", "nested-dotdot", "symlink-out", "symlink-abs", "hardlink-out"],
)
def test_hostile_entries_are_refused(tmp_path: Path, entry: tarfile.TarInfo) -> None:
    archive = _tar(tmp_path / "m.tar.gz", [entry])
    with pytest.raises(ModelError, match="cannot be unpacked"):
        extract_model(archive, tmp_path / "d" / "model", max_bytes=1024, max_entries=10)
    assert not (tmp_path / "outside").exists() and not (tmp_path / "d" / "outside").exists()


def test_size_and_entry_caps(tmp_path: Path) -> None:
    big = _tar(tmp_path / "big.tar.gz", [_file("w")], data=b"\0" * 4096)
    with pytest.raises(ModelError, match="expands to more than"):
        extract_model(big, tmp_path / "a", max_bytes=1024, max_entries=10)
    assert not (tmp_path / "a").exists()  # refused before anything was written
    many = _tar(tmp_path / "many.tar.gz", [_file(f"f{i}") for i in range(11)])
    with pytest.raises(ModelError, match="more than 10 entries"):
        extract_model(many, tmp_path / "b", max_bytes=1 << 20, max_entries=10)
    (tmp_path / "junk.tar.gz").write_bytes(b"not a tarball")
    with pytest.raises(ModelError):
        extract_model(tmp_path / "junk.tar.gz", tmp_path / "c", max_bytes=1024, max_entries=10)
