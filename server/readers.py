"""A thread for the short, blocking reads of a hot path (the held leaderboard's one indexed
SELECT), so the event loop never waits on the database: a call costs about a third of the
CPU of anyio's threadpool hop (~50 µs against ~140 µs under load on 2 cores), which is
most of what such a request costs once routing is skipped. A daemon thread: a server
shutting down abandons a read nobody waits for.

One thread per process, not several: measured with bench/bench_leaderboard.py (10,000
results, --workers 2, c=64, 2 cores; 6-8 runs each on PostgreSQL, 2 on SQLite), one reader
gave 3,541-4,409 req/s at p99 25-34 ms on PostgreSQL, two 3,252-4,698 req/s at p99
32-55 ms, four 2,991-4,002 req/s at p99 36-66 ms; on SQLite one gave 6,856-8,082 req/s
at p99 17 ms, four 6,020-6,389 at p99 24-30 ms. More threads contend for the GIL (and
PostgreSQL's backends for the cores), which shows in the tail.

A job the thread has not started within `START_WITHIN_S` is given up (`Late`), and while
the thread has been on one job longer than that, a new one is refused at once: a read
that hangs delays the lane's other requests by that much at most, and they then take the
normal path. A job whose request went away before it started is not run."""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import time
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
        self.state = "queued"  # then "started" (by the reader) or "dropped" (by the loop)
        self.lock = threading.Lock()

    def leave_queue(self, to: str) -> bool:
        """Move the job from "queued" to `to`: "started" (the reader takes it) or "dropped"
        (the loop gives it up); False if it had left the queue already."""
        with self.lock:
            if self.state != "queued":
                return False
            self.state = to
            return True

    def give_up(self) -> None:
        """On the loop, when the job's start deadline passes."""
        if self.leave_queue("dropped") and not self.future.done():
            self.future.set_exception(Late())


_jobs: queue.SimpleQueue[_Job[Any]] = queue.SimpleQueue()
_started: list[threading.Thread] = []
_busy_since: list[float | None] = []  # per thread: when it started its job, None if idle
_lock = threading.Lock()


async def run(fn: Callable[[], T], *, start_within: float | None = None) -> T:
    """`fn()` in the reader thread; `Late` if it has not started within `start_within`
    seconds (default `START_WITHIN_S`)."""
    within = START_WITHIN_S if start_within is None else start_within
    if len(_started) < THREADS:
        _start()
    now = time.monotonic()
    if all(since is not None and now - since > within for since in _busy_since):
        raise Late()  # every reader is stuck in a job: queueing more would only wait
    job = _Job(asyncio.get_running_loop(), fn)
    _jobs.put(job)
    timer = job.loop.call_later(within, job.give_up)
    try:
        return await job.future
    finally:
        timer.cancel()
        job.leave_queue("dropped")  # the request was cancelled while queued: not run


def _start() -> None:
    with _lock:
        while len(_started) < THREADS:
            _busy_since.append(None)
            thread = threading.Thread(
                target=_work, args=(len(_started),), name="hot-reader", daemon=True
            )
            thread.start()
            _started.append(thread)


def _work(slot: int) -> None:
    while True:
        job = _jobs.get()
        if not job.leave_queue("started"):
            continue  # dropped meanwhile: its request took the normal path, or went away
        _busy_since[slot] = time.monotonic()
        try:
            result = job.fn()
        except BaseException as exc:  # handed to the awaiting request, which raises it
            _settle(job, None, exc)
        else:
            _settle(job, result, None)
        finally:
            _busy_since[slot] = None


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
