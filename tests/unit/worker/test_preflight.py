"""No silent unsized /output: the worker refuses to start, and a run refuses to go ahead,
when no size-capped directory can be made; the runtime settings and fields are checked."""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from server.challenges.schemas import Limits, PhaseSpec
from server.config import Settings
from worker.executor import sized_dir
from worker.executor.base import ExecutionError, RunSpec, runtime_for
from worker.executor.docker import RUNSC_PIDS_HEADROOM, DockerExecutor, container_options
from worker.executor.fake import FakeExecutor
from worker.preflight import PreflightError, check_worker


@pytest.fixture
def no_loop_mounts(monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker may not mount (not root, no CAP_SYS_ADMIN): mkfs works, mount fails."""

    def fake_run(*cmd: str) -> None:
        if cmd[0] == "mount":
            raise subprocess.CalledProcessError(
                32, list(cmd), stderr=b'mount: only root can use "--options" option'
            )

    monkeypatch.setattr(sized_dir, "_run", fake_run)


def test_worker_refuses_to_start_without_sized_output(no_loop_mounts: None, tmp_path: Path) -> None:
    with pytest.raises(PreflightError) as err:
        check_worker(Settings(data_dir=tmp_path))
    message = str(err.value)
    assert "cannot make a size-capped /output" in message
    assert "only root can use" in message  # the cause, for the operator
    assert "HELDOUT_ALLOW_UNSIZED_OUTPUT=true" in message
    assert not list((tmp_path / "work").iterdir())  # nothing left behind


def test_development_setting_allows_it_loudly(
    no_loop_mounts: None, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        check_worker(Settings(data_dir=tmp_path, allow_unsized_output=True))
    assert "NOT size-capped" in caplog.text


def test_production_refuses_the_development_setting(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="HELDOUT_ALLOW_UNSIZED_OUTPUT"):
        Settings(data_dir=tmp_path, environment="production", allow_unsized_output=True)


def test_a_run_that_cannot_size_its_output_is_a_platform_fault(
    no_loop_mounts: None, tmp_path: Path
) -> None:
    executor = DockerExecutor(client=None, work_root=tmp_path)  # type: ignore[arg-type]
    with pytest.raises(ExecutionError) as err:
        executor._sized(tmp_path / "output", 8)
    failure = err.value.failure
    assert failure.platform_caused  # retried, not charged
    assert "/output" in failure.message and str(tmp_path) not in failure.message
    assert not (tmp_path / "output").exists()  # never run with a plain directory


def test_preflight_checks_the_configured_runtime(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr("worker.preflight.check_sized_output", lambda root: None)
    settings = Settings(data_dir=tmp_path, container_runtime="runsc")
    with pytest.raises(PreflightError, match="HELDOUT_CONTAINER_RUNTIME=runsc"):
        check_worker(settings, FakeExecutor(engine_runtimes={"runc"}))
    check_worker(settings, FakeExecutor(engine_runtimes={"runc", "runsc"}))


def _phase(**kw: Any) -> dict[str, Any]:
    return {
        "slug": "p",
        "title": "P",
        "kind": "algorithm",
        "inputs": [{"slug": "ct", "kind": "image"}],
        "outputs": [{"slug": "y", "kind": "json"}],
        "metrics": {
            "primary": "auc",
            "metrics": [{"name": "auc", "kind": "auc", "output": "y", "label": "l"}],
        },
        **kw,
    }


def test_phase_runtime_field() -> None:
    assert PhaseSpec.model_validate(_phase()).runtime is None
    assert PhaseSpec.model_validate(_phase(runtime="runsc")).runtime == "runsc"
    with pytest.raises(ValidationError, match="runtime 'runsc' \\(gVisor\\) cannot run GPU"):
        PhaseSpec.model_validate(_phase(runtime="runsc", limits={"gpus": 1}))
    with pytest.raises(ValidationError, match="runtime"):
        PhaseSpec.model_validate(_phase(runtime="kata"))


def test_runtime_resolution_and_options() -> None:
    assert runtime_for("runsc", None, 0) == "runsc"
    assert runtime_for("runsc", None, 1) == "runc"  # the default is for CPU runs
    assert runtime_for("runc", "runsc", 0) == "runsc"
    spec = RunSpec(
        image="i", job_id="j", attempt=1, inputs=Path("/in"), limits=Limits(), runtime="runsc"
    )
    opts = container_options(spec, "sha256:x", [], rootfs_quota=True)
    assert opts["runtime"] == "runsc" and opts["network_mode"] == "none"
    assert opts["pids_limit"] == Limits().pids + RUNSC_PIDS_HEADROOM
    with pytest.raises(ValueError, match="runsc"):
        RunSpec(
            image="i",
            job_id="j",
            attempt=1,
            inputs=Path("/in"),
            limits=Limits(gpus=1),
            gpu_device_ids=["0"],
            runtime="runsc",
        )
