"""This worker process's GPUs, handed out by pinned device id: a job holds its devices for
its whole run, so two concurrent jobs of one process never share a GPU. Claims live in this
process's memory: worker processes on one node share nothing, so each must be given its own
devices (HELDOUT_GPU_DEVICE_IDS)."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

_lock = threading.Condition()
_busy: set[str] = set()


@contextmanager
def claim(devices: Sequence[str], count: int, timeout_s: float = 3600) -> Iterator[list[str]]:
    """Hold `count` of this worker's `devices` (none when count is 0). Raises RuntimeError
    when the node has too few GPUs or none frees up in time."""
    if count == 0:
        yield []
        return
    if len(devices) < count:
        raise RuntimeError(f"this worker has {len(devices)} GPU(s); the phase needs {count}")
    with _lock:
        ok = _lock.wait_for(
            lambda: len([d for d in devices if d not in _busy]) >= count, timeout=timeout_s
        )
        if not ok:
            raise RuntimeError(f"no {count} GPU(s) free on this worker after {timeout_s:.0f} s")
        mine = [d for d in devices if d not in _busy][:count]
        _busy.update(mine)
    try:
        yield mine
    finally:
        with _lock:
            _busy.difference_update(mine)
            _lock.notify_all()
