"""Resumable, streamed uploads into the artifact store: a log of verified chunks.

The protocol is tus-like (https://tus.io): the server's offset (`received`) is the only
truth, a chunk must start exactly there (409 with the offset otherwise), and a chunk may
carry its SHA-256 in an `Upload-Checksum: sha256 <base64>` header (tus checksum extension).

- A chunk counts whole or not at all. Its bytes are written after the committed prefix of
  the part file, then one short transaction advances `received` and logs the chunk's
  digest. A chunk that is refused (too large, wrong checksum) or cut off (socket
  closed, server killed, before or after its body) leaves `received` where it was; the next
  chunk truncates whatever it left behind. No transaction is open while a body is read.
- One chunk of an upload is received at a time, under an exclusive lock on its part file
  (flock: held across server processes and workers, released by the kernel if a process
  dies); a second request for the same upload meanwhile gets 409 and retries.
- Completion hashes the part file's bytes as stored, checking each chunk against its logged
  digest, so a completed upload's digest is always the digest of its bytes; no hash state
  lives in a process. A damaged chunk rolls the upload back to it.
- Deduplication never answers "is this content on the server?": a declared digest matches
  only the caller's own completed uploads. Anyone else's identical content is stored once
  after its bytes have arrived (the store is content-addressed).
"""

from __future__ import annotations

import base64
import binascii
import fcntl
import hashlib
import os
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from sqlalchemy.orm import Session

from server.accounts.models import User
from server.config import Settings
from server.db import session_scope
from server.errors import Conflict, InvalidInput, NotFound, TooLarge
from server.storage import CHUNK, ArtifactStore
from server.uploads import repository
from server.uploads.models import Upload, UploadChunk
from server.uploads.repository import COMPLETE, OPEN


def _part(store: ArtifactStore, key: str) -> Path:
    return store.root / "uploads" / key


def start(
    session: Session,
    store: ArtifactStore,
    user: User,
    filename: str,
    size: int,
    max_bytes: int,
    expected_digest: str | None = None,
) -> Upload:
    """A new upload; or, for a declared digest, the caller's own completed upload of that
    content (nothing to send) or their open one (resumed where it stopped)."""
    if size <= 0:
        raise InvalidInput("size must be positive", field="size")
    if size > max_bytes:
        raise TooLarge(f"{size} bytes is over the upload limit of {max_bytes}", field="size")
    upload = Upload(
        key=str(uuid.uuid4()),
        user_id=user.id,
        filename=filename[:255],
        size=size,
        expected_digest=expected_digest,
    )
    if expected_digest:
        done = repository.own_with_digest(session, user.id, expected_digest, COMPLETE)
        if done is not None and done.size != size:
            raise InvalidInput(
                f"you uploaded {expected_digest} before with {done.size} bytes, not {size}: "
                "a digest names one content of one size",
                field="size",
            )
        if done is not None and store.exists(expected_digest):
            upload.status, upload.digest, upload.received = COMPLETE, expected_digest, size
            session.add(upload)
            session.flush()
            return upload
        open_ = repository.own_with_digest(session, user.id, expected_digest, OPEN)
        if open_ is not None and open_.size == size:
            return open_
    part = _part(store, upload.key)
    part.parent.mkdir(parents=True, exist_ok=True)
    part.touch()
    session.add(upload)
    session.flush()
    return upload


def get_own(session: Session, user: User, key: str) -> Upload:
    upload = repository.by_key(session, key)
    if upload is None or upload.user_id != user.id:
        raise NotFound(f"no upload {key!r}", field="upload")
    return upload


def get_complete(session: Session, user: User, key: str) -> Upload:
    upload = get_own(session, user, key)
    if upload.status != COMPLETE or not upload.digest:
        raise InvalidInput(
            f"upload {key!r} is not complete ({upload.received} of {upload.size} bytes)",
            field="upload",
        )
    return upload


def parse_checksum(header: str | None) -> bytes | None:
    """`Upload-Checksum: sha256 <base64 of the 32-byte digest>` -> the digest."""
    if header is None:
        return None
    algo, _, value = header.strip().partition(" ")
    try:
        digest = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        digest = b""
    if algo.lower() != "sha256" or len(digest) != 32:
        raise InvalidInput(
            "Upload-Checksum must be 'sha256 <base64 of the chunk's SHA-256>'",
            field="upload_checksum",
        )
    return digest


def append(
    settings: Settings,
    store: ArtifactStore,
    user: User,
    key: str,
    offset: int,
    body: Iterable[bytes],
    *,
    length: int | None = None,
    checksum: bytes | None = None,
) -> Upload:
    """Receive one chunk at `offset` (`length` bytes if the request declared it)."""
    upload = _snapshot(settings, user, key)
    if upload.status == COMPLETE:
        return upload
    _check_offset(upload, offset, length)
    fd = _open_part(settings, store, user, upload)
    if fd is None:
        return _snapshot(settings, user, key)
    with _locked(fd, upload) as f:
        upload = _snapshot(settings, user, key)  # as committed, now that no one else writes
        if upload.status == COMPLETE:
            return upload
        _check_offset(upload, offset, length)
        _recover(settings, f, upload)
        n, digest = _write_chunk(f, upload, offset, body, length, checksum)
        if n:
            with session_scope(settings) as session:
                if not repository.advance(session, upload.id, offset, n, digest):
                    raise _busy(upload)
            upload = _snapshot(settings, user, key)
        if upload.received == upload.size:
            upload = _finish(settings, store, user, f, upload)
    return upload


def _snapshot(settings: Settings, user: User, key: str) -> Upload:
    """The upload as committed, read in a transaction of its own (closed on return)."""
    with session_scope(settings) as session:
        return get_own(session, user, key)


def _check_offset(upload: Upload, offset: int, length: int | None) -> None:
    if offset != upload.received:
        raise Conflict(
            f"chunk starts at byte {offset}, the server has {upload.received}: resume there",
            field="offset",
            received=upload.received,
        )
    if length is not None and offset + length > upload.size:
        raise _too_large(upload)


def _too_large(upload: Upload) -> TooLarge:
    return TooLarge(
        f"upload {upload.key} sent more than its declared {upload.size} bytes; nothing of "
        f"this chunk was kept (resume at byte {upload.received})",
        field="size",
        received=upload.received,
    )


def _busy(upload: Upload) -> Conflict:
    return Conflict(
        f"another request is sending a chunk of upload {upload.key}; ask for its offset "
        "and resume there",
        field="offset",
        received=upload.received,
    )


def _open_part(settings: Settings, store: ArtifactStore, user: User, upload: Upload) -> int | None:
    """The part file, opened for writing; None if the upload completed meanwhile."""
    part = _part(store, upload.key)
    try:
        return os.open(part, os.O_RDWR)
    except FileNotFoundError:
        if _snapshot(settings, user, upload.key).status == COMPLETE:
            return None  # its part file went into the store
        # Lost (artifact directory emptied): start it again; _recover rolls back to 0.
        part.parent.mkdir(parents=True, exist_ok=True)
        return os.open(part, os.O_RDWR | os.O_CREAT, 0o600)


@contextmanager
def _locked(fd: int, upload: Upload) -> Iterator[BinaryIO]:
    """The part file, locked for this request alone (until it ends or its process dies)."""
    with os.fdopen(fd, "r+b") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise _busy(upload) from None
        yield f


def _recover(settings: Settings, f: BinaryIO, upload: Upload) -> None:
    """If the part file lost committed bytes (a disk restored from backup, a wiped
    directory), go back to the last chunk still wholly on disk and say where to resume."""
    on_disk = os.fstat(f.fileno()).st_size
    if on_disk >= upload.received:
        return
    with session_scope(settings) as session:
        kept = [c for c in repository.chunks(session, upload.id) if c.offset + c.length <= on_disk]
        to = _contiguous_end(kept)
        repository.roll_back(session, upload.id, to)
    raise Conflict(
        f"the server lost bytes of upload {upload.key} after byte {to}: resume there",
        field="offset",
        received=to,
    )


def _contiguous_end(chunks: list[UploadChunk]) -> int:
    end = 0
    for chunk in chunks:
        if chunk.offset != end:
            break
        end += chunk.length
    return end


def _write_chunk(
    f: BinaryIO,
    upload: Upload,
    offset: int,
    body: Iterable[bytes],
    length: int | None,
    checksum: bytes | None,
) -> tuple[int, str]:
    """Write the chunk after the committed prefix; returns its length and digest. On any
    failure the bytes written are cut off again (tidiness only: they are beyond
    `received`, and the next chunk truncates there anyway)."""
    h = hashlib.sha256()
    n = 0
    f.truncate(offset)
    f.seek(offset)
    try:
        for piece in body:
            n += len(piece)
            if offset + n > upload.size:
                raise _too_large(upload)
            f.write(piece)
            h.update(piece)
        if length is not None and n != length:
            raise Conflict(
                f"the chunk ended after {n} of its {length} bytes; resume at byte {offset}",
                field="offset",
                received=offset,
            )
        if checksum is not None and h.digest() != checksum:
            raise Conflict(
                "the chunk's SHA-256 differs from its Upload-Checksum: it was damaged on the "
                f"way and not kept; send it again from byte {offset}",
                field="upload_checksum",
                received=offset,
            )
        # No fsync per chunk: a process killed later loses nothing (the page cache
        # survives it), and bytes a power cut loses are found at completion, where every
        # chunk is checked against its logged digest and a damaged one is sent again.
        f.flush()
    except BaseException:
        f.truncate(offset)
        raise
    return n, "sha256:" + h.hexdigest()


def _finish(
    settings: Settings, store: ArtifactStore, user: User, f: BinaryIO, upload: Upload
) -> Upload:
    """Hash the stored bytes, check them against the chunk log and the declared digest,
    and put them in the store under the digest they have."""
    with session_scope(settings) as session:
        chunks = repository.chunks(session, upload.id)
    digest, damaged = _verify(f, chunks, upload.size)
    if damaged is not None:
        _reset(settings, f, upload, damaged)
        raise Conflict(
            f"bytes of upload {upload.key} from byte {damaged} on were damaged on the "
            "server; send them again from there",
            field="offset",
            received=damaged,
        )
    if upload.expected_digest and digest != upload.expected_digest:
        _reset(settings, f, upload, 0)
        raise Conflict(
            f"upload {upload.key}: content digest {digest} differs from the declared "
            f"{upload.expected_digest}; start again",
            field="expected_digest",
        )
    os.fsync(f.fileno())  # durable before the database calls it complete
    part = _part(store, upload.key)
    # Linked in before the commit, unlinked after: a crash in between leaves the bytes
    # under both names, and the next request for this upload finishes it again.
    store.link_in(part, digest)
    with session_scope(settings) as session:
        if not repository.complete(session, upload.id, upload.size, digest):
            raise _busy(upload)
    part.unlink(missing_ok=True)
    store.seal(digest)
    return _snapshot(settings, user, upload.key)


def _verify(f: BinaryIO, chunks: list[UploadChunk], size: int) -> tuple[str, int | None]:
    """The SHA-256 of the first `size` bytes, and the offset of the first chunk whose
    bytes no longer match its logged digest (or that the log does not cover)."""
    whole = hashlib.sha256()
    f.seek(0)
    expected = 0
    for chunk in chunks:
        if chunk.offset != expected:
            return "", expected
        part = hashlib.sha256()
        left = chunk.length
        while left:
            block = f.read(min(CHUNK, left))
            if not block:
                return "", chunk.offset
            whole.update(block)
            part.update(block)
            left -= len(block)
        if "sha256:" + part.hexdigest() != chunk.digest:
            return "", chunk.offset
        expected += chunk.length
    if expected != size:
        return "", expected
    return "sha256:" + whole.hexdigest(), None


def _reset(settings: Settings, f: BinaryIO, upload: Upload, to: int) -> None:
    with session_scope(settings) as session:
        repository.roll_back(session, upload.id, to)
    f.truncate(to)
