"""GPU claims on one worker: pinned ids, never shared between concurrent jobs."""

from __future__ import annotations

import threading
import time

import pytest

from worker import gpus


def test_no_gpus_requested_gives_none() -> None:
    with gpus.claim([], 0) as got:
        assert got == []


def test_too_few_gpus_is_refused() -> None:
    with pytest.raises(RuntimeError, match="has 1 GPU"), gpus.claim(["0"], 2):
        pass


def test_concurrent_jobs_never_share_a_device() -> None:
    held: list[list[str]] = []
    overlap: list[bool] = []
    lock = threading.Lock()
    active: set[str] = set()

    def job() -> None:
        with gpus.claim(["0", "1", "2"], 2, timeout_s=10) as mine:
            with lock:
                overlap.append(bool(active & set(mine)))
                active.update(mine)
                held.append(mine)
            time.sleep(0.05)
            with lock:
                active.difference_update(mine)

    threads = [threading.Thread(target=job) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(held) == 6 and not any(overlap)
    assert all(len(h) == 2 for h in held)


def test_waits_and_gives_up() -> None:
    with (
        gpus.claim(["0"], 1),
        pytest.raises(RuntimeError, match="free"),
        gpus.claim(["0"], 1, timeout_s=0.2),
    ):
        pass
