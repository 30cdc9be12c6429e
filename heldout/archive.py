"""The checks of a `docker save` archive that need no engine: the archive itself (a
readable tar, safe entries, one image, no decompression bomb) and the image config it
carries (platform, command, USER). The worker's intake runs them before `docker load`; the
client runs the very same code before uploading, so a refusal costs nothing.

Standard library only: `heldout.Client` imports this without the server's dependencies.
"""

from __future__ import annotations

import bz2
import hashlib
import io
import itertools
import json
import lzma
import posixpath
import tarfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

MiB, GiB = 1024**2, 1024**3
READ_CHUNK = MiB
METADATA = ("manifest.json", "index.json")
# Small members kept in pass 1 because one of them is the image config (named only by
# manifest.json, which docker save writes last).
_SMALL_FILE = 1 * MiB
_SMALL_TOTAL = 16 * MiB
_SAFE_TYPES = (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE)
# Annotations through which an OCI index names (tags) its images.
OCI_NAME_KEYS = ("io.containerd.image.name", "org.opencontainers.image.ref.name")


@dataclass(frozen=True)
class IntakeLimits:
    max_archive_bytes: int = 20 * GiB  # the file as uploaded (compressed or not)
    max_uncompressed_bytes: int = 40 * GiB  # sum of member sizes: gzip bombs stop here
    max_image_bytes: int = 10 * 1000**3  # the loaded image, as grand-challenge caps it
    max_members: int = 100_000
    max_metadata_bytes: int = 4 * MiB  # manifest.json / index.json
    # What the engine would unpack: uncompressed members at their size, compressed layers
    # (gzip, bzip2, xz) decompressed and counted while the archive is read.
    max_expanded_bytes: int = 20 * GiB
    # Bytes out per byte in, for the whole file and for each compressed layer; checked once
    # more than ratio_floor_bytes came out (small, very compressible files are harmless).
    max_compression_ratio: int = 50
    ratio_floor_bytes: int = 64 * MiB


class IntakeError(Exception):
    """The archive or image is refused; `reason` is shown to the participant as is.

    `platform_caused` marks refusals that are not the participant's fault (the engine
    failed, the worker's disk is full): retry those instead of rejecting the upload.
    """

    def __init__(self, reason: str, *, platform_caused: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.platform_caused = platform_caused


@dataclass(frozen=True)
class ArchiveInfo:
    sha256: str  # of the file as uploaded
    archive_bytes: int
    uncompressed_bytes: int
    expanded_bytes: int  # what the engine would unpack (compressed layers decompressed)
    members: int
    layout: str  # "docker" (manifest.json, also written by Docker 25+) or "oci" (index.json)
    image_id: str | None  # "sha256:<config digest>" where the archive names it
    # The image config document (os, architecture, config: User, Entrypoint, Cmd, ...).
    config: dict[str, Any] | None = None


# ---------------------------------------------------------------------------------------
# Hashing while streaming


class HashingReader:
    """A read-only file wrapper that hashes (sha256) every byte read through it."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw = raw
        self.hash = hashlib.sha256()
        self.bytes_read = 0

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        self.hash.update(data)
        self.bytes_read += len(data)
        return data

    def drain(self) -> str:
        """Read (and hash) whatever the consumer left unread; return the hex digest."""
        while self.read(READ_CHUNK):
            pass
        return self.hash.hexdigest()


def sha256_file(path: Path) -> str:
    with open(path, "rb") as f:
        return HashingReader(f).drain()


# ---------------------------------------------------------------------------------------
# Pass 1: the archive itself


def inspect_archive(path: Path, limits: IntakeLimits = IntakeLimits()) -> ArchiveInfo:
    """Stream through the archive and check it, and the image config it carries, before
    the engine sees it; raises IntakeError on the first problem."""
    size = path.stat().st_size
    if size > limits.max_archive_bytes:
        raise IntakeError(
            f"The archive is {size / GiB:.1f} GiB; the limit is "
            f"{limits.max_archive_bytes / GiB:.1f} GiB."
        )
    metadata: dict[str, bytes] = {}
    small: dict[str, bytes] = {}  # candidates for the image config, read before it is named
    small_bytes = 0
    with open(path, "rb") as raw:
        reader = HashingReader(raw)
        meter = _ExpansionMeter(limits, reader)
        members, total = 0, 0
        seen: set[str] = set()
        for member, tar in archive_members(reader):
            name = check_member(member)
            if name in seen:
                raise IntakeError(f"The archive lists {name!r} twice; re-create it (docker save).")
            seen.add(name)
            members += 1
            total += member.size
            if members > limits.max_members:
                raise IntakeError(f"The archive has more than {limits.max_members} entries.")
            if total > limits.max_uncompressed_bytes:
                raise IntakeError(
                    "The archive unpacks to more than "
                    f"{limits.max_uncompressed_bytes / GiB:.1f} GiB."
                )
            if name in METADATA:
                metadata[name] = read_small(tar, member, limits.max_metadata_bytes)
                meter.measure(io.BytesIO(metadata[name]), name)
            elif _maybe_config(name, member) and small_bytes < _SMALL_TOTAL:
                small[name] = read_small(tar, member, _SMALL_FILE)
                small_bytes += member.size
                meter.measure(io.BytesIO(small[name]), name)
            elif member.isreg():
                f = tar.extractfile(member)
                assert f is not None
                meter.measure(f, name)
        digest = reader.drain()
    layout, config_ref = _one_image(metadata)
    image_id, config = _image_config(layout, config_ref, small)
    if config is not None:
        # Refuse from the archive alone what the loaded image would be refused for.
        check_config(config.get("os"), config.get("architecture"), config.get("config") or {})
    return ArchiveInfo(digest, size, total, meter.total, members, layout, image_id, config)


# ---------------------------------------------------------------------------------------
# Expansion: gzip bombs are the participant's error, found before the engine unpacks them

_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


class _Decompressor:
    """zlib's, bz2's and lzma's incremental decompressors behind one bounded-output call;
    concatenated streams (multi-member gzip, as the engine reads them) go on."""

    def __init__(self, make: Callable[[], Any], *, is_zlib: bool = False) -> None:
        self.make = make
        self.is_zlib = is_zlib
        self.d = make()

    def feed(self, data: bytes) -> bytes:
        """Up to READ_CHUNK bytes of output; call again with b"" while `more` is true."""
        if self.d.eof:
            data = bytes(self.d.unused_data) + data
            if not data:
                return b""
            self.d = self.make()
        if self.is_zlib:
            data = self.d.unconsumed_tail + data
        out: bytes = self.d.decompress(data, READ_CHUNK)
        return out

    @property
    def more(self) -> bool:
        """Output may be pending without more input."""
        if self.d.eof:
            return bool(self.d.unused_data)
        if self.is_zlib:
            return bool(self.d.unconsumed_tail)
        return not self.d.needs_input


def _read(f: IO[bytes], size: int) -> bytes:
    try:
        return f.read(size)
    except (tarfile.TarError, EOFError, OSError) as e:
        raise IntakeError(
            "The file is not a readable tar archive; upload the output of `docker save` "
            "(optionally gzip-compressed)."
        ) from e


def _decompressor(head: bytes) -> _Decompressor | None:
    if head.startswith(b"\x1f\x8b"):
        return _Decompressor(lambda: zlib.decompressobj(16 + zlib.MAX_WBITS), is_zlib=True)
    if head.startswith(b"BZh"):
        return _Decompressor(bz2.BZ2Decompressor)
    if head.startswith(b"\xfd7zXZ\x00"):
        return _Decompressor(lzma.LZMADecompressor)
    return None


class _ExpansionMeter:
    """Counts what each member would unpack to and refuses, as the participant's error,
    an archive past `max_expanded_bytes` or `max_compression_ratio`, as soon as it is."""

    def __init__(self, limits: IntakeLimits, reader: HashingReader) -> None:
        self.limits = limits
        self.reader = reader  # the file as uploaded: its bytes_read is the compressed side
        self.total = 0

    def measure(self, f: IO[bytes], name: str) -> None:
        head = _read(f, 8)
        if head.startswith(_ZSTD_MAGIC):
            raise IntakeError(
                f"The archive entry {name!r} is zstd-compressed, which heldout cannot check; "
                "upload the output of `docker save` (optionally gzip-compressed)."
            )
        d = _decompressor(head)
        if d is None:
            self._add(len(head), name)
            while chunk := _read(f, READ_CHUNK):
                self._add(len(chunk), name)
            return
        consumed, produced, data = len(head), 0, head
        while True:
            try:
                out = d.feed(data)
            except (OSError, EOFError, ValueError, zlib.error, lzma.LZMAError) as e:
                raise IntakeError(
                    f"The archive entry {name!r} is a corrupt compressed stream."
                ) from e
            produced += len(out)
            self._add(len(out), name)
            self._check_ratio(produced, consumed, f"The archive entry {name!r}")
            if d.more:
                data = b""
                continue
            data = _read(f, READ_CHUNK)
            if not data:
                return
            consumed += len(data)

    def _add(self, n: int, name: str) -> None:
        self.total += n
        limit = self.limits.max_expanded_bytes
        if self.total > limit:
            raise IntakeError(
                f"The image expands to more than {limit / GiB:.1f} GiB (at {name!r}), the "
                "limit on an image's unpacked size; make the image smaller."
            )
        self._check_ratio(self.total, self.reader.bytes_read, "The archive")

    def _check_ratio(self, produced: int, consumed: int, what: str) -> None:
        ratio = self.limits.max_compression_ratio
        if produced > self.limits.ratio_floor_bytes and produced > ratio * max(consumed, 1):
            raise IntakeError(
                f"{what} expands to more than {ratio} times its compressed size, the limit "
                "on compression ratio (a decompression bomb); it was refused unpacked."
            )


def _maybe_config(name: str, member: tarfile.TarInfo) -> bool:
    # Legacy: "<hex>.json" at the top; OCI and Docker 25+: "blobs/sha256/<hex>".
    top_json = "/" not in name and name.endswith(".json")
    return member.isreg() and member.size <= _SMALL_FILE and (top_json or name.startswith("blobs/"))


def _image_config(
    layout: str, ref: str, small: dict[str, bytes]
) -> tuple[str | None, dict[str, Any] | None]:
    """The image id and its config document, where the archive carries them."""
    try:
        if layout == "oci":
            # index.json -> image manifest -> config; a nested (multi-platform) index is
            # left to the post-load checks.
            manifest = json.loads(small.get(_blob(ref), b"{}"))
            ref = manifest.get("config", {}).get("digest", "")
            if not ref:
                return None, None
            raw = small.get(_blob(ref))
            image_id = ref
        else:
            raw = small.get(posixpath.normpath(ref))
            image_id = "sha256:" + posixpath.basename(ref).removesuffix(".json")
        config = json.loads(raw) if raw is not None else None
    except (ValueError, AttributeError) as e:
        raise IntakeError("The archive's image configuration is malformed.") from e
    return image_id, config if isinstance(config, dict) else None


def _blob(digest: str) -> str:
    return "blobs/" + digest.replace(":", "/", 1)


def check_member(member: tarfile.TarInfo) -> str:
    """The member's normalized name, or IntakeError when it is unsafe."""
    name = _inside(member.name, member.name, parent_ok=False)
    if member.type not in _SAFE_TYPES:
        what = {
            tarfile.CHRTYPE: "a character device",
            tarfile.BLKTYPE: "a block device",
            tarfile.FIFOTYPE: "a FIFO",
        }.get(member.type, "an unsupported entry type")
        raise IntakeError(f"The archive entry {member.name!r} is {what}.")
    if member.issym():
        # Relative links into a sibling directory are normal (docker save deduplicates
        # layers with `../<id>/layer.tar`); resolved, they must stay inside the archive.
        _inside(member.linkname, member.name, parent_ok=True)
        resolved = posixpath.normpath(posixpath.join(posixpath.dirname(name), member.linkname))
        if resolved == ".." or resolved.startswith("../"):
            raise IntakeError(f"The archive entry {member.name!r} points outside the archive.")
    elif member.islnk():
        _inside(member.linkname, member.name, parent_ok=False)
    return name


def _inside(path: str, shown: str, *, parent_ok: bool) -> str:
    """Normalized `path`, refused when absolute, malformed or climbing out.

    `..` is allowed only as leading components, and only where parent_ok (link targets,
    checked again once resolved): lexical normalization of `a/../b` is wrong when `a` is
    itself a symlink, so no `..` may follow a name.
    """
    if path.startswith("/") or "\\" in path or "\0" in path or not path:
        raise IntakeError(f"The archive entry {shown!r} uses an absolute or malformed path.")
    parts = path.split("/")
    leading = len(parts) - len(list(itertools.dropwhile(lambda p: p == "..", parts)))
    if ".." in parts[leading:] or (leading and not parent_ok):
        raise IntakeError(f"The archive entry {shown!r} points outside the archive.")
    return posixpath.normpath(path)


def archive_members(fileobj: Any) -> Iterator[tuple[tarfile.TarInfo, tarfile.TarFile]]:
    try:
        with tarfile.open(fileobj=fileobj, mode="r|*") as tar:
            for member in tar:
                yield member, tar
    except (tarfile.TarError, EOFError, OSError) as e:
        # OSError here is gzip/bz2/lzma refusing a corrupt stream.
        raise IntakeError(
            "The file is not a readable tar archive; upload the output of `docker save` "
            "(optionally gzip-compressed)."
        ) from e


def read_small(tar: tarfile.TarFile, member: tarfile.TarInfo, cap: int) -> bytes:
    if not member.isreg() or member.size > cap:
        raise IntakeError(f"The archive's {member.name} is not a small regular file.")
    f = tar.extractfile(member)
    return f.read() if f is not None else b""


def _one_image(metadata: dict[str, bytes]) -> tuple[str, str]:
    """Check the archive holds exactly one image; return (layout, config or manifest ref)."""
    try:
        if "manifest.json" in metadata:
            manifest = json.loads(metadata["manifest.json"])
            configs = {str(entry["Config"]) for entry in manifest}
            layout = "docker"
        elif "index.json" in metadata:
            index = json.loads(metadata["index.json"])
            configs = {str(entry["digest"]) for entry in index["manifests"]}
            layout = "oci"
        else:
            raise IntakeError(
                "The archive is not a Docker image: it has neither manifest.json nor "
                "index.json. Upload the output of `docker save <image>`."
            )
    except (ValueError, TypeError, KeyError) as e:
        raise IntakeError("The archive's image manifest is malformed.") from e
    if len(configs) != 1:
        raise IntakeError(
            f"The archive holds {len(configs)} images; upload exactly one "
            "(`docker save <one image>`)."
        )
    (ref,) = configs
    return layout, ref


def check_config(os_name: str | None, arch: str | None, config: dict[str, Any]) -> None:
    """Platform, command and USER string, from the image config (archive or engine)."""
    platform = f"{os_name}/{arch}"
    if platform != "linux/amd64":
        raise IntakeError(
            f"The image is built for {platform}; heldout runs linux/amd64 images "
            "(docker build --platform linux/amd64)."
        )
    if not config.get("Entrypoint") and not config.get("Cmd"):
        raise IntakeError("The image has neither an ENTRYPOINT nor a CMD; add one.")
    if reason := refused_user_reason(config.get("User")):
        raise IntakeError(reason)


def refused_user_reason(user: str | None) -> str | None:
    """Why an image USER is refused (empty, root or 0, as grand-challenge does), or None."""
    name = (user or "").strip().split(":", 1)[0]
    if not name:
        return "The image has no USER, so it would run as root; add a non-root USER."
    if name in ("root", "0"):
        return f"The image runs as {user!r} (root); add a non-root USER to the Dockerfile."
    return None
