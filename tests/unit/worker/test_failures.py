"""Classification of a container's exit into the contract's failure reasons."""

from __future__ import annotations

from typing import Any

import pytest

from server.challenges.schemas import Limits
from worker.executor.base import ExecutionError, Failure, FailureKind, RunResult

LIMITS = Limits(wall_time_s=600, memory_mb=16384, output_mb=256, scratch_mb=1024, tmp_mb=512)


def result(**kw: Any) -> RunResult:
    base: dict[str, Any] = {
        "exit_code": 0,
        "timed_out": False,
        "oom_killed": False,
        "duration_s": 1.0,
        "limits": LIMITS,
    }
    return RunResult(**{**base, **kw})


@pytest.mark.parametrize(
    ("kw", "reason"),
    [
        ({}, None),
        ({"exit_code": 1}, "exit_code:1"),
        ({"exit_code": 127}, "exit_code:127"),
        ({"exit_code": 137, "timed_out": True}, "timeout"),
        # A timeout wins even when the kill looked like an OOM.
        ({"exit_code": 137, "timed_out": True, "oom_killed": True}, "timeout"),
        ({"exit_code": 137, "oom_killed": True}, "oom"),
        ({"exit_code": 137}, "oom"),  # contract: exit 137 is an OOM kill
        ({"exit_code": 1, "oom_killed": True}, "oom"),  # a worker process was OOM-killed
        ({"exit_code": 0, "oom_killed": True}, None),  # ... and the algorithm coped
        ({"exit_code": 1, "disk_full": "/output"}, "disk_full:/output"),
        ({"exit_code": 137, "disk_full": "rootfs"}, "disk_full:rootfs"),  # killed by the watchdog
        ({"exit_code": 0, "disk_full": "/output"}, "disk_full:/output"),  # unsized fallback
    ],
)
def test_classification(kw: dict[str, Any], reason: str | None) -> None:
    failure = result(**kw).failure
    assert (failure.reason if failure else None) == reason


def test_messages_state_limits_and_no_log_content() -> None:
    r = result(exit_code=137, timed_out=True, stderr_tail="patient 123 secret", stdout_tail="x")
    assert r.failure == Failure.timeout(600)
    assert "600 s" in r.failure.message and "patient" not in r.failure.message
    oom = result(exit_code=137, oom_killed=True).failure
    assert oom is not None and "16384 MB" in oom.message
    full = result(exit_code=1, disk_full="/scratch").failure
    assert full is not None and "/scratch" in full.message and "1024 MB" in full.message
    assert "not found" in Failure.exit_code(127).message


def test_reasons_follow_the_contract() -> None:
    assert Failure.missing_output("probability-covid-19", "/output/x.json").reason == (
        "missing_output:probability-covid-19"
    )
    assert Failure.invalid_output("seg", "seg.mha is empty").reason == (
        "invalid_output:seg: seg.mha is empty"
    )
    assert Failure.image_error("no USER").reason == "image_error"
    assert Failure.engine_error().reason == "engine_error"


def test_only_engine_errors_are_platform_caused() -> None:
    platform = [f for f in FailureKind if f is FailureKind.engine_error]
    assert platform == [FailureKind.engine_error]
    for failure in (
        Failure.timeout(1),
        Failure.oom(1),
        Failure.exit_code(1),
        Failure.disk_full("/tmp", 1),
        Failure.missing_output("a", "/output/a.json"),
        Failure.invalid_output("a", "why"),
        Failure.image_error("root"),
    ):
        assert not failure.platform_caused, failure
    assert Failure.engine_error().platform_caused
    err = ExecutionError(Failure.engine_error("The image is missing on the worker."))
    assert err.failure.platform_caused and "missing" in str(err)


TRACEBACK = 'Traceback (most recent call last):\n  File "/opt/algorithm/process.py", line 3\n'


@pytest.mark.parametrize(
    ("stderr", "gpus", "says"),
    [
        (TRACEBACK + "ModuleNotFoundError: No module named 'P0042_x'\n", 0, "an import failed"),
        (TRACEBACK + "ImportError: libGL.so.1: cannot open shared object file\n", 0, "an import"),
        (TRACEBACK + "RuntimeError: No CUDA GPUs are available\n", 0, "gives it no GPU"),
        (TRACEBACK + "RuntimeError: Found no NVIDIA driver on your system.\n", 2, "2 GPU(s)"),
        (TRACEBACK + "AssertionError: Torch not compiled with CUDA enabled\n", 0, "found none"),
        (TRACEBACK + "torch.OutOfMemoryError: CUDA out of memory. Tried 2 GiB\n", 1, "GPU memory"),
        # The last exception counts: a handled import warning earlier says nothing.
        ("ImportError: optional accel missing\n" + TRACEBACK + "ValueError: bad\n", 0, None),
        ("Segmentation fault\n", 0, None),
        ("", 0, None),
    ],
)
def test_crash_hints_name_the_cause_without_log_content(
    stderr: str, gpus: int, says: str | None
) -> None:
    limits = LIMITS.model_copy(update={"gpus": gpus})
    failure = result(exit_code=1, stderr_tail=stderr, limits=limits).failure
    assert failure is not None and failure.reason == "exit_code:1"  # the contract's reason
    if says is None:
        assert failure.message == Failure.exit_code(1).message
    else:
        assert says in failure.message
    for leak in ("P0042", "libGL", "Tried 2 GiB", "optional accel"):
        assert leak not in failure.message
