"""Running an algorithm on cases, the one way the platform does it: the pipeline's
inference and canary steps and `heldout run-local` all come through here, so a participant
sees locally the exact flags, limits, layout and output checks the platform applies."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from server.challenges.schemas import Interface, Limits
from server.datasets.manifest import split_case_file
from worker.executor import Executor, Failure, RunResult, RunSpec
from worker.outputs import (
    stage_batch_inputs,
    stage_case_inputs,
    validate_batch_outputs,
    validate_outputs,
)


@dataclass
class CaseResult:
    case: str
    values: dict[str, Any] = field(default_factory=dict)  # json: the value; file: its Path
    failure: Failure | None = None


@dataclass
class RunOutcome:
    run: RunResult
    cases: dict[str, CaseResult]

    @property
    def failed(self) -> list[CaseResult]:
        return [c for c in self.cases.values() if c.failure is not None]


def run_case(
    executor: Executor[Any],
    *,
    image: str,
    job_id: str,
    attempt: int,
    limits: Limits,
    inputs: Sequence[Interface],
    outputs: Sequence[Interface],
    case: str,
    files: Mapping[str, Path],
    work: Path,
    gpu_device_ids: Sequence[str] = (),
    runtime: str | None = None,
    read_only_mounts: Mapping[Path, str] | None = None,
) -> RunOutcome:
    """One container for one case: /input/images/<slug>/<uuid><ext> in, /output checked.
    Raises ExecutionError when the container cannot run at all."""
    stage_case_inputs(work / "input", inputs, files, case)
    spec = RunSpec(
        image=image,
        job_id=job_id,
        attempt=attempt,
        inputs=work / "input",
        limits=limits,
        gpu_device_ids=gpu_device_ids,
        runtime=runtime,
        read_only_mounts=read_only_mounts or {},
    )
    result = executor.run(spec, work / "output")
    failure = result.failure
    values: dict[str, Any] = {}
    if failure is None:
        checked = validate_outputs(work / "output", outputs)
        failure, values = checked.failure, checked.values
    return RunOutcome(result, {case: CaseResult(case, values, failure)})


def batch_limits(limits: Limits, n_cases: int) -> Limits:
    """A batch container's limits: the per-case wall time, once for every case."""
    return limits.model_copy(update={"wall_time_s": limits.wall_time_s * max(1, n_cases)})


def run_batch(
    executor: Executor[Any],
    *,
    image: str,
    job_id: str,
    attempt: int,
    limits: Limits,
    inputs: Sequence[Interface],
    outputs: Sequence[Interface],
    cases: Mapping[str, Mapping[str, Path]],
    work: Path,
    gpu_device_ids: Sequence[str] = (),
    runtime: str | None = None,
    read_only_mounts: Mapping[Path, str] | None = None,
) -> RunOutcome:
    """One container for many cases (contracts.md batch mode): /input/<case>/... in,
    /output/<case>/... checked per case. The wall-time limit scales with the cases."""
    staged = stage_batch_inputs(work / "input", inputs, cases)
    limits = batch_limits(limits, len(cases))
    spec = RunSpec(
        image=image,
        job_id=job_id,
        attempt=attempt,
        inputs=work / "input",
        limits=limits,
        gpu_device_ids=gpu_device_ids,
        runtime=runtime,
        read_only_mounts=read_only_mounts or {},
    )
    result = executor.run(spec, work / "output")
    per_case = validate_batch_outputs(work / "output", list(staged), outputs)
    out: dict[str, CaseResult] = {}
    for case, checked in per_case.items():
        failure = result.failure or checked.failure
        out[case] = CaseResult(case, {} if failure else checked.values, failure)
    return RunOutcome(result, out)


def stage_training(dest: Path, data: Mapping[str, Path], labels: Path) -> None:
    """/input/data/mha/<PatientID><ext> and /input/metadata/reference.csv (contracts.md)."""
    import shutil

    (dest / "data" / "mha").mkdir(parents=True)
    (dest / "metadata").mkdir(parents=True)
    for case, source in data.items():
        shutil.copyfile(source, dest / "data" / "mha" / f"{case}{_ext(source)}")
    shutil.copyfile(labels, dest / "metadata" / "reference.csv")
    for path in [dest, *dest.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)


def _ext(path: Path) -> str:
    # Not from the first dot: a DICOM-UID-style name (1.2.826.0.1.mha) keeps only `.mha`.
    split = split_case_file(path.name)
    return split[1] if split else ""


def run_training(
    executor: Executor[Any],
    *,
    image: str,
    job_id: str,
    attempt: int,
    limits: Limits,
    data: Mapping[str, Path],
    labels: Path,
    work: Path,
    gpu_device_ids: Sequence[str] = (),
    runtime: str | None = None,
) -> RunResult:
    """The training container (STOIC final phase): read-only /input, /output for the
    trained artifacts, /scratch, a size-capped writable layer, SYS_NICE, no network."""
    stage_training(work / "input", data, labels)
    spec = RunSpec(
        image=image,
        job_id=job_id,
        attempt=attempt,
        inputs=work / "input",
        limits=limits,
        gpu_device_ids=gpu_device_ids,
        runtime=runtime,
        writable_rootfs=True,
        scratch=True,
        cap_add=("SYS_NICE",),
    )
    return executor.run(spec, work / "output")
