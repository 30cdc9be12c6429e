"""A real Celery worker process on real Redis for pipeline tests."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI

from server.config import Settings

ROOT = Path(__file__).resolve().parents[2]


def worker_env(settings: Settings, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        HELDOUT_DATA_DIR=str(settings.data_dir.resolve()),
        HELDOUT_REDIS_URL=settings.broker_url,
        HELDOUT_HEARTBEAT_S=str(settings.heartbeat_s),
        HELDOUT_EVALUATION_IMAGE=settings.evaluation_image,
        PYTHONPATH=str(ROOT),
    )
    if settings.database_url:
        env["HELDOUT_DATABASE_URL"] = settings.database_url
    # The worker checks repository addresses again before cloning, by its own settings.
    env["HELDOUT_ALLOW_LOOPBACK_REPOS"] = str(settings.allow_loopback_repos).lower()
    env["HELDOUT_ALLOWED_REPO_NETWORKS"] = json.dumps(
        [str(n) for n in settings.allowed_repo_networks]
    )
    env.update(extra)
    return env


@contextmanager
def celery_worker(
    settings: Settings, *, concurrency: int = 2, log: Path | None = None, **extra: str
) -> Iterator[subprocess.Popen[bytes]]:
    proc = start_worker(settings, concurrency=concurrency, log=log, **extra)
    try:
        yield proc
    finally:
        stop_worker(proc)


def start_worker(
    settings: Settings,
    *,
    concurrency: int = 2,
    log: Path | None = None,
    queues: str = "build,cpu,gpu,gpu-2,evaluation",
    **extra: str,
) -> subprocess.Popen[bytes]:
    """A worker consuming `queues` (comma-separated; by default every queue)."""
    out = open(log or settings.data_dir / "worker.log", "ab")  # noqa: SIM115 - lives with proc
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "worker.celery_app",
            "worker",
            "-Q",
            queues,
            "-c",
            str(concurrency),
            "-P",
            "threads",
            "-l",
            "INFO",
            "--without-gossip",
            "--without-mingle",
            "-n",
            f"w{time.time_ns()}@test",
        ],
        cwd=ROOT,
        env=worker_env(settings, **extra),
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def stop_worker(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_healthy(base_url: str, timeout: float, what: str) -> None:
    """Until a heldout server at base_url answers its health check."""

    def up() -> bool:
        try:
            return httpx.get(f"{base_url}/api/v1/health").status_code == 200
        except httpx.TransportError:
            return False

    wait_for(up, timeout, what)


FINAL_STATES = ("succeeded", "failed", "cancelled")


def wait_final(api: Any, token: str, submission_id: int, timeout: float = 240) -> dict[str, Any]:
    """Poll a submission through the API until it ends; its final view."""

    def done() -> dict[str, Any] | None:
        sub = api.get(
            f"/api/v1/submissions/{submission_id}", headers={"Authorization": f"Bearer {token}"}
        ).json()
        return sub if sub["status"] in FINAL_STATES else None

    return dict(wait_for(done, timeout, f"submission {submission_id} to finish"))


@contextmanager
def live_server(app: FastAPI) -> Iterator[str]:
    """A real uvicorn serving `app` on 127.0.0.1 (for workers and CLIs in other processes);
    yields its base URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url, 30, "the test server")
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=10)
