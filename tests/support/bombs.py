"""Decompression-bomb image archives, built by streaming: a layer of GiBs of zeros from a
few MB of gzip, without ever holding or writing the expanded bytes."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import struct
import tarfile
import zlib
from pathlib import Path

GiB = 1024**3
_BLOCK = 64 * 1024**2
# gzip of one 64 MiB block of zeros (~65 kB): repeated, a valid multi-member gzip stream
# that expands to any multiple of 64 MiB. The engine, like gzip(1), reads all members.
_ZEROS_GZ = gzip.compress(b"\0" * _BLOCK, 9)
# sha256 of the layer tar below for 2 GiB of zeros (its diff id), computed once: hashing
# 2 GiB on every run would take longer than the intake being tested.
DIFF_ID_2GIB = "sha256:d6fa5fbd544a17a350378eb72a7e01d331ab8abcf8e660d4ecb25941f7b60697"


def _header(name: str, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, 0o644, 0
    return info.tobuf(tarfile.GNU_FORMAT)


def _zeros_file_tar_gz(expanded: int) -> bytes:
    """A gzip-compressed tar of one file /zeros of `expanded` zero bytes."""
    assert expanded % _BLOCK == 0
    return (
        gzip.compress(_header("zeros", expanded))
        + _ZEROS_GZ * (expanded // _BLOCK)
        + gzip.compress(b"\0" * 2 * tarfile.BLOCKSIZE)
    )


def _config(diff_id: str) -> bytes:
    return json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"User": "1000", "Cmd": ["/zeros"]},
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        }
    ).encode()


def _member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), 0o644
    tar.addfile(info, io.BytesIO(data))


def layer_bomb(path: Path, expanded: int = 2 * GiB) -> Path:
    """A `docker save` (legacy layout) archive whose one layer is gzip-compressed and
    unpacks to `expanded` bytes of zeros; the archive itself is a few MB."""
    layer = _zeros_file_tar_gz(expanded)
    config = _config(DIFF_ID_2GIB if expanded == 2 * GiB else "sha256:" + "0" * 64)
    config_name = hashlib.sha256(config).hexdigest() + ".json"
    layer_dir = hashlib.sha256(layer).hexdigest()
    manifest = [{"Config": config_name, "RepoTags": None, "Layers": [f"{layer_dir}/layer.tar"]}]
    with tarfile.open(path, "w") as tar:
        _member(tar, f"{layer_dir}/layer.tar", layer)
        _member(tar, config_name, config)
        _member(tar, "manifest.json", json.dumps(manifest).encode())
    return path


def archive_bomb(path: Path, expanded: int = 2 * GiB) -> Path:
    """A gzip-compressed `docker save` archive (.tar.gz) whose one uncompressed layer.tar
    is `expanded` bytes: the outer gzip stream is the bomb."""
    assert expanded % _BLOCK == 0
    layer_size = tarfile.BLOCKSIZE + expanded + 2 * tarfile.BLOCKSIZE
    config = _config(DIFF_ID_2GIB if expanded == 2 * GiB else "sha256:" + "0" * 64)
    config_name = hashlib.sha256(config).hexdigest() + ".json"
    manifest = json.dumps(
        [{"Config": config_name, "RepoTags": None, "Layers": ["l0/layer.tar"]}]
    ).encode()
    head = io.BytesIO()
    for name, data in ((config_name, config), ("manifest.json", manifest)):
        head.write(_header(name, len(data)) + data + b"\0" * (-len(data) % tarfile.BLOCKSIZE))
    # The layer member: a tar of one file of zeros, inside the outer tar.
    head.write(_header("l0/layer.tar", layer_size) + _header("zeros", expanded))
    tail = b"\0" * 2 * tarfile.BLOCKSIZE + b"\0" * 2 * tarfile.BLOCKSIZE
    # One gzip member (Python's tarfile reads no other): raw deflate blocks, each run of
    # zeros ended by a full flush so the same compressed bytes can be repeated.
    deflate = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    first = deflate.compress(head.getvalue()) + deflate.flush(zlib.Z_FULL_FLUSH)
    zeros = b"\0" * _BLOCK
    block = deflate.compress(zeros) + deflate.flush(zlib.Z_FULL_FLUSH)
    last = deflate.compress(tail) + deflate.flush(zlib.Z_FINISH)
    crc = zlib.crc32(head.getvalue())
    for _ in range(expanded // _BLOCK):
        crc = zlib.crc32(zeros, crc)
    crc = zlib.crc32(tail, crc)
    size = len(head.getvalue()) + expanded + len(tail)
    with open(path, "wb") as f:
        f.write(b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff" + first)
        for _ in range(expanded // _BLOCK):
            f.write(block)
        f.write(last + struct.pack("<II", crc, size % 2**32))
    return path
