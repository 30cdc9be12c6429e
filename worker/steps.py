"""What every step shares: the context a step runs in, its outcome, the two exceptions that
drive transitions, the backend (engine) in use, job directories and GPU claims.

- `StepFailed`: the participant's side (bad image, timeout, invalid output); the job fails
  with a message safe to show.
- `InfrastructureError`: the platform's side (engine, disk, worker); the job is retried
  and, if retries run out, fails without charging the team.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from server.challenges.schemas import Limits, PhaseSpec
from server.config import Settings
from server.jobs.states import JobKind
from worker.executor.engine import Backend, Engine, EngineError

log = logging.getLogger(__name__)


class StepFailed(Exception):
    """`message` is shown to the participant; `operator_detail` to organizers only."""

    def __init__(
        self,
        code: str,
        message: str,
        result: dict[str, Any] | None = None,
        *,
        operator_detail: str | None = None,
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.code, self.message, self.result = code, message, result or {}
        self.operator_detail = operator_detail


class InfrastructureError(Exception):
    pass


@dataclass
class CaseRef:
    id: int
    name: str
    public_name: str
    files: dict[str, dict[str, Any]]


@dataclass
class JobContext:
    job_id: int
    attempt: int
    kind: JobKind
    submission_id: int
    phase_id: int
    phase: PhaseSpec
    image_id: str | None
    archive_digest: str | None
    # image_id in the registry by digest (worker/registry.py); None without one.
    image_ref: str | None = None
    repository_url: str | None = None
    commit_sha: str | None = None
    cases: list[CaseRef] = field(default_factory=list)
    # Results of the submission's earlier jobs, by kind (the clone's source, the build).
    earlier: dict[str, dict[str, Any]] = field(default_factory=dict)
    labels_digest: str | None = None
    # The phase's metric config version, read with `phase` at claim time.
    metrics_version: int = 0
    # An evaluation's test set digest (claim time, then what it read): a result computed on
    # a test set since edited is stored under the old digest and caught up.
    ground_truth: str | None = None
    # T2: the submission's model tarball, unpacked at /opt/ml/model for each run.
    model_digest: str | None = None
    # The GPU device ids this attempt leased before its deadline started (worker/node.py).
    gpu_devices: list[str] = field(default_factory=list)


@dataclass
class Outcome:
    result: dict[str, Any]
    log: str = ""


def worker_id(settings: Settings) -> str:
    return settings.worker_id or f"{socket.gethostname()}:{os.getpid()}"


def node_name(settings: Settings) -> str:
    """This machine's name among the worker nodes (`heldout worker --node-name`)."""
    return settings.node_name or socket.gethostname()


def instance_prefix(settings: Settings) -> str:
    """This installation's mark (from its database) in every job key on the engine."""
    return hashlib.sha256(settings.sqlalchemy_url.encode()).hexdigest()[:8] + "-"


def container_key(settings: Settings, job_id: int) -> str:
    """A job's key on the engine: container names and labels carry it. It includes the
    installation, so two heldouts sharing one engine never remove each other's containers."""
    return f"{instance_prefix(settings)}{job_id}"


def smoke_train_limits(settings: Settings, spec: PhaseSpec) -> Limits:
    """The training limits, with the wall time capped at `smoke_train_s`."""
    limits = spec.training_limits or spec.limits
    wall = min(limits.wall_time_s, settings.smoke_train_s)
    return limits.model_copy(update={"wall_time_s": wall})


# How long a step waits for an unreachable engine (restarting, say) before it gives up on
# this attempt: without the wait, the cases claimed while dockerd restarts would spend all
# their attempts in a second and fail the submission.
ENGINE_WAIT_S = 60.0


# The backend every step uses; None: the Docker backend. Tests put the fake here.
_override: Backend[Any] | None = None


@contextmanager
def using_backend(backend: Backend[Any]) -> Iterator[Backend[Any]]:
    """Run the steps on `backend` (the fake, in unit tests) instead of the Docker engine."""
    global _override
    before, _override = _override, backend
    try:
        yield backend
    finally:
        _override = before


def engine(wait_s: float = ENGINE_WAIT_S, timeout: int = 300) -> Engine:
    """The engine for image operations (load, build, inspect, remove)."""
    if _override is not None:
        return _override
    from worker.executor.docker_engine import DockerEngine

    deadline = time.monotonic() + wait_s
    while True:
        try:
            return DockerEngine.from_env(timeout=timeout)
        except EngineError as exc:
            if time.monotonic() >= deadline:
                raise InfrastructureError(f"Docker engine unavailable: {exc}") from exc
            log.warning("Docker engine unavailable (%s); waiting for it", exc)
            time.sleep(1)


def executor(settings: Settings, wait_s: float = ENGINE_WAIT_S) -> Backend[Any]:
    """The backend that runs containers (and, being an `Engine`, handles images too)."""
    if _override is not None:
        return _override
    from worker.executor.base import LABEL_NODE
    from worker.executor.docker import DockerExecutor
    from worker.executor.docker_engine import DockerEngine

    work = (settings.data_dir / "work").resolve()
    work.mkdir(parents=True, exist_ok=True)
    client = engine(wait_s)
    assert isinstance(client, DockerEngine)
    return DockerExecutor(
        client.client,
        work,
        allow_unsized_fallback=settings.allow_unsized_output,
        image_pool=settings.output_pool,
        labels={LABEL_NODE: node_name(settings)},
        fake_gpus=settings.fake_gpus,
    )


def job_dir(settings: Settings, ctx: JobContext) -> Path:
    path = (settings.data_dir / "jobs" / f"{ctx.job_id}-a{ctx.attempt}").resolve()
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


@contextmanager
def gpus_for(settings: Settings, ctx: JobContext, count: int) -> Iterator[list[str]]:
    """The GPU ids this job leased before it was claimed; a node short of GPUs is the
    platform's problem."""
    if count and len(ctx.gpu_devices) != count:
        have = len(settings.gpu_device_ids)
        raise InfrastructureError(f"this worker has {have} GPU(s); the phase needs {count}")
    yield list(ctx.gpu_devices) if count else []


@contextmanager
def classified_execution() -> Iterator[None]:
    """A container that could not run at all: the platform's fault (retry) or the image's."""
    from worker.executor import ExecutionError

    try:
        yield
    except ExecutionError as exc:
        if exc.failure.platform_caused:
            raise InfrastructureError(exc.failure.message) from exc
        raise StepFailed(exc.failure.reason, exc.failure.message) from exc


def run_logs(result: Any) -> str:
    return f"--- stdout ---\n{result.stdout_tail}\n--- stderr ---\n{result.stderr_tail}\n"
