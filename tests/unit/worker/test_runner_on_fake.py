"""The pipeline's run paths (worker.runner: per-case, batch, training) on the fake backend,
through the Executor interface the Docker backend's integration tests drive on the engine:
inputs staged where the contract says, outputs checked, every run deprovisioned."""

from __future__ import annotations

import json
from pathlib import Path

from server.challenges.schemas import Interface, InterfaceKind, Limits
from worker.executor.base import LABEL_JOB, Executor, FailureKind, RunSpec
from worker.executor.fake import Behaviour, FakeExecutor
from worker.runner import run_batch, run_case, run_training

PROB = Interface(slug="probability-covid-19", kind=InterfaceKind.json, minimum=0, maximum=1)
CT = Interface(slug="ct", kind=InterfaceKind.image)
LIMITS = Limits(wall_time_s=60)


def _case_file(tmp_path: Path, name: str) -> Path:
    f = tmp_path / "src" / f"{name}.mha"
    f.parent.mkdir(parents=True, exist_ok=True)
    f.write_bytes(b"fake image " + name.encode())
    return f


def _writes(value: float) -> Behaviour:
    def write(inputs: Path, output: Path) -> None:
        assert len(list((inputs / "images" / "ct").iterdir())) == 1  # the staged case
        (output / f"{PROB.slug}.json").write_text(json.dumps(value))

    return Behaviour(write=write)


def test_the_fake_is_an_executor() -> None:
    assert isinstance(FakeExecutor(), Executor)


def test_a_case_that_writes_its_output_passes(tmp_path: Path) -> None:
    ex = FakeExecutor(behaviour=lambda spec: _writes(0.25))
    out = run_case(
        ex,
        image="img",
        job_id="7",
        attempt=1,
        limits=LIMITS,
        inputs=[CT],
        outputs=[PROB],
        case="case-1",
        files={"ct": _case_file(tmp_path, "case-1")},
        work=tmp_path / "work",
    )
    assert out.failed == [] and out.cases["case-1"].values == {PROB.slug: 0.25}
    assert [s.name for s in ex.runs] == [RunSpec("img", "7", 1, Path("/"), LIMITS).name]
    assert ex.live == {}  # deprovisioned


def test_a_missing_output_or_a_crash_fails_the_case(tmp_path: Path) -> None:
    files = {"ct": _case_file(tmp_path, "c")}
    common = dict(image="img", job_id="8", attempt=1, limits=LIMITS, inputs=[CT])
    silent = run_case(
        FakeExecutor(), **common, outputs=[PROB], case="c", files=files, work=tmp_path / "a"
    )
    failure = silent.cases["c"].failure
    assert failure is not None and failure.kind is FailureKind.missing_output
    crash = FakeExecutor(behaviour=lambda spec: Behaviour(exit_code=3, stderr="boom"))
    crashed = run_case(crash, **common, outputs=[PROB], case="c", files=files, work=tmp_path / "b")
    failure = crashed.cases["c"].failure
    assert failure is not None and failure.reason.startswith("exit_code:3")


def test_a_timeout_is_reported_as_the_engine_would(tmp_path: Path) -> None:
    ex = FakeExecutor(behaviour=lambda spec: Behaviour(exit_code=137, timed_out=True))
    out = run_case(
        ex,
        image="img",
        job_id="9",
        attempt=2,
        limits=LIMITS,
        inputs=[CT],
        outputs=[PROB],
        case="c",
        files={"ct": _case_file(tmp_path, "c")},
        work=tmp_path / "w",
    )
    failure = out.cases["c"].failure
    assert failure is not None and failure.kind is FailureKind.timeout


def test_batch_mode_checks_each_case_and_scales_the_wall_time(tmp_path: Path) -> None:
    def write(inputs: Path, output: Path) -> None:
        for case in sorted(p.name for p in inputs.iterdir()):
            if case != "b":  # case b gets no output
                (output / case).mkdir()
                (output / case / f"{PROB.slug}.json").write_text("0.5")

    ex = FakeExecutor(behaviour=lambda spec: Behaviour(write=write))
    cases = {name: {"ct": _case_file(tmp_path, name)} for name in ("a", "b", "c")}
    out = run_batch(
        ex,
        image="img",
        job_id="10",
        attempt=1,
        limits=LIMITS,
        inputs=[CT],
        outputs=[PROB],
        cases=cases,
        work=tmp_path / "w",
    )
    assert sorted(c.case for c in out.failed) == ["b"]
    assert out.cases["a"].values == {PROB.slug: 0.5}
    assert ex.runs[0].limits.wall_time_s == 3 * LIMITS.wall_time_s


def test_training_gets_its_layout_and_a_writable_scratch(tmp_path: Path) -> None:
    seen: dict[str, list[str]] = {}

    def write(inputs: Path, output: Path) -> None:
        seen["input"] = sorted(str(p.relative_to(inputs)) for p in inputs.rglob("*"))
        (output / "model.pt").write_bytes(b"weights")

    labels = tmp_path / "reference.csv"
    labels.write_text("PatientID,probCOVID\n1,1\n")
    ex = FakeExecutor(behaviour=lambda spec: Behaviour(write=write))
    result = run_training(
        ex,
        image="train",
        job_id="11",
        attempt=1,
        limits=LIMITS,
        data={"1": _case_file(tmp_path, "1")},
        labels=labels,
        work=tmp_path / "w",
    )
    assert result.failure is None and (tmp_path / "w" / "output" / "model.pt").exists()
    assert seen["input"] == ["data", "data/mha", "data/mha/1.mha", "metadata",
                             "metadata/reference.csv"]  # fmt: skip
    spec = ex.runs[0]
    assert spec.scratch and spec.writable_rootfs and spec.cap_add == ("SYS_NICE",)


def test_cleanup_stale_removes_a_crashed_run_by_its_job_label(tmp_path: Path) -> None:
    ex = FakeExecutor()
    left = ex.provision(RunSpec("img", "12", 1, tmp_path, LIMITS))
    ex.provision(RunSpec("img", "13", 1, tmp_path, LIMITS))
    assert ex.cleanup_stale({LABEL_JOB: "12"}) == [left.spec.name]
    assert list(ex.live) == [RunSpec("img", "13", 1, tmp_path, LIMITS).name]


def test_running_lists_the_labels_of_live_runs(tmp_path: Path) -> None:
    ex = FakeExecutor()
    ex.provision(RunSpec("img", "14", 1, tmp_path, LIMITS))
    ex.provision(RunSpec("img", "15", 2, tmp_path, LIMITS))
    assert sorted(labels[LABEL_JOB] for labels in ex.running({})) == ["14", "15"]
    assert [labels[LABEL_JOB] for labels in ex.running({LABEL_JOB: "15"})] == ["15"]
