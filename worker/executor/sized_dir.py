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

import atexit
import contextlib
import ctypes
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
        self._pooled: Path | None = None  # the pool's mount bound at `path`

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
        ready = self.pool.take(self.size_mb) if self.pool is not None else None
        if ready is not None:
            try:
                # Formatted, wiped and mounted ahead of this case: one mount(2) call.
                _bind(ready, self.path)
            except OSError:
                assert self.pool is not None
                self.pool.discard(ready, self.size_mb)
            else:
                self._pooled = ready
                self.mounted = True
                return
        try:
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
        pooled, self._pooled = self._pooled, None
        if pooled is not None:
            assert self.pool is not None
            detached = False
            if os.path.ismount(self.path):
                detached = not _unbind(self.path)
            self.mounted = False
            shutil.rmtree(self.path, ignore_errors=True)
            if detached:  # something still holds it: never reused
                self.pool.discard(pooled, self.size_mb)
            else:
                self.pool.give_back(pooled, self.size_mb)  # wiped before any reuse
            return
        # ismount: a redelivered task's provision may already have unmounted it.
        if self.mounted and os.path.ismount(self.path):
            self._unmount()
        self.mounted = False
        shutil.rmtree(self.path, ignore_errors=True)
        self.image.unlink(missing_ok=True)

    def _unmount(self) -> None:
        try:
            _run("umount", str(self.path))
        except subprocess.CalledProcessError:
            # Still busy (a process holds it): detach now, the kernel frees it when idle.
            log.warning("SizedDir %s busy; lazy unmount", self.path)
            _run("umount", "-l", str(self.path))
        self.mounted = False


class ImagePool:
    """Size-capped ext4 images formatted and loop-mounted ahead of the cases that use them:
    a case's /output is then one bind mount (mount(2), no mkfs, no loop set-up) and its
    removal one unmount. A mount handed back is wiped completely before anyone gets it
    again, in a background thread off the cases' path: unmounted, every block of its image
    discarded (truncated to nothing, so the file is all holes), a fresh filesystem made and
    mounted again. Mounts and images live in a directory per process beside the work root;
    one left by a process that is gone is unmounted and deleted, never reused."""

    _shared: dict[Path, ImagePool] = {}
    _shared_lock = threading.Lock()

    @classmethod
    def shared(cls, base: Path, per_size: int) -> ImagePool:
        """This process's pool under `base` (executors are made per job; the pool lives
        as long as the process, and its mounts are taken down when it exits)."""
        with cls._shared_lock:
            pool = cls._shared.get(base)
            if pool is None:
                pool = cls._shared[base] = cls(base, per_size)
                atexit.register(pool.close)
            return pool

    def close(self) -> None:
        """Take down the pool's mounts and images (those bound into a case stay theirs)."""
        with self._lock:
            ready = dict(self._ready)
            self._ready.clear()
        for mounts in ready.values():
            for mount in mounts:
                with contextlib.suppress(OSError, subprocess.SubprocessError):
                    _run("umount", str(mount))
                shutil.rmtree(mount, ignore_errors=True)
                _image_of(mount).unlink(missing_ok=True)

    def __init__(self, base: Path, per_size: int = 2) -> None:
        base.mkdir(parents=True, exist_ok=True)
        for other in base.iterdir():
            if other.name.isdigit() and not _alive(int(other.name)):
                unmount_all_under(other)
                shutil.rmtree(other, ignore_errors=True)
        self.root = base / str(os.getpid())
        self.per_size = per_size
        if self.root.exists():
            unmount_all_under(self.root)
        shutil.rmtree(self.root, ignore_errors=True)
        self.root.mkdir()
        self._lock = threading.Lock()
        self._ready: dict[int, list[Path]] = {}
        self._pending: dict[int, int] = {}
        self._out: dict[int, int] = {}  # bound into a case, not yet given back
        self._work: queue.SimpleQueue[tuple[Path, int]] = queue.SimpleQueue()
        threading.Thread(target=self._prepare_forever, name="image-pool", daemon=True).start()

    def take(self, size_mb: int) -> Path | None:
        """A wiped, formatted, mounted image of this size (its mount point), or None (the
        caller formats its own); either way the pool prepares more for the next cases."""
        with self._lock:
            ready = self._ready.get(size_mb)
            mount = ready.pop() if ready else None
            if mount is not None:
                self._out[size_mb] = self._out.get(size_mb, 0) + 1
            # Mounts out come back (recycled): only the rest are made new.
            missing = max(0, self.per_size - self._held(size_mb))
            self._pending[size_mb] = self._pending.get(size_mb, 0) + missing
        for _ in range(missing):
            self._work.put((self.root / f"m-{uuid.uuid4().hex}", size_mb))
        return mount

    def _held(self, size_mb: int) -> int:
        return (
            len(self._ready.get(size_mb, []))
            + self._pending.get(size_mb, 0)
            + self._out.get(size_mb, 0)
        )

    def give_back(self, mount: Path, size_mb: int) -> None:
        """Take back a mount no case uses any more: wiped and remade before reuse."""
        with self._lock:
            self._out[size_mb] = max(0, self._out.get(size_mb, 0) - 1)
            self._pending[size_mb] = self._pending.get(size_mb, 0) + 1
        self._work.put((mount, size_mb))

    def discard(self, mount: Path, size_mb: int) -> None:
        """Drop a mount that cannot be trusted to be idle (detach it, delete its image)."""
        with self._lock:
            self._out[size_mb] = max(0, self._out.get(size_mb, 0) - 1)
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            _run("umount", "-l", str(mount))
        shutil.rmtree(mount, ignore_errors=True)
        _image_of(mount).unlink(missing_ok=True)

    def ready_count(self, size_mb: int) -> int:
        with self._lock:
            return len(self._ready.get(size_mb, []))

    def _prepare_forever(self) -> None:
        while True:
            mount, size_mb = self._work.get()
            try:
                self._prepare(mount, size_mb)
            except (OSError, subprocess.SubprocessError) as e:
                log.warning("image pool: could not prepare %s: %s", mount, _detail(e))
                with contextlib.suppress(OSError, subprocess.SubprocessError):
                    if os.path.ismount(mount):
                        _run("umount", "-l", str(mount))
                shutil.rmtree(mount, ignore_errors=True)
                _image_of(mount).unlink(missing_ok=True)
                with self._lock:
                    self._pending[size_mb] -= 1
                continue
            with self._lock:
                self._pending[size_mb] -= 1
                self._ready.setdefault(size_mb, []).append(mount)

    @staticmethod
    def _prepare(mount: Path, size_mb: int) -> None:
        image = _image_of(mount)
        if os.path.ismount(mount):
            _run("umount", str(mount))  # fails if anything still holds it: not reused
        mount.mkdir(exist_ok=True)
        wipe_and_format(image, size_mb)
        _run("mount", "-o", "loop,nosuid,nodev,noatime", str(image), str(mount))
        (mount / "lost+found").rmdir()


def _image_of(mount: Path) -> Path:
    return mount.with_name(mount.name + ".img")


_MS_BIND = 4096
_MNT_DETACH = 2


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _bind(source: Path, target: Path) -> None:
    """Bind-mount `source` at `target` with mount(2): no process to start."""
    if _libc().mount(bytes(source), bytes(target), None, _MS_BIND, None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"bind mount of {source} at {target}: {os.strerror(err)}")


def _unbind(target: Path) -> bool:
    """Unmount `target`; True if it is gone, False if it was busy and only detached."""
    libc = _libc()
    if libc.umount2(bytes(target), 0) == 0:
        return True
    libc.umount2(bytes(target), _MNT_DETACH)
    return False


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
