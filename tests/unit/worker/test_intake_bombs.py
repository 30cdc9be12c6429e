"""Decompression bombs are refused while the archive is read, as the participant's error,
quickly, and with a message that names the limit; ordinary compressed layers still pass."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support import bombs
from worker.intake import IntakeError, IntakeLimits, inspect_archive

BOMBS: dict[str, Callable[[Path], Path]] = {
    "gzip layer": lambda p: bombs.layer_bomb(p / "layer-bomb.tar"),
    "gzip archive": lambda p: bombs.archive_bomb(p / "archive-bomb.tar.gz"),
}


@pytest.mark.parametrize("kind", list(BOMBS))
def test_two_gib_of_zeros_is_refused_in_seconds_by_the_ratio(kind: str, tmp_path: Path) -> None:
    archive = BOMBS[kind](tmp_path)
    assert archive.stat().st_size < 4 * 1024**2  # a few MB that unpack to 2 GiB
    started = time.monotonic()
    with pytest.raises(IntakeError) as err:
        inspect_archive(archive, IntakeLimits())
    assert time.monotonic() - started < 10
    assert not err.value.platform_caused
    assert "50 times its compressed size" in err.value.reason
    assert "compression ratio" in err.value.reason


def test_the_expanded_size_limit_holds_whatever_the_ratio(tmp_path: Path) -> None:
    archive = bombs.layer_bomb(tmp_path / "b.tar", expanded=512 * 1024**2)
    limits = IntakeLimits(max_expanded_bytes=256 * 1024**2, max_compression_ratio=10**6)
    with pytest.raises(IntakeError) as err:
        inspect_archive(archive, limits)
    assert not err.value.platform_caused
    assert "more than 0.2 GiB" in err.value.reason and "unpacked size" in err.value.reason


def _archive_with_gzip_layer(path: Path, payload: bytes) -> Path:
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w") as t:
        info = tarfile.TarInfo("data.bin")
        info.size = len(payload)
        t.addfile(info, io.BytesIO(payload))
    layer_gz = gzip.compress(layer.getvalue())
    config = json.dumps(
        {"architecture": "amd64", "os": "linux", "config": {"User": "1000", "Cmd": ["/x"]}}
    ).encode()
    config_name = hashlib.sha256(config).hexdigest() + ".json"
    manifest = json.dumps([{"Config": config_name, "RepoTags": None, "Layers": ["l/layer.tar"]}])
    with tarfile.open(path, "w") as tar:
        for name, data in (
            ("l/layer.tar", layer_gz),
            (config_name, config),
            ("manifest.json", manifest.encode()),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_an_ordinary_gzip_layer_passes_and_is_counted_expanded(tmp_path: Path) -> None:
    # Compressible, but far below the ratio floor: small layers are never refused for it.
    payload = b"heldout " * (4 * 1024**2 // 8)
    info = inspect_archive(_archive_with_gzip_layer(tmp_path / "ok.tar", payload))
    assert info.expanded_bytes > len(payload) > 10 * info.archive_bytes


def test_a_corrupt_compressed_layer_is_named(tmp_path: Path) -> None:
    archive = _archive_with_gzip_layer(tmp_path / "ok.tar", b"x" * 100_000)
    data = bytearray(archive.read_bytes())
    start = data.index(b"\x1f\x8b")
    data[start + 40 : start + 60] = b"\xff" * 20
    archive.write_bytes(bytes(data))
    with pytest.raises(IntakeError) as err:
        inspect_archive(archive)
    assert "'l/layer.tar' is a corrupt compressed stream" in err.value.reason
