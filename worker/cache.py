"""A node's artifact cache: files named by their sha256 digest, fetched once, bounded in
size and evicted least-recently-used.

Several worker processes of one node share the directory, so every rule holds through the
filesystem rather than in memory:
- a fetch writes to a temporary file in the cache's own filesystem, is checked against the
  digest it was asked for, and only then renamed into place: a reader never sees a partial
  or wrong file;
- one fetch per digest at a time (an exclusive `flock` on a lock file); a second asker waits
  and then finds the file;
- a job holds each file it uses with a shared `flock` until it ends, and eviction takes a
  file only if it can lock it exclusively: a file in use is never evicted. Locks vanish with
  the process holding them, so a killed worker pins nothing;
- recency is the file's mtime, set on every use.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

log = logging.getLogger(__name__)

HEX = frozenset("0123456789abcdef")


class Sink(Protocol):
    def write(self, data: bytes, /) -> int: ...


class DigestMismatch(Exception):
    """What arrived is not the content asked for; nothing was kept."""


class _HashingSink:
    def __init__(self, f: Sink) -> None:
        self.f, self.h, self.size = f, hashlib.sha256(), 0

    def write(self, data: bytes, /) -> int:
        self.h.update(data)
        self.size += len(data)
        return self.f.write(data)


class Pin:
    """A cached file a job is using: it stays until `release` (or the process ends)."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path, self._fd = path, fd

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # drops the shared lock
            self._fd = -1

    def __enter__(self) -> Pin:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def check_digest(digest: str) -> str:
    """The digest's hex part; ValueError for anything but `sha256:<64 hex>`."""
    algo, _, hexd = digest.partition(":")
    if algo != "sha256" or len(hexd) != 64 or not set(hexd) <= HEX:
        raise ValueError(f"not a sha256 digest: {digest[:80]!r}")
    return hexd


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


class ArtifactCache:
    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root, self.max_bytes = root, max_bytes
        for sub in ("sha256", "tmp", "locks"):
            (root / sub).mkdir(parents=True, exist_ok=True)

    def path(self, digest: str) -> Path:
        hexd = check_digest(digest)
        return self.root / "sha256" / hexd[:2] / hexd

    def has(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def size_bytes(self) -> int:
        return sum(size for _, _, size in self._entries())

    def get(self, digest: str, fetch: Callable[[Sink], None], *, size: int | None = None) -> Pin:
        """The cached file for `digest`, held for the caller; `fetch` writes its content when
        it is not cached yet (`size`, when known, makes room first). Raises DigestMismatch
        when the content fetched is not the digest's, ValueError when it cannot fit."""
        path = self.path(digest)
        if size is not None and size > self.max_bytes:
            raise ValueError(self._too_big(digest, size))
        # Lock stripes by the first two hex digits: a bounded number of lock files.
        with _locked(self.root / "locks" / f"{path.name[:2]}.lock"):
            pin = self._hold(path)
            if pin is not None:
                return pin
            self._make_room(size or 0)
            pin = self._fetch_into(path, digest, fetch)
        self._make_room(0)
        return pin

    def _too_big(self, digest: str, size: int) -> str:
        return (
            f"artifact {digest} ({size} bytes) is larger than the node's artifact cache "
            f"({self.max_bytes} bytes, HELDOUT_NODE_CACHE_BYTES)"
        )

    def _hold(self, path: Path) -> Pin | None:
        """Lock the cached file shared and mark it used; None when it is not (or no longer)
        there: an eviction may unlink it between our open and our lock."""
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        fcntl.flock(fd, fcntl.LOCK_SH)
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if not same:
            os.close(fd)
            return None
        now = time.time_ns()
        os.utime(path, ns=(now, now))
        return Pin(path, fd)

    def _fetch_into(self, path: Path, digest: str, fetch: Callable[[Sink], None]) -> Pin:
        fd, name = tempfile.mkstemp(dir=self.root / "tmp")
        tmp = Path(name)
        try:
            with os.fdopen(fd, "wb") as f:
                sink = _HashingSink(f)
                fetch(sink)
            got = "sha256:" + sink.h.hexdigest()
            if got != digest:
                raise DigestMismatch(f"artifact {digest}: the content that arrived is {got}")
            if sink.size > self.max_bytes:
                raise ValueError(self._too_big(digest, sink.size))
            os.chmod(tmp, 0o444)
            # Held before it has its name, so no eviction can take it in between.
            held = os.open(tmp, os.O_RDONLY)
            fcntl.flock(held, fcntl.LOCK_SH)
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.replace(tmp, path)
            except BaseException:
                os.close(held)
                raise
            now = time.time_ns()
            os.utime(path, ns=(now, now))
            return Pin(path, held)
        finally:
            tmp.unlink(missing_ok=True)

    def _entries(self) -> list[tuple[int, Path, int]]:
        """(last use, path, size) of every cached file, least recently used first."""
        out = []
        for path in (self.root / "sha256").glob("*/*"):
            with contextlib.suppress(FileNotFoundError):
                st = path.stat()
                out.append((st.st_mtime_ns, path, st.st_size))
        return sorted(out)

    def _make_room(self, need: int) -> None:
        """Evict unused files, least recently used first, until `need` more bytes fit. Files
        in use stay even if the cache is over its bound until their jobs end."""
        entries = self._entries()
        total = sum(size for _, _, size in entries)
        for _, path, size in entries:
            if total + need <= self.max_bytes:
                return
            if self._evict(path):
                total -= size
        if total + need > self.max_bytes:
            log.warning(
                "artifact cache %s holds %s bytes in use; bound %s",
                self.root,
                total,
                self.max_bytes,
            )

    @staticmethod
    def _evict(path: Path) -> bool:
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False  # a job holds it
        try:
            path.unlink(missing_ok=True)
        finally:
            os.close(fd)
        return True
