"""What a worker checks before it takes a job: that it can run containers the way the
sandbox promises. A worker that cannot make a size-capped /output, or whose engine lacks
the configured runtime, refuses to start with a message for the operator, rather than take
jobs and run them unsized (or fail every one of them).
"""

from __future__ import annotations

import logging
import uuid
from pathlib import Path

from server.config import Settings
from worker.executor.engine import Engine, EngineError
from worker.executor.sized_dir import SizedDir, UnsizedError

log = logging.getLogger(__name__)


class PreflightError(Exception):
    """The worker must not start; the message says why and what the operator can do."""


def work_root(settings: Settings) -> Path:
    """Where the executor makes its per-run sized directories (steps.executor's)."""
    return (settings.data_dir / "work").resolve()


def check_sized_output(root: Path) -> None:
    """Make and remove one small size-capped directory under root; raises UnsizedError."""
    root.mkdir(parents=True, exist_ok=True)
    with SizedDir(root / f"preflight-{uuid.uuid4().hex[:8]}", 1, allow_fallback=False) as d:
        (d.path / "probe").write_bytes(b"x")


def check_worker(settings: Settings, engine: Engine | None = None) -> None:
    """Raises PreflightError naming each problem; `engine`: the backend, if at hand."""
    root = work_root(settings)
    try:
        check_sized_output(root)
    except UnsizedError as e:
        if not settings.allow_unsized_output:
            raise PreflightError(
                f"the worker cannot make a size-capped /output ({e}). Run it as root, or "
                "with CAP_SYS_ADMIN and access to /dev/loop-control and /dev/loop*, with "
                "mkfs.ext4 and mount on PATH. For development only, "
                "HELDOUT_ALLOW_UNSIZED_OUTPUT=true runs containers with a plain /output "
                "whose size is checked only after each run."
            ) from e
        log.warning(
            "HELDOUT_ALLOW_UNSIZED_OUTPUT is set and %s: containers run with a plain /output, "
            "NOT size-capped while they run (development only)",
            e,
        )
    if settings.container_runtime != "runc":
        check_runtime(settings.container_runtime, engine)


def check_runtime(runtime: str, engine: Engine | None) -> None:
    if engine is None:
        from worker.executor.docker_engine import DockerEngine

        try:
            engine = DockerEngine.from_env(timeout=30)
        except EngineError as e:
            log.warning("preflight: no Docker engine to check runtime %r on (%s)", runtime, e)
            return
    try:
        have = engine.runtimes()
    except Exception as e:  # the engine is down: the jobs themselves will say so
        log.warning("preflight: could not ask the engine for its runtimes (%s)", e)
        return
    if runtime not in have:
        raise PreflightError(
            f"HELDOUT_CONTAINER_RUNTIME={runtime} but the Docker engine has no runtime of "
            f"that name (it has {sorted(have)}). Register it in /etc/docker/daemon.json "
            '(for gVisor: "runtimes": {"runsc": {"path": "/usr/bin/runsc", '
            '"runtimeArgs": ["--network=none"]}}) and restart dockerd, or unset the setting.'
        )
