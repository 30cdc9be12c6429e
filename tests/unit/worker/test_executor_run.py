"""Executor.run: deprovision always happens, and the first error is the one raised."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

import pytest

from server.challenges.schemas import Limits
from worker.executor.base import ExecutionError, Executor, Failure, RunResult, RunSpec

SPEC = RunSpec(image="img", job_id="1", attempt=1, inputs=Path("/in"), limits=Limits())


class Fake(Executor[str]):
    def __init__(self, fail_in: str | None = None, deprovision_fails: bool = False) -> None:
        self.calls: list[str] = []
        self.fail_in = fail_in
        self.deprovision_fails = deprovision_fails

    def _step(self, name: str) -> None:
        self.calls.append(name)
        if self.fail_in == name:
            raise ExecutionError(Failure.engine_error(f"{name} broke"))

    def provision(self, spec: RunSpec) -> str:
        self._step("provision")
        return spec.name

    def execute(self, handle: str) -> RunResult:
        self._step("execute")
        return RunResult(
            exit_code=0, timed_out=False, oom_killed=False, duration_s=1, limits=SPEC.limits
        )

    def collect(self, handle: str, result: RunResult, dest: Path) -> RunResult:
        self._step("collect")
        return replace(result, output_dir=dest)

    def deprovision(self, handle: str) -> None:
        self.calls.append("deprovision")
        if self.deprovision_fails:
            raise ExecutionError(Failure.engine_error("unmount failed"))

    def cleanup_stale(self, labels: Mapping[str, str]) -> list[str]:
        return []

    def running(self, labels: Mapping[str, str]) -> list[dict[str, str]]:
        return []


def test_the_four_steps_in_order() -> None:
    ex = Fake()
    result = ex.run(SPEC, Path("/out"))
    assert ex.calls == ["provision", "execute", "collect", "deprovision"]
    assert result.output_dir == Path("/out") and result.failure is None


@pytest.mark.parametrize("step", ["execute", "collect"])
def test_deprovision_follows_a_failed_step(step: str) -> None:
    ex = Fake(fail_in=step)
    with pytest.raises(ExecutionError, match=f"{step} broke"):
        ex.run(SPEC, Path("/out"))
    assert ex.calls[-1] == "deprovision"


def test_the_original_error_wins_over_a_failed_deprovision() -> None:
    ex = Fake(fail_in="execute", deprovision_fails=True)
    with pytest.raises(ExecutionError, match="execute broke"):
        ex.run(SPEC, Path("/out"))


def test_a_failed_deprovision_after_success_is_raised() -> None:
    # A mount or container left behind must be noticed, not logged away.
    with pytest.raises(ExecutionError, match="unmount failed"):
        Fake(deprovision_fails=True).run(SPEC, Path("/out"))


def test_a_failed_provision_has_nothing_to_deprovision() -> None:
    ex = Fake(fail_in="provision")
    with pytest.raises(ExecutionError):
        ex.run(SPEC, Path("/out"))
    assert ex.calls == ["provision"]
