"""Size-capped /output filesystems are formatted and mounted ahead and reused between
cases: a reused one is wiped completely first (a fresh filesystem on an image whose every
block was discarded), so a case never sees an earlier case's files, nor their bytes in the
image, and it is still capped."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.conftest import need
from tests.support.workers import wait_for
from worker.executor.sized_dir import ImagePool, SizedDir, mounts_under

MARKER = b"first-case-secret-" * 1000


def _ready(pool: ImagePool, size_mb: int, n: int = 1) -> None:
    wait_for(lambda: pool.ready_count(size_mb) >= n, 30, "the pool to prepare a filesystem")


def test_a_reused_filesystem_never_shows_the_previous_case(tmp_path: Path) -> None:
    need(os.geteuid() == 0, "root (loop mounts)")
    pool = ImagePool(tmp_path / "pool", per_size=1)
    assert pool.take(8) is None  # empty: the caller formats its own; the pool prepares one
    _ready(pool, 8)

    first = SizedDir(tmp_path / "case1" / "output", 8, pool=pool)
    first.create()
    try:
        assert first.mounted and pool.ready_count(8) == 0  # it took the prepared one
        (first.path / "secret.bin").write_bytes(MARKER)
        (first.path / "nested").mkdir()
        (first.path / "nested" / "more").write_bytes(MARKER)
        os.chmod(first.path / "nested", 0o700)
        os.sync()
        (image,) = pool.root.glob("*.img")
        assert MARKER[:64] in image.read_bytes()  # (the check below can see the bytes)
    finally:
        first.remove()
    assert not first.path.exists() and mounts_under(tmp_path / "case1") == []
    _ready(pool, 8)
    assert list(pool.root.glob("*.img")) == [image]  # the same image, reused...
    assert MARKER[:64] not in image.read_bytes()  # ...wiped: not even free blocks keep it

    second = SizedDir(tmp_path / "case2" / "output", 8, pool=pool)
    second.create()
    try:
        assert second.mounted
        assert list(second.path.iterdir()) == []
        # Still capped: a writer past the cap gets ENOSPC.
        with pytest.raises(OSError), open(second.path / "fill", "wb") as f:
            for _ in range(32):
                f.write(b"\0" * 1024 * 1024)
                f.flush()
                os.fsync(f.fileno())
    finally:
        second.remove()
    _ready(pool, 8)
    pool.discard(pool.take(8) or tmp_path / "none", 8)
    assert mounts_under(tmp_path / "pool") == []
