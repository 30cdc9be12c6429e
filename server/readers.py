"""A few threads for the short, blocking reads of a hot path (the held leaderboard's one
indexed SELECT), so the event loop never waits on the database: a call costs about a third
of the CPU of anyio's threadpool hop (~50 µs against ~140 µs under load on 2 cores),
which is most of what such a request costs once routing is skipped. Daemon threads: a
server shutting down abandons a read nobody waits for."""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

# Threads (each may hold one pooled database connection: see server.db.get_engine).
THREADS = 4

_jobs: queue.SimpleQueue[tuple[asyncio.AbstractEventLoop, asyncio.Future[Any], Callable[[], Any]]]
_jobs = queue.SimpleQueue()
_started: list[threading.Thread] = []
_lock = threading.Lock()


async def run(fn: Callable[[], T]) -> T:
    """`fn()` in one of the reader threads."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()
    if len(_started) < THREADS:
        _start()
    _jobs.put((loop, future, fn))
    return await future


def _start() -> None:
    with _lock:
        while len(_started) < THREADS:
            thread = threading.Thread(target=_work, name="hot-reader", daemon=True)
            thread.start()
            _started.append(thread)


def _work() -> None:
    while True:
        loop, future, fn = _jobs.get()
        try:
            result = fn()
        except BaseException as exc:  # handed to the awaiting request, which raises it
            _settle(loop, future, None, exc)
        else:
            _settle(loop, future, result, None)


def _settle(
    loop: asyncio.AbstractEventLoop,
    future: asyncio.Future[Any],
    result: Any,
    exc: BaseException | None,
) -> None:
    def settle() -> None:
        if future.cancelled():  # the request went away meanwhile
            return
        if exc is not None:
            future.set_exception(exc)
        else:
            future.set_result(result)

    # RuntimeError: that loop is closed, so nobody waits for this result any more.
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(settle)
