"""Git LFS objects for a codebase clone, fetched by heldout itself rather than by git-lfs.

Why not `git lfs pull`: git-lfs looks host names up itself and follows the batch API's
download `href`s to any host, so neither the address check nor its pin would hold. A
repository's LFS server could send the worker (a machine inside the installation, not a
container) to its own services, or change its name's answer between check and connection.

Here every connection, the batch request and each download, goes to an address resolved
once and checked against the worker's `AddressPolicy`, with the host name kept for TLS and
the Host header; redirects are not followed. An `href` may name another host than the
repository's (GitHub serves objects from a CDN): it is checked like the repository's own
host rather than refused. Each object is capped at the size its pointer declares and its
sha256 must equal the pointer's oid before it replaces the pointer file; the total must fit
the clone's size cap before anything is downloaded.

For file:// remotes (organizer-local repositories) objects are read from the repository's
own store (`lfs/objects/`, as `git lfs push` to a path writes it). Only the "basic"
transfer, without credentials: heldout clones public repositories. The repository's
`.lfsconfig` is ignored: the endpoint is always the one git-lfs derives from the clone URL.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import httpx

from server.codebases.addresses import AddressPolicy, RefusedHost, Resolver, check_host
from server.codebases.git import DEFAULT_PORTS, RemoteFailure

POINTER_PREFIX = b"version https://git-lfs.github.com/spec/v1"
MAX_POINTER_BYTES = 1024  # git-lfs never writes larger pointers
BATCH_SIZE = 100  # objects per batch request, as git-lfs sends them
MAX_BATCH_RESPONSE_BYTES = 10_000_000
CHUNK_BYTES = 1 << 16
MEDIA_TYPE = "application/vnd.git-lfs+json"
_POINTER_RE = re.compile(
    rb"^version https://git-lfs\.github\.com/spec/v1\noid sha256:([0-9a-f]{64})\nsize ([0-9]+)\n$"
)
# Set by the client or meaningless once the connection is pinned.
_DROPPED_HEADERS = {"host", "content-length", "transfer-encoding", "connection"}


class LfsError(Exception):
    """`message` is for the participant (fixed words); `detail` for the operator log."""

    def __init__(self, message: str, detail: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail


@dataclass(frozen=True)
class Pointer:
    path: str  # relative to the work tree
    oid: str
    size: int
    pointer_bytes: int  # size of the pointer file it replaces


def read_pointers(root: Path, paths: list[str]) -> list[Pointer]:
    """The LFS pointer files among `paths` (small blobs of the checked-out tree)."""
    found = []
    for rel in paths:
        try:
            data = (root / rel).read_bytes()[: MAX_POINTER_BYTES + 1]
        except FileNotFoundError:
            continue
        if not data.startswith(POINTER_PREFIX):
            continue
        match = _POINTER_RE.match(data)
        if match is None:
            raise LfsError(
                f"'{rel}' starts like a Git LFS pointer but is not one heldout can read "
                "(only version, oid sha256 and size lines are supported)"
            )
        found.append(Pointer(rel, match[1].decode(), int(match[2]), len(data)))
    return found


def lfs_endpoint(url: str) -> str | None:
    """The LFS API git-lfs would derive from a clone URL; None for file:// (read directly)."""
    if url.startswith("file://"):
        return None
    if url.startswith("git://"):
        # git-lfs maps git:// to https:// on the same host.
        url = "https://" + url[len("git://") :]
    base = url.rstrip("/")
    return (base if base.endswith(".git") else base + ".git") + "/info/lfs"


def fetch(
    url: str,
    dest: Path,
    pointers: list[Pointer],
    *,
    policy: AddressPolicy,
    resolve: Resolver,
    deadline: float,
    tree_bytes: int,
    max_bytes: int,
) -> None:
    """Replace each pointer file under `dest` with its object (see the module docstring)."""
    grows = sum(p.size - p.pointer_bytes for p in pointers)
    if tree_bytes + grows > max_bytes:
        raise LfsError(
            f"with its Git LFS files the repository holds {_mb(tree_bytes + grows)} MB, "
            f"above the cap of {_mb(max_bytes)} MB"
        )
    sizes = {p.oid: p.size for p in pointers}
    first_path = {p.oid: p.path for p in reversed(pointers)}
    staging = Path(tempfile.mkdtemp(prefix="heldout-lfs-", dir=dest / ".git"))
    try:
        endpoint = lfs_endpoint(url)
        if endpoint is None:
            _copy_local(Path(url[len("file://") :]), sizes, first_path, staging)
        else:
            net = _Net(policy, resolve, deadline)
            actions = net.batch(endpoint, sizes, first_path)
            for oid, (href, headers) in actions.items():
                net.download(href, headers, oid, sizes[oid], first_path[oid], staging / oid)
        for p in pointers:
            _replace(dest / p.path, staging / p.oid)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _replace(target: Path, source: Path) -> None:
    """Put `source`'s bytes at `target` (a regular file of the tree), keeping its mode."""
    mode = target.stat().st_mode & 0o777
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".heldout-lfs-")
    with os.fdopen(fd, "wb") as out, source.open("rb") as src:
        shutil.copyfileobj(src, out, CHUNK_BYTES)
    os.chmod(tmp, mode)
    os.replace(tmp, target)


def _copy_local(
    repo: Path, sizes: dict[str, int], first_path: dict[str, str], staging: Path
) -> None:
    missing = []
    for oid, size in sizes.items():
        stores = (repo / "lfs" / "objects", repo / ".git" / "lfs" / "objects")
        source = next((s / oid[:2] / oid[2:4] / oid for s in stores
                       if (s / oid[:2] / oid[2:4] / oid).is_file()), None)  # fmt: skip
        if source is None:
            missing.append(oid)
            continue
        with source.open("rb") as f:
            _verified_copy(_chunks(f), oid, size, first_path[oid], staging / oid, deadline=None)
    if missing:
        raise _missing(missing, first_path)


def _chunks(f: IO[bytes]) -> Iterator[bytes]:
    while chunk := f.read(CHUNK_BYTES):
        yield chunk


def _missing(oids: list[str], first_path: dict[str, str]) -> LfsError:
    return LfsError(
        f"{len(oids)} Git LFS object(s) are missing on the LFS server (e.g. the one for "
        f"'{first_path[oids[0]]}'): was `git lfs push` run?"
    )


def _verified_copy(
    chunks: Iterator[bytes], oid: str, size: int, path: str, target: Path, *,
    deadline: float | None,
) -> None:  # fmt: skip
    digest = hashlib.sha256()
    written = 0
    with target.open("wb") as out:
        for chunk in chunks:
            written += len(chunk)
            if written > size:
                raise LfsError(
                    f"the Git LFS object for '{path}' is larger than its pointer says "
                    f"({size} bytes)"
                )
            if deadline is not None and time.monotonic() > deadline:
                raise _timeout()
            digest.update(chunk)
            out.write(chunk)
    if written != size or digest.hexdigest() != oid:
        raise LfsError(f"the Git LFS object for '{path}' does not match its pointer")


def _timeout() -> LfsError:
    return LfsError("fetching the Git LFS files took longer than the clone's time limit")


@dataclass
class _Net:
    """Pinned HTTP to the LFS server and wherever its hrefs point, after checking each."""

    policy: AddressPolicy
    resolve: Resolver
    deadline: float

    def batch(
        self, endpoint: str, sizes: dict[str, int], first_path: dict[str, str]
    ) -> dict[str, tuple[str, dict[str, str]]]:
        actions: dict[str, tuple[str, dict[str, str]]] = {}
        missing: list[str] = []
        items = list(sizes.items())
        for start in range(0, len(items), BATCH_SIZE):
            chunk = dict(items[start : start + BATCH_SIZE])
            request = {
                "operation": "download",
                "transfers": ["basic"],
                "objects": [{"oid": oid, "size": size} for oid, size in chunk.items()],
                "hash_algo": "sha256",
            }
            headers = {"Accept": MEDIA_TYPE, "Content-Type": MEDIA_TYPE}
            with self._open(
                "POST",
                f"{endpoint}/objects/batch",
                headers,
                json.dumps(request).encode(),
                "the Git LFS server",
            ) as response:
                body = _read_capped(response, MAX_BATCH_RESPONSE_BYTES)  # fmt: skip
            found, absent = _parse_batch(body, chunk)
            actions.update(found)
            missing += absent
        if missing:
            raise _missing(missing, first_path)
        return actions

    def download(
        self, href: str, headers: dict[str, str], oid: str, size: int, path: str, target: Path
    ) -> None:
        with self._open("GET", href, headers, None, "a Git LFS download") as response:
            try:
                _verified_copy(response.iter_bytes(CHUNK_BYTES), oid, size, path, target,
                               deadline=self.deadline)  # fmt: skip
            except httpx.HTTPError as exc:
                raise _transport_error(exc, "a Git LFS download") from None

    @contextmanager
    def _open(
        self, method: str, url: str, headers: dict[str, str], content: bytes | None, what: str
    ) -> Iterator[httpx.Response]:
        pinned, host_header, extensions = self._pin(url, what)
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise _timeout()
        sent = {k: v for k, v in headers.items() if k.lower() not in _DROPPED_HEADERS}
        sent["Host"] = host_header
        # trust_env=False: no proxy from the environment (it would do its own lookup).
        with httpx.Client(trust_env=False, follow_redirects=False, timeout=remaining) as client:
            request = client.build_request(
                method, pinned, headers=sent, content=content, extensions=extensions
            )
            try:
                response = client.send(request, stream=True)
            except httpx.HTTPError as exc:
                raise _transport_error(exc, what) from None
            try:
                if response.status_code != 200:
                    raise LfsError(
                        f"{what} failed: {_status_failure(response.status_code).value}",
                        f"{method} {url}: HTTP {response.status_code}",
                    )
                yield response
            finally:
                response.close()

    def _pin(self, url: str, what: str) -> tuple[httpx.URL, str, dict[str, Any]]:
        try:
            target = httpx.URL(url)
        except httpx.InvalidURL:
            raise LfsError(f"{what} refused: the address is not a valid URL", url) from None
        scheme = target.scheme
        if scheme not in ("https", "http") or not target.host or target.userinfo:
            raise LfsError(f"{what} refused: only https:// URLs without credentials", url)
        try:
            address = check_host(target.host, self.policy, self.resolve, must_resolve=True)[0]
        except RefusedHost as exc:
            raise LfsError(f"{what} refused: {exc.message}", url) from None
        if scheme == "http" and not address.is_loopback:
            raise LfsError(f"{what} refused: plain http:// is not allowed; use https://", url)
        host_header = target.netloc.decode("ascii")
        port = target.port or DEFAULT_PORTS[scheme]
        pinned = target.copy_with(host=str(address), port=port)
        named = target.host != str(address) and ":" not in target.host
        extensions = {"sni_hostname": target.host} if scheme == "https" and named else {}
        return pinned, host_header, extensions


def _read_capped(response: httpx.Response, limit: int) -> bytes:
    data = bytearray()
    try:
        for chunk in response.iter_bytes(CHUNK_BYTES):
            data += chunk
            if len(data) > limit:
                raise LfsError("the Git LFS server's answer is too large")
    except httpx.HTTPError as exc:
        raise _transport_error(exc, "the Git LFS server") from None
    return bytes(data)


def _parse_batch(
    body: bytes, requested: dict[str, int]
) -> tuple[dict[str, tuple[str, dict[str, str]]], list[str]]:
    """Download actions by oid, and the oids the server says it lacks."""
    invalid = LfsError("the Git LFS server's answer is not a valid batch response")
    try:
        answer = json.loads(body)
    except ValueError:
        raise invalid from None
    objects = answer.get("objects") if isinstance(answer, dict) else None
    if not isinstance(objects, list):
        raise invalid
    found: dict[str, tuple[str, dict[str, str]]] = {}
    absent = []
    for obj in objects:
        oid = obj.get("oid") if isinstance(obj, dict) else None
        if not isinstance(oid, str) or oid not in requested:
            continue
        action = (obj.get("actions") or {}).get("download") if isinstance(obj, dict) else None
        href = action.get("href") if isinstance(action, dict) else None
        if not isinstance(href, str):
            absent.append(oid)
            continue
        raw_headers = action.get("header") if isinstance(action, dict) else None
        headers = {str(k): str(v) for k, v in (raw_headers or {}).items()} if isinstance(
            raw_headers, dict) else {}  # fmt: skip
        found[oid] = (href, headers)
    absent += [oid for oid in requested if oid not in found and oid not in absent]
    return found, absent


def _status_failure(status: int) -> RemoteFailure:
    if status in (401, 403):
        return RemoteFailure.auth_required
    if 300 <= status < 400:
        return RemoteFailure.redirect
    if status == 404:
        return RemoteFailure.not_found
    return RemoteFailure.failed


def _transport_error(exc: httpx.HTTPError, what: str) -> LfsError:
    if isinstance(exc, httpx.TimeoutException):
        return _timeout()
    return LfsError(f"{what} failed: {RemoteFailure.unreachable.value}", repr(exc))


def _mb(n: int) -> str:
    return f"{n / 1_000_000:.1f}".rstrip("0").rstrip(".")
