"""The artifact store as a job sees it: the shared directory, or the server by digest.

With HELDOUT_NODE_SERVER_URL and HELDOUT_NODE_TOKEN set, a node shares no filesystem with
the server: `RemoteStore.path(digest)` fetches the artifact through the node-only endpoint
into the node's cache (verified against its digest, see worker/cache.py) and holds it for
the job; outputs and logs go back by `PUT`, which the server stores only if they hash to
their digest. Unset: the `ArtifactStore` directory is read and written directly.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import httpx

from server.config import Settings
from server.nodes.service import NODE_TOKEN_HEADER
from server.storage import CHUNK, ArtifactStore, sha256_file
from worker.cache import ArtifactCache, DigestMismatch, Pin, Sink, check_digest
from worker.steps import InfrastructureError

log = logging.getLogger(__name__)

T = TypeVar("T")
# Transport errors (a server restarting, a dropped connection) are tried this many times.
TRIES = 3


class ArtifactMissing(InfrastructureError):
    """The server has no artifact of that digest."""


@contextmanager
def store_for(settings: Settings) -> Iterator[ArtifactStore]:
    """The store one job uses; a remote store releases the job's cached files at the end."""
    if not settings.node_server_url:
        yield ArtifactStore(settings.artifacts_path)
        return
    store = RemoteStore(settings)
    try:
        yield store
    finally:
        store.close()


def cache_bytes(settings: Settings) -> int:
    """What the node's artifact cache holds (the heartbeat reports it)."""
    root = settings.node_cache_path / "sha256"
    if not root.is_dir():
        return 0
    return sum(p.stat().st_size for p in root.glob("*/*") if p.is_file())


class RemoteStore(ArtifactStore):
    """An ArtifactStore whose content lives on the server. Its root is the node's cache (same
    layout, `sha256/<2>/<hex>`), so paths handed out are local files on this node."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings.node_cache_path)
        self.cache = ArtifactCache(settings.node_cache_path, settings.node_cache_bytes)
        assert settings.node_token is not None  # Settings requires it with the URL
        # Full URLs, not a base_url: `sha256:...` alone would parse as a URL scheme.
        self.base = settings.node_server_url.rstrip("/") + "/api/v1/node/artifacts/"
        self.client = httpx.Client(
            headers={NODE_TOKEN_HEADER: settings.node_token.get_secret_value()},
            timeout=httpx.Timeout(60.0, connect=10.0),
        )
        self._pins: dict[str, Pin] = {}
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            for pin in self._pins.values():
                pin.release()
            self._pins.clear()
        self.client.close()

    # --- reading: fetched once into the cache, held until the job ends ------------------

    def path(self, digest: str) -> Path:
        try:
            check_digest(digest)
        except ValueError:
            return super().path(digest)  # raises NotFound, as the local store does
        with self._lock:
            held = self._pins.get(digest)
            if held is not None:
                return held.path
            pin = self._fetch(digest)
            self._pins[digest] = pin
            return pin.path

    def exists(self, digest: str) -> bool:
        try:
            self.path(digest)
        except ArtifactMissing:
            return False
        return True

    def _fetch(self, digest: str) -> Pin:
        if self.cache.has(digest):  # refetched only if evicted in between
            return self._cached(digest, lambda sink: self._download(digest, sink))
        return _retrying(f"fetching artifact {digest}", lambda: self._fetch_once(digest))

    def _fetch_once(self, digest: str) -> Pin:
        with self.client.stream("GET", self.base + digest) as r:
            _check(r, digest)
            size = int(r.headers.get("content-length", 0)) or None
            return self._cached(digest, lambda sink: _copy(r.iter_bytes(CHUNK), sink), size)

    def _cached(self, digest: str, fetch: Callable[[Sink], None], size: int | None = None) -> Pin:
        try:
            return self.cache.get(digest, fetch, size=size)
        except DigestMismatch as exc:
            raise InfrastructureError(f"refused a damaged artifact: {exc}") from exc
        except ValueError as exc:
            raise InfrastructureError(str(exc)) from exc

    def _download(self, digest: str, sink: Sink) -> None:
        with self.client.stream("GET", self.base + digest) as r:
            _check(r, digest)
            _copy(r.iter_bytes(CHUNK), sink)

    # --- writing: sent back to the server, which checks the digest --------------------

    def put_file(self, src: Path) -> tuple[str, int]:
        digest, size = sha256_file(src), src.stat().st_size
        _retrying(f"sending artifact {digest}", lambda: self._send(digest, size, _read(src)))
        return digest, size

    def put_chunks(self, chunks: Iterable[bytes], max_bytes: int | None = None) -> tuple[str, int]:
        tmp = self.tmp_path()
        try:
            size = 0
            with tmp.open("wb") as f:
                for chunk in chunks:
                    size += len(chunk)
                    if max_bytes is not None and size > max_bytes:
                        raise ValueError(f"content exceeds {max_bytes} bytes")
                    f.write(chunk)
            return self.put_file(tmp)
        finally:
            tmp.unlink(missing_ok=True)

    def put_bytes(self, data: bytes) -> str:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        _retrying(f"sending artifact {digest}", lambda: self._send(digest, len(data), [data]))
        return digest

    def adopt(self, tmp: Path, digest: str) -> Path:
        try:
            self.put_file(tmp)
        finally:
            tmp.unlink(missing_ok=True)
        return self.path(digest)

    def link_in(self, src: Path, digest: str) -> None:
        self.put_file(src)

    def seal(self, digest: str) -> None:
        pass  # the server's copy is sealed when stored

    def _send(self, digest: str, size: int, body: Iterable[bytes]) -> None:
        r = self.client.put(
            self.base + digest, content=iter(body), headers={"content-length": str(size)}
        )
        if r.status_code != 200:
            raise InfrastructureError(
                f"the server refused artifact {digest}: HTTP {r.status_code} {r.text[:300]}"
            )


def _check(r: httpx.Response, digest: str) -> None:
    if r.status_code == 404:
        raise ArtifactMissing(f"the server has no artifact {digest}")
    if r.status_code != 200:
        r.read()
        raise InfrastructureError(
            f"fetching artifact {digest}: HTTP {r.status_code} {r.text[:300]}"
            + (" (is HELDOUT_NODE_TOKEN a node token?)" if r.status_code in (401, 403) else "")
        )


def _copy(chunks: Iterable[bytes], sink: Sink) -> None:
    for chunk in chunks:
        sink.write(chunk)


def _read(src: Path) -> Iterator[bytes]:
    with src.open("rb") as f:
        while block := f.read(CHUNK):
            yield block


def _retrying(what: str, attempt: Callable[[], T]) -> T:
    for n in range(1, TRIES + 1):
        try:
            return attempt()
        except httpx.TransportError as exc:
            if n == TRIES:
                raise InfrastructureError(f"{what}: the server is unreachable ({exc})") from exc
            log.warning("%s: %s; trying again", what, exc)
            time.sleep(0.5 * 2**n)
    raise AssertionError("unreachable")
