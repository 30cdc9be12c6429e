"""A host directory with a hard size cap, for container mounts that must outlive the run.

tmpfs caps /tmp, but /output has to survive the container for collection, and the host
filesystem has no per-directory quota (overlay `storage_opt` needs xfs with pquota). So
the directory is a fixed-size, sparse ext4 image loop-mounted in place: a filler gets
ENOSPC instead of filling the host. Mounting needs root (or CAP_SYS_ADMIN); where it is
not permitted SizedDir raises `UnsizedError`, unless the caller explicitly allows the
development fallback: a plain directory, logged loudly, whose size the executor checks
only after the run.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import shutil
import subprocess
import threading
import uuid
from pathlib import Path
from types import TracebackType

log = logging.getLogger(__name__)

MiB = 1024 * 1024
# A write that does not fit fails whole (ext4 reserves delayed allocations up front), so
# ENOSPC leaves up to one write's size free: within this share of the cap (at least
# _FULL_MIN_BYTES) the directory counts as full.
_FULL_SHARE = 0.05
_FULL_MIN_BYTES = 2 * MiB


# One usage type whatever the size (so image_bytes holds), no journal (nothing to recover:
# the directory lives for one run), no reserved blocks (the cap is the participant's), no
# discard (the file is sparse anyway).
_MKFS = ("mkfs.ext4", "-q", "-F", "-T", "default", "-m", "0", "-O", "^has_journal",
         "-E", "nodiscard")  # fmt: skip


class UnsizedError(RuntimeError):
    """A size-capped directory could not be made (and the fallback is not allowed)."""


def _run(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)


class SizedDir:
    """`with SizedDir(path, 256) as d:` gives a directory at `path` that holds at most
    about 256 MiB; unmounted and deleted on exit. The image file sits next to it."""

    def __init__(
        self,
        path: Path,
        size_mb: int,
        *,
        allow_fallback: bool = False,
        pool: ImagePool | None = None,
    ) -> None:
        self.path = path
        self.size_mb = size_mb
        self.image = path.with_name(path.name + ".img")
        self.allow_fallback = allow_fallback
        self.pool = pool
        self.mounted = False
        self._detached = False  # lazily unmounted: its image may still be in use

    def __enter__(self) -> SizedDir:
        self.create()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.remove()

    @property
    def limit_bytes(self) -> int:
        return self.size_mb * MiB

    def create(self) -> None:
        self.path.mkdir(parents=True, exist_ok=False)
        try:
            ready = self.pool.take(self.size_mb) if self.pool is not None else None
            if ready is not None:
                os.replace(ready, self.image)  # formatted and wiped ahead of this case
            else:
                with open(self.image, "wb") as f:
                    f.truncate(image_bytes(self.size_mb))
                _run(*_MKFS, str(self.image))
            _run("mount", "-o", "loop,nosuid,nodev,noatime", str(self.image), str(self.path))
            self.mounted = True
            (self.path / "lost+found").rmdir()
        except (OSError, subprocess.SubprocessError) as e:
            if self.mounted:
                self._unmount()
            self.image.unlink(missing_ok=True)
            detail = _detail(e)
            if not self.allow_fallback:
                with contextlib.suppress(OSError):
                    self.path.rmdir()
                raise UnsizedError(
                    f"cannot make a size-capped directory at {self.path} "
                    f"(a loop-mounted ext4 image): {detail}"
                ) from e
            log.warning(
                "SizedDir %s: no loop-mounted image (%s); falling back to a plain directory "
                "that is NOT size-capped while the container runs (checked afterwards only)",
                self.path,
                detail,
            )

    def chown(self, uid: int, gid: int) -> None:
        """Hand the directory to the container's user (root on the host may do this)."""
        try:
            os.chown(self.path, uid, gid)
            os.chmod(self.path, 0o755)
        except PermissionError:
            # Not root: the fallback directory is world-writable instead.
            os.chmod(self.path, 0o777)

    def is_full(self) -> bool:
        """Out of space or inodes (mounted), or over the cap (fallback)."""
        if not self.mounted:
            return tree_bytes(self.path) > self.limit_bytes
        st = os.statvfs(self.path)
        slack = max(_FULL_MIN_BYTES, int(self.limit_bytes * _FULL_SHARE))
        return st.f_bavail * st.f_frsize < slack or st.f_favail == 0

    def remove(self) -> None:
        recycle = self.mounted and self.pool is not None
        # ismount: a redelivered task's provision may already have unmounted it.
        if self.mounted and os.path.ismount(self.path):
            self._unmount()
        self.mounted = False
        shutil.rmtree(self.path, ignore_errors=True)
        if recycle and not self._detached and self.image.exists():
            assert self.pool is not None
            self.pool.give_back(self.image, self.size_mb)  # wiped before any reuse
        else:
            self.image.unlink(missing_ok=True)

    def _unmount(self) -> None:
        try:
            _run("umount", str(self.path))
        except subprocess.CalledProcessError:
            # Still busy (a process holds it): detach now, the kernel frees it when idle.
            log.warning("SizedDir %s busy; lazy unmount", self.path)
            _run("umount", "-l", str(self.path))
            self._detached = True
        self.mounted = False


class ImagePool:
    """Size-capped ext4 images formatted ahead of the cases that mount them, so a case's
    /output costs a rename and a mount rather than a mkfs, and its removal an unmount and
    a hand-back. An image handed back is wiped completely before anyone gets it again:
    every block is discarded (truncated to nothing, so the file is all holes) and a fresh
    filesystem is made on it, in a background thread, off the cases' path. Images live
    in `root` (same filesystem as the work directories: a rename moves them); any found
    there at start are left over from another process and deleted, never reused."""

    def __init__(self, base: Path, per_size: int = 2) -> None:
        # One directory per process (several workers may share the work root); those of
        # processes that are gone are deleted, their images never reused.
        base.mkdir(parents=True, exist_ok=True)
        for other in base.iterdir():
            if other.name.isdigit() and not _alive(int(other.name)):
                shutil.rmtree(other, ignore_errors=True)
        self.root = base / str(os.getpid())
        self.per_size = per_size
        self.root.mkdir(exist_ok=True)
        for stale in self.root.glob("*.img"):
            stale.unlink(missing_ok=True)
        self._lock = threading.Lock()
        self._ready: dict[int, list[Path]] = {}
        self._pending: dict[int, int] = {}
        self._out: dict[int, int] = {}  # taken by a SizedDir, not yet given back
        self._work: queue.SimpleQueue[tuple[Path, int]] = queue.SimpleQueue()
        threading.Thread(target=self._prepare_forever, name="image-pool", daemon=True).start()

    def take(self, size_mb: int) -> Path | None:
        """A wiped, formatted image of this size, or None (the caller formats its own);
        either way the pool prepares more of this size for the next cases."""
        with self._lock:
            ready = self._ready.get(size_mb)
            image = ready.pop() if ready else None
            if image is not None:
                self._out[size_mb] = self._out.get(size_mb, 0) + 1
            # Images out come back (recycled): only the rest are made new.
            missing = max(0, self.per_size - self._held(size_mb))
            self._pending[size_mb] = self._pending.get(size_mb, 0) + missing
        for _ in range(missing):
            self._work.put((self.root / f"new-{uuid.uuid4().hex}.img", size_mb))
        return image

    def _held(self, size_mb: int) -> int:
        return (
            len(self._ready.get(size_mb, []))
            + self._pending.get(size_mb, 0)
            + self._out.get(size_mb, 0)
        )

    def give_back(self, image: Path, size_mb: int) -> None:
        """Take back an unmounted image: it is wiped and formatted again before reuse (or
        deleted, when the pool holds enough of its size)."""
        with self._lock:
            self._out[size_mb] = max(0, self._out.get(size_mb, 0) - 1)
            if self._held(size_mb) >= self.per_size:
                image.unlink(missing_ok=True)
                return
            self._pending[size_mb] = self._pending.get(size_mb, 0) + 1
        dirty = self.root / f"dirty-{uuid.uuid4().hex}.img"
        try:
            os.replace(image, dirty)
        except OSError:
            image.unlink(missing_ok=True)
            with self._lock:
                self._pending[size_mb] -= 1
            return
        self._work.put((dirty, size_mb))

    def ready_count(self, size_mb: int) -> int:
        with self._lock:
            return len(self._ready.get(size_mb, []))

    def _prepare_forever(self) -> None:
        while True:
            path, size_mb = self._work.get()
            ready = self.root / f"ready-{uuid.uuid4().hex}.img"
            try:
                wipe_and_format(path, size_mb)
                os.replace(path, ready)
            except (OSError, subprocess.SubprocessError) as e:
                log.warning("image pool: could not prepare %s: %s", path, _detail(e))
                path.unlink(missing_ok=True)
                with self._lock:
                    self._pending[size_mb] -= 1
                continue
            with self._lock:
                self._pending[size_mb] -= 1
                self._ready.setdefault(size_mb, []).append(ready)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def wipe_and_format(image: Path, size_mb: int) -> None:
    """Discard every byte of `image` (truncate to 0: no block of an earlier case survives,
    not even unallocated ones) and make a fresh, empty filesystem of the capped size."""
    with open(image, "ab") as f:
        f.truncate(0)
        f.truncate(image_bytes(size_mb))
    _run(*_MKFS, str(image))


def _detail(e: BaseException) -> str:
    stderr = getattr(e, "stderr", None)
    text = stderr.decode(errors="replace").strip() if isinstance(stderr, bytes) else ""
    cmd = getattr(e, "cmd", None)
    where = f"{cmd[0]}: " if isinstance(cmd, (list, tuple)) and cmd else ""
    text = text or str(e)
    return text if text.startswith(where) else where + text


def image_bytes(size_mb: int) -> int:
    """Image size whose free space is about size_mb (within 1%): ext4 metadata, mostly
    inode tables, takes ~3.7% of the image up to a few GiB and ~2.2% above (measured with
    the mkfs options SizedDir uses)."""
    ratio = 0.963 if size_mb < 4096 else 0.978
    return int(size_mb * MiB / ratio) // 4096 * 4096 + 4096


def tree_bytes(root: Path) -> int:
    """Allocated bytes under root, without following symlinks."""
    total = 0
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in dirnames + filenames:
            with contextlib.suppress(FileNotFoundError):
                total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
    return total


def mounts_under(root: Path) -> list[Path]:
    """Mount points at or below root, deepest first (the order to unmount them in)."""
    root_s = str(root.resolve())
    found: list[Path] = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            # Field 5 is the mount point, with spaces etc. octal-escaped.
            point = line.split()[4].encode().decode("unicode_escape")
            if point == root_s or point.startswith(root_s + "/"):
                found.append(Path(point))
    return sorted(found, key=lambda p: len(p.parts), reverse=True)


def unmount_all_under(root: Path) -> list[Path]:
    """Unmount whatever a crashed worker left mounted below root (stale cleanup)."""
    points = mounts_under(root)
    for point in points:
        try:
            _run("umount", str(point))
        except subprocess.CalledProcessError:
            _run("umount", "-l", str(point))
    return points
