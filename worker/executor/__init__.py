"""Container executors: the interface in `base`, the Docker backend in `docker`."""

from worker.executor.base import (
    ExecutionError,
    Executor,
    Failure,
    FailureKind,
    RunResult,
    RunSpec,
    container_name,
)

__all__ = [
    "ExecutionError",
    "Executor",
    "Failure",
    "FailureKind",
    "RunResult",
    "RunSpec",
    "container_name",
]
