"""Size-capped /output images are formatted ahead and reused between cases: a reused image
is wiped completely first, so a case never sees an earlier case's files (nor their bytes
in the image), and it is still capped."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.conftest import need
from tests.support.workers import wait_for
from worker.executor.sized_dir import ImagePool, SizedDir

MARKER = b"first-case-secret-" * 1000


def _ready(pool: ImagePool, size_mb: int, n: int = 1) -> None:
    wait_for(lambda: pool.ready_count(size_mb) >= n, 30, "the pool to prepare an image")


def test_a_reused_image_never_shows_the_previous_case(tmp_path: Path) -> None:
    need(os.geteuid() == 0, "root (loop mounts)")
    pool = ImagePool(tmp_path / "pool", per_size=1)
    assert pool.take(8) is None  # empty: the caller formats its own; the pool prepares one
    _ready(pool, 8)

    (prepared,) = pool.root.glob("ready-*.img")
    first = SizedDir(tmp_path / "case1" / "output", 8, pool=pool)
    first.create()
    try:
        assert first.mounted and not prepared.exists()  # it took the prepared image
        (first.path / "secret.bin").write_bytes(MARKER)
        (first.path / "nested").mkdir()
        (first.path / "nested" / "more").write_bytes(MARKER)
        os.sync()
        inode = first.image.stat().st_ino
    finally:
        first.remove()
    assert not first.image.exists()  # handed back to the pool, not left in the work dir
    _ready(pool, 8)
    (image,) = pool.root.glob("ready-*.img")
    assert image.stat().st_ino == inode  # the same file, reused...
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

