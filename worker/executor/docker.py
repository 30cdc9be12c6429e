"""Docker backend of the executor: strict sandbox defaults for every participant container.

Every container runs with no network, a read-only root (unless the phase allows a capped
writable layer), all capabilities dropped, no-new-privileges, the image's own non-root
user, pids/memory (swap off)/CPU/shm limits, an init process, no core dumps and no
environment from the worker. /output (and /scratch) are SizedDirs: loop-mounted ext4 of
fixed size that survive the container for collection; a worker that cannot make them
fails the run as a platform fault rather than run it unsized (unless the development
fallback is explicitly allowed). The container runtime is the engine's default or the one
the spec names (`runsc`: gVisor, CPU runs only). The wall-clock limit is enforced here,
not by the engine.

The worker must talk to an engine on the same host: bind-mount sources are host paths.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import shutil
import signal
import tarfile
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import docker
import docker.errors
import requests
from docker.models.containers import Container
from docker.types import DeviceRequest, LogConfig, Mount, Ulimit

from heldout.archive import refused_user_reason  # shared with the client's checks
from worker.executor.base import (
    LABEL_ATTEMPT,
    LABEL_GPUS,
    LABEL_INDEX,
    LABEL_JOB,
    LABEL_MANAGED,
    LOG_TAIL_BYTES,
    ExecutionError,
    Failure,
    RunResult,
    RunSpec,
)
from worker.executor.docker_engine import DockerEngine
from worker.executor.engine import Backend
from worker.executor.engine import resolve_user as resolve_user
from worker.executor.sized_dir import ImagePool, SizedDir, UnsizedError, unmount_all_under

log = logging.getLogger(__name__)

# Engine messages at container start that mean the image, not the platform, is at fault.
_IMAGE_FAULTS = (
    "executable file not found",
    "exec format error",
    "unable to find user",
    "no matching entries in passwd",
)
# Host threads gVisor itself needs on top of the phase's pids limit (see container_options).
RUNSC_PIDS_HEADROOM = 256
_LABELS_FILE = "labels.json"
_MAX_OUTPUT_DEPTH = 32


# ---------------------------------------------------------------------------------------
# Users: refuse root, and find the numeric uid/gid that must own /output.


def read_container_file(container: Container, path: str, max_bytes: int = 1 << 20) -> str | None:
    """A small regular file from a (created, not necessarily started) container."""
    try:
        chunks, st = container.get_archive(path)
    except docker.errors.NotFound:
        return None
    if st.get("size", 0) > max_bytes:
        return None
    with tarfile.open(fileobj=io.BytesIO(b"".join(chunks))) as tar:
        member = tar.next()
        f = tar.extractfile(member) if member is not None and member.isreg() else None
        return f.read().decode("utf-8", "replace") if f is not None else None


# ---------------------------------------------------------------------------------------
# Container options: a pure function, so the flags are unit-testable without an engine.


def container_options(
    spec: RunSpec, image_id: str, mounts: list[Mount], *, rootfs_quota: bool
) -> dict[str, Any]:
    """Keyword arguments for `client.containers.create` (entrypoint and cmd never set)."""
    lim = spec.limits
    opts: dict[str, Any] = {
        "image": image_id,
        "name": spec.name,
        "labels": spec.all_labels,
        "network_mode": "none",
        "read_only": not spec.writable_rootfs,
        "mounts": mounts,
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges"],
        "pids_limit": lim.pids,
        "mem_limit": f"{lim.memory_mb}m",
        "memswap_limit": f"{lim.memory_mb}m",  # equal to the memory limit: no swap
        "nano_cpus": int(lim.cpus * 1e9),
        "shm_size": f"{lim.shm_mb}m",
        "ipc_mode": "private",
        "init": True,
        # A crash must not write a core file or start the host's core_pattern handler.
        "ulimits": [Ulimit(name="core", soft=0, hard=0)],
        # Bounds the engine's log file on the host; the executor reads the output itself.
        "log_config": LogConfig(type="json-file", config={"max-size": "16m", "max-file": "1"}),
    }
    if spec.runtime:
        opts["runtime"] = spec.runtime
    if spec.runtime == "runsc":
        # gVisor's own threads (sentry, gofer) count against the host's pids cgroup, while
        # the algorithm's processes are tasks inside the sentry: a cgroup limit this low
        # would hang the sandbox at start. The headroom keeps it bounded.
        opts["pids_limit"] = lim.pids + RUNSC_PIDS_HEADROOM
    if spec.user:
        opts["user"] = spec.user
    if spec.cap_add:
        opts["cap_add"] = list(spec.cap_add)
    if spec.writable_rootfs:
        if rootfs_quota:
            opts["storage_opt"] = {"size": f"{lim.tmp_mb}m"}
    else:
        # exec stays allowed: JIT compilers (numba, triton) load code they write to /tmp.
        opts["tmpfs"] = {"/tmp": f"rw,exec,nosuid,nodev,size={lim.tmp_mb}m,mode=1777"}
    if spec.gpu_device_ids:
        opts["device_requests"] = [
            DeviceRequest(device_ids=list(spec.gpu_device_ids), capabilities=[["gpu"]])
        ]
    else:
        # The only variable the worker sets: where the nvidia runtime is the default, an
        # image's own NVIDIA_VISIBLE_DEVICES=all would otherwise expose every GPU.
        opts["environment"] = {"NVIDIA_VISIBLE_DEVICES": "void"}
    return opts


# ---------------------------------------------------------------------------------------
# The backend.


class _Streams(threading.Thread):
    """Reads a container's stdout and stderr, keeping each stream's total size and tail.

    Attached before start rather than following the log: Docker 20.10's log follow can
    drop the last chunk of a container that exits quickly; attach delivers every byte.
    """

    def __init__(self, api: docker.APIClient, container_id: str, cap: int) -> None:
        super().__init__(daemon=True, name=f"streams-{container_id[:12]}")
        self.cap = cap
        self.tails = (bytearray(), bytearray())
        self.totals = [0, 0]
        self._frames = api.attach(
            container_id, stdout=True, stderr=True, stream=True, logs=False, demux=True
        )

    def run(self) -> None:
        try:
            for frame in self._frames:
                for i, chunk in enumerate(frame):
                    if chunk:
                        self._keep(i, chunk)
        except (docker.errors.APIError, requests.RequestException, OSError):
            # Logs are diagnostics; losing them must not change the run's outcome.
            log.warning("output stream of %s ended early", self.name, exc_info=True)

    def _keep(self, i: int, chunk: bytes) -> None:
        self.totals[i] += len(chunk)
        buf = self.tails[i]
        buf += chunk
        if len(buf) > 2 * self.cap:
            del buf[: len(buf) - self.cap]

    def tail(self, i: int) -> str:
        return bytes(self.tails[i][-self.cap :]).decode("utf-8", "replace")


@dataclass
class DockerHandle:
    spec: RunSpec
    workdir: Path
    container: Container | None = None
    output: SizedDir | None = None
    scratch: SizedDir | None = None
    rootfs_watch: bool = False  # poll the writable layer's size (no storage quota here)

    @property
    def sized_dirs(self) -> list[tuple[str, SizedDir]]:
        return [(w, d) for w, d in (("/output", self.output), ("/scratch", self.scratch)) if d]


@contextlib.contextmanager
def _engine_errors(what: str) -> Iterator[None]:
    """Engine and transport errors become platform-caused failures (retry, no charge)."""
    try:
        yield
    except (docker.errors.APIError, requests.RequestException) as e:
        log.error("docker %s failed: %s", what, e)
        raise ExecutionError(Failure.engine_error()) from e


class DockerExecutor(DockerEngine, Backend[DockerHandle]):
    """The Docker backend: images (`DockerEngine`) and the sandboxed participant runs."""

    def __init__(
        self,
        client: docker.DockerClient,
        work_root: Path,
        *,
        log_tail_bytes: int = LOG_TAIL_BYTES,
        rootfs_poll_s: float = 2.0,
        allow_unsized_fallback: bool = False,
        image_pool: int = 0,
        labels: Mapping[str, str] | None = None,
        fake_gpus: bool = False,
    ) -> None:
        """`work_root`: host directory for per-run sized dirs (root-owned, not shared).
        `allow_unsized_fallback`: development only; where no loop mount can be made,
        /output and /scratch become plain directories checked for size after the run.
        `image_pool`: how many size-capped filesystems of each size to keep formatted and
        mounted ahead, reused (wiped) between runs: a run's /output then costs a bind
        mount, not a mkfs and a loop mount (0: none). `labels`: added to every container
        (the node owning it, LABEL_NODE). `fake_gpus`: tests and development only; a
        run's GPU ids are recorded (LABEL_GPUS) instead of requested from the engine."""
        self.client = client
        self.labels = dict(labels or {})
        self.fake_gpus = fake_gpus
        self.work_root = work_root
        self.log_tail_bytes = log_tail_bytes
        self.rootfs_poll_s = rootfs_poll_s
        self.allow_unsized_fallback = allow_unsized_fallback
        # Beside the work root (same filesystem: images move by rename), not in it: the
        # work root holds only runs, and is empty when none is in flight.
        pool_root = work_root.parent / f".{work_root.name}-image-pool"
        self.image_pool = ImagePool.shared(pool_root, image_pool) if image_pool else None
        self._rootfs_quota: bool | None = None  # learnt on the first writable-rootfs run
        self._users: dict[tuple[str, str], tuple[int, int] | None] = {}

    # -- provision ------------------------------------------------------------------------

    def provision(self, spec: RunSpec) -> DockerHandle:
        spec = replace(spec, labels={**self.labels, **spec.labels})
        if self.fake_gpus and spec.gpu_device_ids:
            gpus = {LABEL_GPUS: ",".join(spec.gpu_device_ids)}
            spec = replace(spec, labels={**spec.labels, **gpus}, gpu_device_ids=(),
                           limits=spec.limits.model_copy(update={"gpus": 0}))  # fmt: skip
        # A redelivered task: the previous delivery's container and mounts go first.
        self.cleanup_stale(
            {LABEL_JOB: spec.job_id, LABEL_ATTEMPT: str(spec.attempt), LABEL_INDEX: str(spec.index)}
        )
        # Unique per delivery, so a late deprovision of an earlier delivery cannot touch it.
        handle = DockerHandle(spec, self.work_root / f"{spec.name}.{uuid.uuid4().hex[:8]}")
        try:
            self._provision(handle)
        except BaseException:
            try:
                self.deprovision(handle)
            except Exception:
                # The provisioning error is the one to report; this one only gets logged.
                log.exception("cleanup after a failed provision of %s failed", spec.name)
            raise
        return handle

    def _provision(self, handle: DockerHandle) -> None:
        spec, lim = handle.spec, handle.spec.limits
        with _engine_errors("image inspect"):
            try:
                image = self.client.images.get(spec.image)
            except docker.errors.ImageNotFound as e:
                log.error("image %s is not on this worker", spec.image)
                raise ExecutionError(
                    Failure.engine_error("The algorithm image is missing on the worker.")
                ) from e
        user = spec.user or (image.attrs.get("Config") or {}).get("User") or ""
        if reason := refused_user_reason(user):
            raise ExecutionError(Failure.image_error(reason))

        handle.workdir.mkdir(parents=True)
        (handle.workdir / _LABELS_FILE).write_text(json.dumps(spec.all_labels))
        handle.output = self._sized(handle.workdir / "output", lim.output_mb)
        mounts = [
            Mount("/input", str(spec.inputs.resolve()), type="bind", read_only=True),
            Mount("/output", str(handle.output.path), type="bind"),
        ]
        if spec.scratch:
            handle.scratch = self._sized(handle.workdir / "scratch", lim.scratch_mb)
            mounts.append(Mount("/scratch", str(handle.scratch.path), type="bind"))
        for host, target in spec.read_only_mounts.items():
            mounts.append(Mount(target, str(Path(host).resolve()), type="bind", read_only=True))

        handle.container = self._create(handle, image.id, mounts)
        uid, gid = self._uid_gid(handle.container, image.id, user)
        for _, d in handle.sized_dirs:
            d.chown(uid, gid)

    def _sized(self, path: Path, size_mb: int) -> SizedDir:
        d = SizedDir(
            path, size_mb, allow_fallback=self.allow_unsized_fallback, pool=self.image_pool
        )
        try:
            d.create()
        except UnsizedError as e:
            # The worker's fault, not the team's: never run with an uncapped directory.
            log.error("%s; not running the container unsized", e)
            raise ExecutionError(
                Failure.engine_error(
                    "The worker could not prepare a size-limited /output; the run will be retried."
                )
            ) from e
        return d

    def _create(self, handle: DockerHandle, image_id: str, mounts: list[Mount]) -> Container:
        spec = handle.spec
        quota = self._rootfs_quota is not False
        opts = container_options(spec, image_id, mounts, rootfs_quota=quota)
        with _engine_errors("create"):
            try:
                container = self.client.containers.create(**opts)
            except docker.errors.APIError as e:
                if "storage_opt" not in opts or "storage-opt" not in str(e):
                    raise
                log.warning(
                    "this engine cannot cap a container's writable layer (%s); polling "
                    "its size every %g s instead",
                    e.explanation,
                    self.rootfs_poll_s,
                )
                self._rootfs_quota = quota = False
                opts = container_options(spec, image_id, mounts, rootfs_quota=False)
                container = self.client.containers.create(**opts)
        if spec.writable_rootfs:
            self._rootfs_quota = quota
            handle.rootfs_watch = not quota
        return container

    def _uid_gid(self, container: Container, image_id: str, user: str) -> tuple[int, int]:
        key = (image_id, user)
        if key not in self._users:
            with _engine_errors("read /etc/passwd"):
                passwd = read_container_file(container, "/etc/passwd")
                group = read_container_file(container, "/etc/group") if ":" in user else None
            self._users[key] = resolve_user(user, passwd, group)
        ids = self._users[key]
        if ids is None:
            raise ExecutionError(
                Failure.image_error(
                    f"The image's USER {user!r} is not defined in its /etc/passwd or /etc/group."
                )
            )
        if ids[0] == 0:
            raise ExecutionError(
                Failure.image_error(f"The image's USER {user!r} has uid 0 (root).")
            )
        return ids

    # -- execute --------------------------------------------------------------------------

    def execute(self, handle: DockerHandle) -> RunResult:
        assert handle.container is not None, "execute() needs a provisioned handle"
        container, lim = handle.container, handle.spec.limits
        with _engine_errors("attach"):
            streams = _Streams(self.client.api, container.id, self.log_tail_bytes)
        try:
            container.start()
        except docker.errors.APIError as e:
            if any(s in str(e).lower() for s in _IMAGE_FAULTS):
                raise ExecutionError(
                    Failure.image_error("The container could not start: " + _image_fault(e))
                ) from e
            log.error("docker start failed: %s", e)
            raise ExecutionError(Failure.engine_error()) from e
        except requests.RequestException as e:
            raise ExecutionError(Failure.engine_error()) from e

        streams.start()

        deadline = time.monotonic() + lim.wall_time_s
        timed_out, disk_full = False, None
        with _engine_errors("wait"):
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    timed_out = self._kill(container)
                    break
                step = min(remaining, self.rootfs_poll_s) if handle.rootfs_watch else remaining
                if self._wait(container, step):
                    break
                if handle.rootfs_watch and self._rootfs_bytes(container) > lim.tmp_mb << 20:
                    if self._kill(container):
                        disk_full = "rootfs"
                    break
            if not self._wait(container, 60):
                raise ExecutionError(Failure.engine_error("The container did not stop."))
            container.reload()
        streams.join(timeout=10)

        state = container.attrs["State"]
        exit_code = int(state.get("ExitCode", -1))
        if disk_full is None:
            # A capped directory full at exit fails the run whatever the exit code: an
            # algorithm that swallows ENOSPC and exits 0 still lost output to the cap.
            disk_full = next((where for where, d in handle.sized_dirs if d.is_full()), None)
        return RunResult(
            exit_code=exit_code,
            timed_out=timed_out,
            oom_killed=bool(state.get("OOMKilled")),
            duration_s=_duration_s(state.get("StartedAt"), state.get("FinishedAt")),
            limits=lim,
            stdout_tail=streams.tail(0),
            stderr_tail=streams.tail(1),
            stdout_bytes=streams.totals[0],
            stderr_bytes=streams.totals[1],
            disk_full=disk_full,
        )

    @staticmethod
    def _wait(container: Container, timeout_s: float) -> bool:
        """True when the container has exited, False when timeout_s passed first."""
        try:
            container.wait(timeout=max(timeout_s, 0.01))
            return True
        except requests.exceptions.ReadTimeout:
            return False
        except requests.exceptions.ConnectionError as e:
            # urllib3 over the unix socket reports a read timeout as a connection error.
            if "timed out" in str(e).lower():
                return False
            raise

    @staticmethod
    def _kill(container: Container) -> bool:
        """Kill a running container; False when it had already exited by itself."""
        try:
            container.kill()
            return True
        except docker.errors.APIError as e:
            if e.status_code == 409:  # "is not running"
                return False
            raise

    def _rootfs_bytes(self, container: Container) -> int:
        rows = self.client.api.containers(all=True, size=True, filters={"id": container.id})
        return int(rows[0].get("SizeRw") or 0) if rows else 0

    # -- collect --------------------------------------------------------------------------

    def collect(self, handle: DockerHandle, result: RunResult, dest: Path) -> RunResult:
        assert handle.output is not None, "collect() needs a provisioned handle"
        if result.disk_full == "/output" and not handle.output.mounted:
            # Fallback mode: the cap was only checked afterwards; do not copy the excess.
            log.warning("%s: /output over its cap; not collected", handle.spec.name)
            dest.mkdir(parents=True, exist_ok=True)
            return replace(result, output_dir=dest)
        skipped = copy_regular_tree(handle.output.path, dest)
        if skipped:
            log.info("%s: skipped non-regular outputs %s", handle.spec.name, skipped[:20])
        return replace(result, output_dir=dest)

    # -- deprovision ----------------------------------------------------------------------

    def deprovision(self, handle: DockerHandle) -> None:
        errors: list[BaseException] = []
        if handle.container is not None:
            try:
                handle.container.remove(force=True, v=True)
            except docker.errors.NotFound:
                pass
            except (docker.errors.APIError, requests.RequestException) as e:
                errors.append(e)
        for _, d in handle.sized_dirs:
            try:
                d.remove()
            except Exception as e:
                errors.append(e)
        shutil.rmtree(handle.workdir, ignore_errors=True)
        if errors:
            log.error("deprovision of %s incomplete: %s", handle.spec.name, errors)
            raise ExecutionError(Failure.engine_error()) from errors[0]

    def running(self, labels: Mapping[str, str]) -> list[dict[str, str]]:
        want = {**labels, LABEL_MANAGED: "1"}
        with _engine_errors("list"):
            filters = {"label": [f"{k}={v}" for k, v in want.items()]}
            return [dict(c.labels) for c in self.client.containers.list(filters=filters)]

    def held(self, labels: Mapping[str, str]) -> list[dict[str, str]]:
        want = {**labels, LABEL_MANAGED: "1"}
        with _engine_errors("list"):
            filters = {"label": [f"{k}={v}" for k, v in want.items()]}
            found = [dict(c.labels) for c in self.client.containers.list(all=True, filters=filters)]
        for workdir in self.work_root.iterdir() if self.work_root.is_dir() else ():
            try:
                have = json.loads((workdir / _LABELS_FILE).read_text())
            except (OSError, ValueError):
                continue
            if isinstance(have, dict) and all(have.get(k) == v for k, v in want.items()):
                found.append({str(k): str(v) for k, v in have.items()})
        return found

    def cleanup_stale(self, labels: Mapping[str, str]) -> list[str]:
        want = {**labels, LABEL_MANAGED: "1"}
        removed: set[str] = set()
        with _engine_errors("cleanup"):
            filters = {"label": [f"{k}={v}" for k, v in want.items()]}
            for c in self.client.containers.list(all=True, filters=filters):
                log.warning("removing stale container %s", c.name)
                c.remove(force=True, v=True)
                kill_orphans(c.id)
                removed.add(c.name)
        for workdir in self.work_root.iterdir() if self.work_root.is_dir() else ():
            try:
                have = json.loads((workdir / _LABELS_FILE).read_text())
            except (OSError, ValueError):
                continue
            if all(have.get(k) == v for k, v in want.items()):
                log.warning("removing stale work dir %s", workdir)
                unmount_all_under(workdir)
                shutil.rmtree(workdir, ignore_errors=True)
                removed.add(workdir.name.rpartition(".")[0])
        return sorted(removed)


def kill_orphans(container_id: str) -> list[int]:
    """SIGKILL what is left in a removed container's cgroup. A container the engine died
    while starting leaves its `runc init` behind, unknown to the restarted engine and
    holding the container's mounts, so /output's loop device never detaches."""
    killed: list[int] = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cgroups = (proc / "cgroup").read_text()
        except OSError:
            continue
        if container_id in cgroups:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(int(proc.name), signal.SIGKILL)
                killed.append(int(proc.name))
    if killed:
        log.warning("killed processes %s left by removed container %s", killed, container_id[:12])
    return killed


def copy_regular_tree(src: Path, dest: Path) -> list[str]:
    """Copy directories and regular files only; return the relative paths skipped.

    Symlinks are never followed nor copied: a link written by the container could point at
    any host file once the host reads the collected directory.
    """
    skipped: list[str] = []

    def walk(s: Path, d: Path, rel: str, depth: int) -> None:
        with os.scandir(s) as entries:
            for e in entries:
                r = f"{rel}{e.name}"
                if e.is_dir(follow_symlinks=False) and depth < _MAX_OUTPUT_DEPTH:
                    (d / e.name).mkdir(exist_ok=True)
                    walk(Path(e.path), d / e.name, r + "/", depth + 1)
                elif e.is_file(follow_symlinks=False):
                    fd = os.open(e.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
                    with os.fdopen(fd, "rb") as fi, open(d / e.name, "wb") as fo:
                        shutil.copyfileobj(fi, fo, 1 << 20)
                else:
                    skipped.append(r)

    dest.mkdir(parents=True, exist_ok=True)
    walk(src, dest, "", 0)
    return skipped


def _duration_s(started: str | None, finished: str | None) -> float:
    if not started or not finished or started.startswith("0001"):
        return 0.0
    return max(0.0, (_parse_ts(finished) - _parse_ts(started)).total_seconds())


def _parse_ts(ts: str) -> datetime:
    # Docker writes RFC 3339 with nanoseconds; fromisoformat takes at most microseconds.
    base, _, frac = ts.rstrip("Z").partition(".")
    return datetime.fromisoformat(f"{base}.{(frac or '0')[:6]:0<6}+00:00")


def _image_fault(e: docker.errors.APIError) -> str:
    # The engine's explanation names the image's command or user, which the participant
    # chose; keep only the matching phrase, not the whole runtime error.
    text = str(e.explanation or e).lower()
    return next((s for s in _IMAGE_FAULTS if s in text), "an image error") + "."
