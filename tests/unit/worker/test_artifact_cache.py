"""The node's artifact cache: files by digest, verified on arrival, bounded in size and
evicted least-recently-used, never while a job holds them."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from worker.cache import ArtifactCache, DigestMismatch, Sink


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def writer(data: bytes, calls: list[str] | None = None) -> Callable[[Sink], None]:
    def fetch(out: Sink) -> None:
        if calls is not None:
            calls.append(digest_of(data))
        out.write(data)

    return fetch


def cached(cache: ArtifactCache, data: bytes) -> bool:
    return cache.has(digest_of(data))


def put(cache: ArtifactCache, data: bytes) -> None:
    """Fetch and release at once (no job holds it)."""
    pin = cache.get(digest_of(data), writer(data), size=len(data))
    pin.release()


def test_a_fetched_file_is_verified_and_served_from_the_cache_afterwards(tmp_path: Path) -> None:
    cache = ArtifactCache(tmp_path / "cache", max_bytes=1000)
    calls: list[str] = []
    data = b"x" * 100
    pin = cache.get(digest_of(data), writer(data, calls))
    assert pin.path.read_bytes() == data
    pin.release()
    again = cache.get(digest_of(data), writer(data, calls))
    assert again.path.read_bytes() == data and len(calls) == 1
    again.release()
    assert cache.size_bytes() == 100


def test_a_file_whose_content_does_not_match_its_digest_is_refused_and_not_kept(
    tmp_path: Path,
) -> None:
    cache = ArtifactCache(tmp_path / "cache", max_bytes=1000)
    wanted = digest_of(b"the real content")
    with pytest.raises(DigestMismatch, match="sha256"):
        cache.get(wanted, writer(b"something else"))
    assert not cache.has(wanted) and cache.size_bytes() == 0
    assert not list((tmp_path / "cache" / "tmp").iterdir())  # no partial file left


def test_an_interrupted_fetch_leaves_no_partial_file(tmp_path: Path) -> None:
    cache = ArtifactCache(tmp_path / "cache", max_bytes=1000)
    data = b"y" * 200

    def broken(out: Sink) -> None:
        out.write(data[:50])
        raise ConnectionError("connection reset")

    with pytest.raises(ConnectionError):
        cache.get(digest_of(data), broken)
    assert not cached(cache, data)
    assert not list((tmp_path / "cache" / "tmp").iterdir())
    pin = cache.get(digest_of(data), writer(data))  # the next try fetches it whole
    assert pin.path.read_bytes() == data


def test_least_recently_used_files_are_evicted_first_to_stay_within_the_bound(
    tmp_path: Path,
) -> None:
    cache = ArtifactCache(tmp_path / "cache", max_bytes=300)
    a, b, c, d = (bytes([n]) * 100 for n in range(4))
    for data in (a, b, c):
        put(cache, data)
        time.sleep(0.01)
    put(cache, a)  # a used again: b is now the least recently used
    time.sleep(0.01)
    put(cache, d)
    assert [cached(cache, x) for x in (a, b, c, d)] == [True, False, True, True]
    assert cache.size_bytes() <= 300
    time.sleep(0.01)
    put(cache, b)  # c is now the oldest
    assert [cached(cache, x) for x in (a, b, c, d)] == [True, True, False, True]
    assert cache.size_bytes() == 300


def test_a_file_in_use_by_a_running_job_is_never_evicted(tmp_path: Path) -> None:
    cache = ArtifactCache(tmp_path / "cache", max_bytes=200)
    a, b, c = (bytes([n]) * 100 for n in range(3))
    held = cache.get(digest_of(a), writer(a))  # the oldest, but a job holds it
    time.sleep(0.01)
    put(cache, b)
    time.sleep(0.01)
    put(cache, c)
    assert cached(cache, a) and held.path.read_bytes() == a
    assert not cached(cache, b) and cached(cache, c)
    held.release()
    time.sleep(0.01)
    put(cache, b)  # a is free now, and the oldest
    assert not cached(cache, a) and cached(cache, b) and cached(cache, c)


def test_an_artifact_larger_than_the_whole_cache_is_refused(tmp_path: Path) -> None:
    cache = ArtifactCache(tmp_path / "cache", max_bytes=10)
    data = b"z" * 11
    with pytest.raises(ValueError, match="larger than the node's artifact cache"):
        cache.get(digest_of(data), writer(data), size=len(data))


def test_concurrent_fetches_of_one_digest_download_it_once(tmp_path: Path) -> None:
    cache = ArtifactCache(tmp_path / "cache", max_bytes=10_000)
    data = b"w" * 4000
    calls: list[str] = []

    def slow(out: Sink) -> None:
        calls.append("fetch")
        for i in range(0, len(data), 500):
            out.write(data[i : i + 500])
            time.sleep(0.01)

    got: list[bytes] = []
    errors: list[BaseException] = []

    def job() -> None:
        try:
            pin = cache.get(digest_of(data), slow)
            got.append(pin.path.read_bytes())
            pin.release()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=job) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors
    assert got == [data] * 6 and calls == ["fetch"]
    # Another cache object on the same directory (another worker process) shares it.
    other = ArtifactCache(tmp_path / "cache", max_bytes=10_000)
    assert other.get(digest_of(data), slow).path.read_bytes() == data and len(calls) == 1


def test_not_a_digest_is_refused(tmp_path: Path) -> None:
    cache = ArtifactCache(tmp_path / "cache", max_bytes=10)
    with pytest.raises(ValueError, match="not a sha256 digest"):
        cache.get("sha256:../../etc/passwd", writer(b""))


def _fetch_in_process(root: str, data: bytes, log: str) -> None:
    def slow(out: Sink) -> None:
        with open(log, "a") as f:
            f.write("fetch\n")
        for i in range(0, len(data), 1000):
            out.write(data[i : i + 1000])
            time.sleep(0.01)

    pin = ArtifactCache(Path(root), max_bytes=10_000).get(digest_of(data), slow)
    assert pin.path.read_bytes() == data


def test_worker_processes_sharing_the_cache_fetch_one_digest_once(tmp_path: Path) -> None:
    import multiprocessing

    data = b"p" * 5000
    log = tmp_path / "fetches.log"
    ctx = multiprocessing.get_context("fork")
    procs = [
        ctx.Process(target=_fetch_in_process, args=(str(tmp_path / "cache"), data, str(log)))
        for _ in range(4)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
    assert [p.exitcode for p in procs] == [0] * 4
    assert log.read_text() == "fetch\n"
