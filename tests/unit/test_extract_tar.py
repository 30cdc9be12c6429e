"""Unpacking dataset and source archives: the same refusals on every Python 3.11, with
tarfile's 'data' filter (3.11.4+) and with heldout's own checks (bookworm's 3.11.2)."""

from __future__ import annotations

import io
import os
import stat
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from server import storage


def _stdlib(archive: Path, dest: Path) -> None:
    storage.extract_tar(archive, dest)


def _fallback(archive: Path, dest: Path) -> None:
    with tarfile.open(archive, "r:*") as tar:
        storage._extract_checked(tar, dest, filters=False)


Extract = Callable[[Path, Path], None]
pytestmark = pytest.mark.parametrize("extract", [_stdlib, _fallback], ids=["filter", "fallback"])


def _tar(path: Path, *entries: tarfile.TarInfo, gz: bool = False) -> Path:
    with tarfile.open(path, "w:gz" if gz else "w") as tar:
        for info in entries:
            data = b"x" * info.size if info.isfile() else None
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _entry(name: str, kind: bytes = tarfile.REGTYPE, **attrs: object) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = 3 if kind == tarfile.REGTYPE else 0
    for key, value in attrs.items():
        setattr(info, key, value)
    return info


def test_a_normal_archive_unpacks_with_safe_modes(extract: Extract, tmp_path: Path) -> None:
    archive = _tar(
        tmp_path / "ok.tar.gz",
        _entry("data", tarfile.DIRTYPE, mode=0o555),
        _entry("data/labels.csv", mode=0o644),
        _entry("data/run.sh", mode=0o4777, uid=0, gid=0),
        _entry("data/latest", tarfile.SYMTYPE, linkname="labels.csv"),
        _entry("data/copy.csv", tarfile.LNKTYPE, linkname="data/labels.csv"),
        gz=True,
    )
    dest = tmp_path / "out"
    dest.mkdir()
    extract(archive, dest)
    assert (dest / "data" / "labels.csv").read_bytes() == b"xxx"
    assert (dest / "data" / "latest").resolve() == (dest / "data" / "labels.csv").resolve()
    assert (dest / "data" / "copy.csv").read_bytes() == b"xxx"
    mode = stat.S_IMODE(os.stat(dest / "data" / "run.sh").st_mode)
    assert mode == 0o755  # executable kept; setuid and group/other write dropped
    # A read-only directory in the archive stays writable by its owner: removable afterwards.
    assert stat.S_IMODE(os.stat(dest / "data").st_mode) == 0o755


HOSTILE = {
    "absolute": [_entry("/etc/evil")],
    "dotdot": [_entry("../evil")],
    "nested-dotdot": [_entry("a/../../evil")],
    "through-link": [_entry("link", tarfile.SYMTYPE, linkname="/etc"), _entry("link/evil")],
    "link-out": [_entry("up", tarfile.SYMTYPE, linkname="../..")],
    "hardlink-out": [_entry("hard", tarfile.LNKTYPE, linkname="../outside")],
    "device": [_entry("dev", tarfile.CHRTYPE, devmajor=1, devminor=3)],
    "fifo": [_entry("fifo", tarfile.FIFOTYPE)],
}


@pytest.mark.parametrize("entries", list(HOSTILE.values()), ids=list(HOSTILE))
def test_hostile_entries_are_refused_by_name(
    extract: Extract, tmp_path: Path, entries: list[tarfile.TarInfo]
) -> None:
    archive = _tar(tmp_path / "bad.tar", *entries)
    dest = tmp_path / "out"
    dest.mkdir()
    (tmp_path / "outside").write_text("keep")
    with pytest.raises(tarfile.TarError) as err:
        extract(archive, dest)
    assert any(repr(e.name) in str(err.value) for e in entries), err.value
    assert not (tmp_path / "evil").exists() and not Path("/etc/evil").exists()
    assert (tmp_path / "outside").read_text() == "keep"
