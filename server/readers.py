"""A thread for the short, blocking reads of a hot path (the held leaderboard's one indexed
SELECT), so the event loop never waits on the database: a call costs about a third of the
CPU of anyio's threadpool hop (~50 µs against ~140 µs under load on 2 cores), which is
most of what such a request costs once routing is skipped. A daemon thread: a server
shutting down abandons a read nobody waits for.

One thread per process, not several: measured with bench/bench_leaderboard.py (10,000
results, --workers 2, c=64, 2 cores), one reader served 3,556-4,409 req/s at p99 25-32 ms
on PostgreSQL, two 3,252-3,983 req/s at p99 33-39 ms and four 3,906-4,002 req/s at
p99 36-39 ms; SQLite 6,856-8,082 req/s at p99 17 ms with one, 6,020-6,389 at p99 24-30 ms
with four. More threads only contend for the GIL (and PostgreSQL backends for the cores).
A job the thread has not started within `START_WITHIN_S` is given up (`Late`), so a read
that hangs delays the lane's other requests by that much at most: they then take the
normal path."""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")

# Threads (each may hold one pooled database connection: see server.db.get_engine).
THREADS = 1
START_WITHIN_S = 1.0


class Late(Exception):
    """The reader had not started the job within its time; nothing of it ran."""


class _Job(Generic[T]):
    __slots__ = ("fn", "future", "lock", "loop", "state")

    def __init__(self, loop: asyncio.AbstractEventLoop, fn: Callable[[], T]) -> None:
        self.loop = loop
        self.future: asyncio.Future[T] = loop.create_future()
        self.fn = fn
        self.state = "queued"  # then "started" (by the reader) or "late" (by the loop)
        self.lock = threading.Lock()

    def claim(self) -> bool:
        with self.lock:
            if self.state != "queued":
                return False
            self.state = "started"
            return True

    def give_up(self) -> None:
        """On the loop, when the job's start deadline passes."""
        with self.lock:
            if self.state != "queued":
                return
            self.state = "late"
        if not self.future.done():
            self.future.set_exception(Late())


_jobs: queue.SimpleQueue[_Job[Any]] = queue.SimpleQueue()
_started: list[threading.Thread] = []
_lock = threading.Lock()


async def run(fn: Callable[[], T], *, start_within: float | None = None) -> T:
    """`fn()` in the reader thread; `Late` if it has not started within `start_within`
    seconds (default `START_WITHIN_S`)."""
    job = _Job(asyncio.get_running_loop(), fn)
    if len(_started) < THREADS:
        _start()
    _jobs.put(job)
    timer = job.loop.call_later(start_within or START_WITHIN_S, job.give_up)
    try:
        return await job.future
    finally:
        timer.cancel()


def _start() -> None:
    with _lock:
        while len(_started) < THREADS:
            thread = threading.Thread(target=_work, name="hot-reader", daemon=True)
            thread.start()
            _started.append(thread)


def _work() -> None:
    while True:
        job = _jobs.get()
        if not job.claim():
            continue  # given up meanwhile: its request took the normal path
        try:
            result = job.fn()
        except BaseException as exc:  # handed to the awaiting request, which raises it
            _settle(job, None, exc)
        else:
            _settle(job, result, None)


def _settle(job: _Job[Any], result: Any, exc: BaseException | None) -> None:
    def settle() -> None:
        if job.future.done():  # the request went away meanwhile
            return
        if exc is not None:
            job.future.set_exception(exc)
        else:
            job.future.set_result(result)

    # RuntimeError: that loop is closed, so nobody waits for this result any more.
    with contextlib.suppress(RuntimeError):
        job.loop.call_soon_threadsafe(settle)
