"""The hot path's reader thread: results and errors reach the awaiting request; a job
the thread has not started in time is given up (`Late`) and never runs; while the thread
is stuck in one job, a new job is refused at once; a job whose request went away before it
started is not run."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import pytest

from server import readers


@pytest.fixture
def stuck() -> Iterator[threading.Event]:
    """Hold the reader thread in a job until the test ends (set the event to let go)."""
    entered, release = threading.Event(), threading.Event()

    def hold() -> None:
        entered.set()
        release.wait(30)

    holder = threading.Thread(target=lambda: asyncio.run(readers.run(hold, start_within=5)))
    holder.start()
    assert entered.wait(10)
    try:
        yield release
    finally:
        release.set()
        holder.join(30)


def test_a_result_and_an_error_reach_the_caller() -> None:
    async def both() -> tuple[int, BaseException | None]:
        def fail() -> None:
            raise KeyError("nope")

        value = await readers.run(lambda: 6 * 7)
        try:
            await readers.run(fail)
        except KeyError as exc:
            return value, exc
        return value, None

    value, error = asyncio.run(both())
    assert value == 42 and isinstance(error, KeyError)


def test_a_job_not_started_in_time_is_late_and_never_runs(stuck: threading.Event) -> None:
    ran: list[str] = []
    # The thread has been on its job for less than 0.3 s: this one is queued, then late.
    t0 = time.monotonic()
    with pytest.raises(readers.Late):
        asyncio.run(readers.run(lambda: ran.append("late"), start_within=0.3))
    assert 0.3 <= time.monotonic() - t0 < 3
    # Stuck for longer than the deadline now: refused at once, without queueing.
    t0 = time.monotonic()
    with pytest.raises(readers.Late):
        asyncio.run(readers.run(lambda: ran.append("refused"), start_within=0.3))
    assert time.monotonic() - t0 < 0.2
    stuck.set()
    assert asyncio.run(readers.run(lambda: "free again")) == "free again"
    assert ran == []


def test_a_job_whose_request_went_away_is_not_run(stuck: threading.Event) -> None:
    ran: list[str] = []

    async def leave() -> None:
        task = asyncio.create_task(readers.run(lambda: ran.append("gone"), start_within=5))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(leave())
    stuck.set()
    assert asyncio.run(readers.run(lambda: "after")) == "after"
    assert ran == []
