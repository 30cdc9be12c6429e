"""Content-addressed artifact store on disk: `sha256:<hex>` names a file by its content.

Writes stream through a temporary file in the same filesystem and are renamed into place, so
a reader never sees half a file and the same content is stored once.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tarfile
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from server.errors import BadRequest, NotFound, TooLarge

CHUNK = 1024 * 1024


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    return "sha256:" + h.hexdigest()


class ArtifactStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "sha256").mkdir(parents=True, exist_ok=True)
        (root / "tmp").mkdir(parents=True, exist_ok=True)

    def path(self, digest: str) -> Path:
        algo, _, hexd = digest.partition(":")
        if algo != "sha256" or len(hexd) != 64 or not all(c in "0123456789abcdef" for c in hexd):
            raise NotFound(f"not a sha256 digest: {digest!r}", field="digest")
        return self.root / "sha256" / hexd[:2] / hexd

    def exists(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def tmp_path(self) -> Path:
        fd, name = tempfile.mkstemp(dir=self.root / "tmp")
        os.close(fd)
        return Path(name)

    def adopt(self, tmp: Path, digest: str) -> Path:
        """Move a fully written temporary file into place under its digest."""
        dest = self.path(digest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        if dest.exists():
            tmp.unlink(missing_ok=True)
        else:
            os.chmod(tmp, 0o444)
            os.replace(tmp, dest)
        return dest

    def link_in(self, src: Path, digest: str) -> None:
        """Give a complete file its digest's name too (a hard link, src stays): a crash
        right after leaves the content stored, never half a file."""
        dest = self.path(digest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):  # the same content is stored already
            os.link(src, dest)

    def seal(self, digest: str) -> None:
        os.chmod(self.path(digest), 0o444)

    def put_chunks(self, chunks: Iterable[bytes], max_bytes: int | None = None) -> tuple[str, int]:
        tmp = self.tmp_path()
        try:
            digest, size = _write_hashed(tmp, chunks, max_bytes)
            self.adopt(tmp, digest)
            return digest, size
        finally:
            tmp.unlink(missing_ok=True)

    def put_verified(
        self, chunks: Iterable[bytes], digest: str, max_bytes: int | None = None
    ) -> int:
        """Store content that must hash to `digest` (a node sending an output back): checked
        before it gets its name, so on a mismatch nothing is stored. Returns its size."""
        self.path(digest)  # NotFound for anything but a sha256 digest
        tmp = self.tmp_path()
        try:
            try:
                got, size = _write_hashed(tmp, chunks, max_bytes)
            except ValueError as exc:
                raise TooLarge(f"{exc}; nothing was stored") from exc
            if got != digest:
                raise BadRequest(
                    f"the content's digest is {got}, not {digest}; nothing was stored",
                    field="digest",
                )
            self.adopt(tmp, digest)
            return size
        finally:
            tmp.unlink(missing_ok=True)

    def put_file(self, src: Path) -> tuple[str, int]:
        with src.open("rb") as f:
            return self.put_stream(f)

    def put_stream(self, f: BinaryIO) -> tuple[str, int]:
        return self.put_chunks(iter(lambda: f.read(CHUNK), b""))

    def put_bytes(self, data: bytes) -> str:
        return self.put_chunks([data])[0]

    def read_bytes(self, digest: str) -> bytes:
        path = self.path(digest)
        if not path.is_file():
            raise NotFound(f"artifact {digest} is not in the store")
        return path.read_bytes()

    @contextmanager
    def open(self, digest: str) -> Iterator[BinaryIO]:
        path = self.path(digest)
        if not path.is_file():
            raise NotFound(f"artifact {digest} is not in the store")
        with path.open("rb") as f:
            yield f

    def copy_to(self, digest: str, dest: Path) -> None:
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.path(digest), dest)


def _write_hashed(tmp: Path, chunks: Iterable[bytes], max_bytes: int | None) -> tuple[str, int]:
    """Write chunks to tmp, hashing as they go: (digest, size). ValueError past max_bytes."""
    h = hashlib.sha256()
    size = 0
    with tmp.open("wb") as f:
        for chunk in chunks:
            size += len(chunk)
            if max_bytes is not None and size > max_bytes:
                raise ValueError(f"content exceeds {max_bytes} bytes")
            h.update(chunk)
            f.write(chunk)
    return "sha256:" + h.hexdigest(), size


def extract_tar(archive: Path, dest: Path) -> None:
    """Unpack a tar (plain or compressed) into dest: no absolute names, no '..', no links
    leading out, no devices, no setuid bits, no foreign owners.

    Raises tarfile.TarError naming the first entry that breaks a rule.
    """
    with tarfile.open(archive, "r:*") as tar:
        _extract_checked(tar, dest)


# tarfile's extraction filters arrived in Python 3.11.4; Debian bookworm's 3.11.2 (which the
# composed server image runs) has none, and there the sanitizing below does their part.
_HAS_FILTERS = hasattr(tarfile, "data_filter")


def _extract_checked(tar: tarfile.TarFile, dest: Path, *, filters: bool = _HAS_FILTERS) -> None:
    root = os.path.realpath(dest)

    def inside(path: str) -> bool:
        return os.path.commonpath([root, os.path.realpath(path)]) == root

    # One entry at a time, so that links unpacked earlier count when later names resolve.
    for member in tar:
        name = member.name
        if name.startswith("/") or ".." in name.split("/") or not inside(os.path.join(root, name)):
            raise tarfile.TarError(f"entry {name!r} lies outside the destination")
        if not (member.isfile() or member.isdir() or member.issym() or member.islnk()):
            raise tarfile.TarError(f"entry {name!r} is a device, FIFO or unknown type")
        if member.issym():
            target = os.path.join(root, os.path.dirname(name), member.linkname)
            if member.linkname.startswith("/") or not inside(target):
                raise tarfile.TarError(f"link {name!r} points outside the destination")
        elif member.islnk() and not inside(os.path.join(root, member.linkname)):
            raise tarfile.TarError(f"link {name!r} points outside the destination")
        if filters:
            tar.extract(member, root, filter="data")
            continue
        member.mode = (member.mode or 0o644) & 0o755 | (0o600 if member.isfile() else 0o700)
        member.uid, member.gid = os.getuid(), os.getgid()
        member.uname = member.gname = ""
        tar.extract(member, root)
