"""The executor interface: how the pipeline runs one participant container.

Modelled on grand-challenge's components executors, which outlived three backends:

    handle = executor.provision(spec)        # sized dirs, container created (not started)
    result = executor.execute(handle)        # start, enforce the deadline, classify the exit
    result = executor.collect(handle, result, dest)   # copy /output to a host directory
    executor.deprovision(handle)             # container removed, mounts gone (always)

`Executor.run(spec, dest)` does all four with deprovision guaranteed. Participant outcomes
(timeout, OOM, a non-zero exit, a full disk) are data on `RunResult.failure`; what stops a
run from happening at all raises `ExecutionError`, whose `Failure` says whether the
platform (`engine_error`, retry without charging the team) or the image (`image_error`)
is to blame.
"""

from __future__ import annotations

import logging
import re
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Generic, TypeVar

from server.challenges.schemas import Limits

log = logging.getLogger(__name__)

# Labels on every container heldout starts; cleanup_stale filters on them.
LABEL_MANAGED = "heldout.managed"
LABEL_JOB = "heldout.job"
LABEL_ATTEMPT = "heldout.attempt"
LABEL_INDEX = "heldout.index"
# The node whose worker started the container: its reaper alone removes it as an orphan.
LABEL_NODE = "heldout.node"
# The GPU ids leased for a run whose GPUs are fake (HELDOUT_FAKE_GPUS): recorded, not passed.
LABEL_GPUS = "heldout.gpus"
RESERVED_LABELS = frozenset({LABEL_MANAGED, LABEL_JOB, LABEL_ATTEMPT, LABEL_INDEX})

# Capabilities a phase may add back after cap_drop=ALL (STOIC training uses SYS_NICE).
ALLOWED_EXTRA_CAPS = frozenset({"SYS_NICE"})

# Container runtimes a run may name (the engine must have them registered).
RUNTIMES = frozenset({"runc", "runsc"})

# Paths the executor itself mounts; extra mounts may not shadow them.
PLATFORM_PATHS = frozenset({"/", "/input", "/output", "/tmp", "/scratch", "/dev", "/proc"})

# Docker container names allow [a-zA-Z0-9][a-zA-Z0-9_.-]*; the job id becomes part of one.
_NAME_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

LOG_TAIL_BYTES = 64 * 1024


@dataclass(frozen=True)
class RunSpec:
    """Everything needed to run one container; backend-neutral.

    `name` and the reserved labels derive from (job_id, attempt, index), so a redelivered
    task computes the same name and can find and remove its own container.
    """

    image: str  # image id ("sha256:...") or tag
    job_id: str
    attempt: int
    inputs: Path  # host directory, mounted read-only at /input
    limits: Limits
    index: int = 0  # n-th container of this job attempt (one per case in per-case mode)
    # Further read-only mounts, host path -> absolute container path (e.g. ground truth).
    read_only_mounts: Mapping[Path, str] = field(default_factory=dict)
    # Pinned GPU ids the scheduler assigned; exactly limits.gpus of them, else none.
    gpu_device_ids: Sequence[str] = ()
    # False: read-only root + size-capped tmpfs /tmp. True (T3 training): a writable layer
    # that includes /tmp, capped at limits.tmp_mb in total.
    writable_rootfs: bool = False
    scratch: bool = False  # a size-capped writable /scratch (limits.scratch_mb)
    cap_add: Sequence[str] = ()  # subset of ALLOWED_EXTRA_CAPS
    labels: Mapping[str, str] = field(default_factory=dict)  # extra labels
    user: str | None = None  # None: the image's own USER (the normal case)
    # Container runtime by engine name: None for the engine's default, "runc", or "runsc"
    # (gVisor, a user-space kernel: CPU runs only, it cannot pass GPUs through).
    runtime: str | None = None

    def __post_init__(self) -> None:
        if not _NAME_PART.match(self.job_id):
            raise ValueError(f"job_id {self.job_id!r} must match {_NAME_PART.pattern}")
        if self.attempt < 0 or self.index < 0:
            raise ValueError("attempt and index must be >= 0")
        if self.gpu_device_ids and len(self.gpu_device_ids) != self.limits.gpus:
            raise ValueError(
                f"{len(self.gpu_device_ids)} GPU ids given for limits.gpus={self.limits.gpus}"
            )
        if self.limits.gpus and not self.gpu_device_ids:
            raise ValueError(f"limits.gpus={self.limits.gpus} but no GPU ids were assigned")
        if self.runtime is not None and self.runtime not in RUNTIMES:
            raise ValueError(f"runtime {self.runtime!r} is not one of {sorted(RUNTIMES)}")
        if self.runtime == "runsc" and self.gpu_device_ids:
            raise ValueError(
                "runtime 'runsc' (gVisor) cannot run a container with GPUs; use 'runc'"
            )
        bad_caps = set(self.cap_add) - ALLOWED_EXTRA_CAPS
        if bad_caps:
            raise ValueError(f"capabilities {sorted(bad_caps)} may not be added")
        for target in self.read_only_mounts.values():
            if not target.startswith("/") or target.rstrip("/") in PLATFORM_PATHS | {""}:
                raise ValueError(
                    f"mount target {target!r} must be absolute and not one of {PLATFORM_PATHS}"
                )
        clash = RESERVED_LABELS & set(self.labels)
        if clash:
            raise ValueError(f"labels {sorted(clash)} are set by the executor")

    @property
    def name(self) -> str:
        return container_name(self.job_id, self.attempt, self.index)

    @property
    def all_labels(self) -> dict[str, str]:
        return {
            **self.labels,
            LABEL_MANAGED: "1",
            LABEL_JOB: self.job_id,
            LABEL_ATTEMPT: str(self.attempt),
            LABEL_INDEX: str(self.index),
        }


def runtime_for(default: str, phase_runtime: str | None, gpus: int) -> str:
    """The runtime of one run: the phase's own choice, else the installation's default,
    which applies to CPU runs only (gVisor cannot pass GPUs through)."""
    if phase_runtime is not None:
        return phase_runtime
    return "runc" if gpus else default


def container_name(job_id: str, attempt: int, index: int = 0) -> str:
    return f"heldout-job-{job_id}-a{attempt}-{index}"


class FailureKind(StrEnum):
    timeout = "timeout"
    oom = "oom"
    exit_code = "exit_code"
    disk_full = "disk_full"  # heldout extension: a size-capped directory filled up
    missing_output = "missing_output"
    invalid_output = "invalid_output"
    image_error = "image_error"  # the image cannot be run as submitted (participant's)
    engine_error = "engine_error"  # Docker, the disk or the worker failed (platform's)


_EXIT_HINTS = {
    1: "an uncaught error in the algorithm",
    2: "a usage error, often a wrong command line",
    126: "the command exists but is not executable",
    127: "the command was not found in the image",
    134: "the process aborted (SIGABRT)",
    139: "a segmentation fault (SIGSEGV)",
}

# The last uncaught Python exception in stderr, mapped to a fixed hint. Only the hint ever
# reaches the participant: the line itself may carry data from sequestered cases.
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception)\b.*$", re.MULTILINE)
_IMPORT = re.compile(r"^(ModuleNotFoundError|ImportError)\b")
_GPU_MEMORY = re.compile(r"CUDA out of memory|OutOfMemoryError", re.IGNORECASE)
_NO_GPU = re.compile(
    r"no CUDA GPUs are available|Found no NVIDIA driver|no CUDA-capable device"
    r"|CUDA driver initialization failed|not compiled with CUDA enabled",
    re.IGNORECASE,
)


def crash_hint(stderr_tail: str, gpus: int) -> str | None:
    """What the algorithm's last uncaught exception says about the cause, in words that
    hold no log content; None when there is none or it says nothing we recognize."""
    lines = [m.group(0) for m in _EXCEPTION_LINE.finditer(stderr_tail)]
    if not lines:
        return None
    last = lines[-1]
    if _IMPORT.match(last):
        return (
            "an import failed: a package or module is missing from the image; "
            "`heldout run-local` shows the error"
        )
    if _GPU_MEMORY.search(last):
        return "it ran out of GPU memory"
    if _NO_GPU.search(last):
        given = f"this phase gives it {gpus} GPU(s)" if gpus else "this phase gives it no GPU"
        return f"it looked for a GPU and found none; {given}"
    return None


@dataclass(frozen=True)
class Failure:
    """A classified failure.

    `reason` is the machine-readable contract string (`exit_code:1`,
    `missing_output:<slug>`, ...). `message` is one sentence built from limits, slugs and
    exit codes only, never from log content or output values. On private cases the exit
    code and hint are still the code's choice: worker/messages.py maps them to fixed words.
    """

    kind: FailureKind
    reason: str
    message: str

    @property
    def platform_caused(self) -> bool:
        """True when the team must not be charged for this run (retry it instead)."""
        return self.kind is FailureKind.engine_error

    @classmethod
    def timeout(cls, limit_s: float) -> Failure:
        return cls(
            FailureKind.timeout,
            "timeout",
            f"The algorithm did not finish within the time limit of {limit_s:g} s and was stopped.",
        )

    @classmethod
    def oom(cls, memory_mb: int) -> Failure:
        return cls(
            FailureKind.oom,
            "oom",
            f"The algorithm ran out of memory (limit {memory_mb} MB) and was killed.",
        )

    @classmethod
    def exit_code(cls, code: int, hint: str | None = None) -> Failure:
        hint = hint or _EXIT_HINTS.get(code)
        return cls(
            FailureKind.exit_code,
            f"exit_code:{code}",
            f"The algorithm exited with code {code}" + (f" ({hint})." if hint else "."),
        )

    @classmethod
    def disk_full(cls, where: str, limit_mb: int) -> Failure:
        """where: "/output", "/scratch", "/tmp" or "rootfs" (the writable layer)."""
        place = (
            "its own filesystem (outside the mounted directories)" if where == "rootfs" else where
        )
        return cls(
            FailureKind.disk_full,
            f"disk_full:{where}",
            f"The algorithm filled {place} (limit {limit_mb} MB).",
        )

    @classmethod
    def missing_output(cls, slug: str, path: str) -> Failure:
        return cls(
            FailureKind.missing_output,
            f"missing_output:{slug}",
            f"The algorithm did not write {path} (output {slug!r}).",
        )

    @classmethod
    def invalid_output(cls, slug: str, why: str) -> Failure:
        return cls(
            FailureKind.invalid_output,
            f"invalid_output:{slug}: {why}",
            f"Output {slug!r} is invalid: {why}.",
        )

    @classmethod
    def image_error(cls, message: str) -> Failure:
        return cls(FailureKind.image_error, "image_error", message)

    @classmethod
    def engine_error(cls, message: str = "") -> Failure:
        return cls(
            FailureKind.engine_error,
            "engine_error",
            message or "The platform failed to run the container; the run will be retried.",
        )


class ExecutionError(Exception):
    """The container could not be run at all; `failure` says why and who is to blame."""

    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.reason + ": " + failure.message)
        self.failure = failure


@dataclass(frozen=True)
class RunResult:
    exit_code: int
    timed_out: bool  # killed by the executor at the wall-clock deadline
    oom_killed: bool  # the engine reported an OOM kill inside the container
    duration_s: float  # time inside the container (StartedAt -> FinishedAt)
    limits: Limits
    stdout_tail: str = ""  # the last LOG_TAIL_BYTES of each stream, decoded leniently
    stderr_tail: str = ""
    stdout_bytes: int = 0  # total sizes as streamed
    stderr_bytes: int = 0
    disk_full: str | None = None  # "/output", "/scratch" or "rootfs" when a cap was hit
    output_dir: Path | None = None  # host copy of /output, set by collect()

    @property
    def failure(self) -> Failure | None:
        """Classification of the container's own exit; outputs are checked separately."""
        if self.timed_out:
            return Failure.timeout(self.limits.wall_time_s)
        if self.exit_code != 0 and self.oom_killed:
            return Failure.oom(self.limits.memory_mb)
        # Before the 137 rule: the executor's own kill of a rootfs filler is a SIGKILL too.
        if self.disk_full is not None:
            return Failure.disk_full(self.disk_full, self._disk_limit_mb(self.disk_full))
        # 137 is SIGKILL; when neither we nor a quota killed it, the OOM killer did.
        if self.exit_code == 137:
            return Failure.oom(self.limits.memory_mb)
        if self.exit_code != 0:
            return Failure.exit_code(self.exit_code, crash_hint(self.stderr_tail, self.limits.gpus))
        return None

    def _disk_limit_mb(self, where: str) -> int:
        if where == "/output":
            return self.limits.output_mb
        if where == "/scratch":
            return self.limits.scratch_mb
        return self.limits.tmp_mb


H = TypeVar("H")


class Executor(ABC, Generic[H]):
    """A container backend. `H` is the backend's handle for one provisioned run."""

    @abstractmethod
    def provision(self, spec: RunSpec) -> H:
        """Create everything the run needs without starting it; removes a leftover
        container of the same name first. Cleans up after itself if it raises."""

    @abstractmethod
    def execute(self, handle: H) -> RunResult:
        """Start the container and wait for it, killing it at the wall-clock limit."""

    @abstractmethod
    def collect(self, handle: H, result: RunResult, dest: Path) -> RunResult:
        """Copy /output (regular files and directories only) to `dest`."""

    @abstractmethod
    def deprovision(self, handle: H) -> None:
        """Remove the container and every mount and file the run created. Idempotent."""

    @abstractmethod
    def cleanup_stale(self, labels: Mapping[str, str]) -> list[str]:
        """Remove leftovers (containers, mounts, work dirs) of runs whose labels include
        `labels`, e.g. {LABEL_JOB: "42"} when a crashed worker's job is picked up again.
        Returns the names removed."""

    @abstractmethod
    def running(self, labels: Mapping[str, str]) -> list[dict[str, str]]:
        """The labels of this backend's running containers whose labels include `labels`
        (the reaper finds the runs of cancelled jobs by them)."""

    def held(self, labels: Mapping[str, str]) -> list[dict[str, str]]:
        """The labels of everything this backend still holds for runs whose labels include
        `labels`: containers in any state and, where the backend keeps them, work dirs (a
        killed worker's mounted /output outlives its container). The reaper finds a dead
        worker's leftovers by them; by default, the running containers."""
        return self.running(labels)

    def run(self, spec: RunSpec, dest: Path) -> RunResult:
        """provision → execute → collect → deprovision, always deprovisioning."""
        handle = self.provision(spec)
        try:
            result = self.execute(handle)
            result = self.collect(handle, result, dest)
        except BaseException:
            try:
                self.deprovision(handle)
            except Exception:
                # The original error is the one to report; this one only gets logged.
                log.exception("deprovision of %s failed after an earlier error", spec.name)
            raise
        self.deprovision(handle)
        return result
