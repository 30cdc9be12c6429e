"""The sandbox on the real engine: hostile images are contained and classified, the
well-behaved one succeeds, and nothing is left behind on the host or in the engine.

The containment tests run under both runtimes, runc and gVisor's runsc (`BOTH`); what is
decided before a container starts (users, images, redelivery, cleanup) runs under runc."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import docker
import pytest

from server.challenges.schemas import Interface, InterfaceKind, Limits
from tests.conftest import need
from tests.support import images as im
from worker.executor.base import (
    LABEL_JOB,
    LABEL_MANAGED,
    ExecutionError,
    FailureKind,
    RunResult,
    RunSpec,
)
from worker.executor.docker import DockerExecutor
from worker.executor.sized_dir import SizedDir, mounts_under
from worker.outputs import (
    stage_batch_inputs,
    stage_case_inputs,
    validate_batch_outputs,
    validate_outputs,
)

pytestmark = [pytest.mark.docker, pytest.mark.slow]

CT = Interface(slug="ct", kind=InterfaceKind.image)
STOIC_OUTPUTS = [
    Interface(slug=s, kind=InterfaceKind.json, minimum=0, maximum=1) for s in im.STOIC_OUTPUTS
]
LIMIT_KEYS = set(Limits.model_fields)
# Other suites may share the engine; this label tells this module's containers apart.
MINE = "heldout.test=sandbox"
LABELS = {"heldout.test": "sandbox"}
Tags = dict[str, str]
SCRIPTS = {
    "well-behaved": im.WELL_BEHAVED,
    "probe": im.PROBE,
    "fork-bomb": im.FORK_BOMB,
    "memory-hog": im.MEMORY_HOG,
    "infinite-loop": im.INFINITE_LOOP,
    "fill-output": im.FILL_OUTPUT,
    # Swallows ENOSPC and exits 0, having written no declared output.
    "fill-output-exit-0": "import sys\ntry:\n"
    + "".join(f"    {line}\n" for line in im.FILL_OUTPUT.strip().splitlines())
    + "except OSError:\n    pass\nsys.exit(0)\n",
    "fill-tmp": im.FILL_TMP,
    "fill-rootfs": im.FILL_ROOTFS,
    "fill-scratch": im.FILL_OUTPUT.replace("/output/", "/scratch/"),
    "network": im.NETWORK,
    "write-input": im.WRITE_INPUT,
    "writes-home": im.WRITES_HOME,
    "chatty": "import sys\nsys.stdout.write('y' * 200_000)\nsys.stderr.write('oops')\n",
    # A dependency the participant forgot to put in the image.
    "missing-module": "import numpy_for_ct_segmentation\n",
}


@pytest.fixture(scope="module")
def client() -> Iterator[docker.DockerClient]:
    c = im.client_or_none()
    need(c is not None, "a Docker engine")
    assert c is not None
    yield c
    # The engine is healthy and holds none of this module's containers after all its runs.
    assert c.ping()
    assert c.containers.list(all=True, filters={"label": [f"{LABEL_MANAGED}=1", MINE]}) == []


@pytest.fixture(scope="module")
def tags(client: docker.DockerClient) -> Tags:
    built = {name: im.build_image(client, name, script) for name, script in SCRIPTS.items()}
    built["no-user"] = im.build_image(client, "no-user", im.WELL_BEHAVED, user=None)
    built["user-root"] = im.build_image(client, "user-root", im.WELL_BEHAVED, user="root")
    built["user-toor"] = im.build_image(
        client,
        "user-toor",
        im.WELL_BEHAVED,
        user="toor",
        extra="USER root\nRUN useradd -o -u 0 -g 0 toor\nUSER toor",
    )
    return built


# Runs the decorated test under each runtime; tests without it run under runc only.
BOTH = pytest.mark.parametrize("runtime", ["runc", "runsc"])


@pytest.fixture
def runtime() -> str:
    return "runc"


class RuntimeExecutor(DockerExecutor):
    """Every run under one runtime, as a phase or the installation would choose it."""

    runtime = "runc"

    def provision(self, spec: RunSpec) -> Any:
        return super().provision(replace(spec, runtime=self.runtime))


@pytest.fixture
def executor(client: docker.DockerClient, tmp_path: Path, runtime: str) -> Iterator[DockerExecutor]:
    if runtime != "runc":
        have = client.info().get("Runtimes") or {}
        need(runtime in have, f"the {runtime} runtime registered in the Docker engine")
    ex = RuntimeExecutor(client, tmp_path / "work", rootfs_poll_s=0.5)
    ex.runtime = runtime
    yield ex
    # Every run cleaned up after itself: no mounts, no loop images, no work dirs.
    assert mounts_under(tmp_path) == []
    losetup = subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout
    assert str(tmp_path) not in losetup
    assert not any((tmp_path / "work").iterdir()) if (tmp_path / "work").exists() else True


@pytest.fixture
def case_input(tmp_path: Path) -> Path:
    source = im.write_mha(tmp_path / "dataset" / "case-001.mha", age="064Y")
    return stage_case_inputs(tmp_path / "input", [CT], {"ct": source}).root


def run(
    executor: DockerExecutor, image: str, inputs: Path, dest: Path, *, index: int = 0, **kw: Any
) -> RunResult:
    """One run; keyword arguments go to Limits (wall_time_s 30 unless given) or RunSpec."""
    limits = Limits(**{"wall_time_s": 30, **{k: v for k, v in kw.items() if k in LIMIT_KEYS}})
    extra = {"labels": LABELS, **{k: v for k, v in kw.items() if k not in LIMIT_KEYS}}
    spec = RunSpec(
        image=image, job_id="t", attempt=1, index=index, inputs=inputs, limits=limits, **extra
    )
    return executor.run(spec, dest)


def reason(result: RunResult) -> str | None:
    return result.failure.reason if result.failure else None


def out(result: RunResult) -> Path:
    assert result.output_dir is not None
    return result.output_dir


def message(result: RunResult) -> str:
    assert result.failure is not None
    return result.failure.message


@BOTH
def test_well_behaved_algorithm_succeeds(
    executor: DockerExecutor, tags: Tags, case_input: Path, tmp_path: Path
) -> None:
    result = run(executor, tags["well-behaved"], case_input, tmp_path / "out")
    assert result.failure is None, result
    assert result.exit_code == 0 and 0 < result.duration_s < 30
    assert result.stderr_tail == "done\n" and result.stderr_bytes == 5
    outputs = validate_outputs(out(result), STOIC_OUTPUTS)
    assert outputs.ok, outputs.failures
    # The algorithm read the header of the staged file: PatientAge 064Y.
    assert outputs.values == {"probability-covid-19": 0.64, "probability-severe-covid-19": 0.25}


def test_batch_mode_writes_per_case_outputs(
    executor: DockerExecutor, tags: Tags, tmp_path: Path
) -> None:
    cases = {
        f"case-{i}": {"ct": im.write_mha(tmp_path / "ds" / f"{i}.mha", age=f"0{40 + i}Y")}
        for i in range(3)
    }
    staged = stage_batch_inputs(tmp_path / "input", [CT], cases)
    result = run(executor, tags["well-behaved"], tmp_path / "input", tmp_path / "out")
    assert result.failure is None
    per_case = validate_batch_outputs(out(result), list(staged), STOIC_OUTPUTS)
    assert {c: o.values["probability-covid-19"] for c, o in per_case.items()} == {
        "case-0": 0.40,
        "case-1": 0.41,
        "case-2": 0.42,
    }


@BOTH
def test_probe_finds_no_way_out(
    executor: DockerExecutor,
    tags: Tags,
    case_input: Path,
    tmp_path: Path,
    runtime: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    secret = "hunter2-worker-secret"
    monkeypatch.setenv("HELDOUT_SECRET_KEY", secret)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    listener = socket.socket()
    listener.bind(("0.0.0.0", 0))
    listener.listen()
    port = listener.getsockname()[1]
    (case_input / "port.txt").write_text(str(port))
    if runtime == "runsc":
        (case_input / "no-fork").write_text("")
    try:
        result = run(
            executor,
            tags["probe"],
            case_input,
            tmp_path / "out",
            pids=48,
            tmp_mb=32,
            shm_mb=16,
            output_mb=16,
        )
    finally:
        listener.close()
    assert result.failure is None, result
    probe = json.loads((out(result) / "probe.json").read_text())

    assert probe["uid"] == 1001 and probe["gid"] == 1001  # the image's own user
    assert probe["cap_eff"] == "0000000000000000"
    assert probe["no_new_privs"] == "1"
    # No worker environment inside: the secret is nowhere, and only the image's variables
    # plus what the engine always sets are present.
    assert secret not in json.dumps(probe)
    assert set(probe["env"]) <= {
        "PATH",
        "LANG",
        "HOSTNAME",
        "HOME",
        "PWD",
        "NVIDIA_VISIBLE_DEVICES",
    }
    # Read-only everywhere except the three scratch areas.
    writes = probe["write"]
    for path in (
        "/input/evil",
        "/input/images/evil",
        "/etc/evil",
        "/evil",
        "/opt/algorithm/evil",
        "/etc/hosts",
    ):
        # gVisor refuses some of these writes as EACCES rather than EROFS.
        refused = {"EROFS"} if runtime == "runc" else {"EROFS", "EACCES"}
        assert writes[path] in refused, (path, writes[path])
    assert writes["/output/ok.txt"] == writes["/tmp/ok.txt"] == writes["/dev/shm/ok.txt"] == "ok"
    assert set(probe["docker_sock"].values()) == {"ENOENT"}
    # No network at all: only loopback and no route anywhere; the host's listening port is
    # out of reach (the container's own lo refuses it).
    assert probe["interfaces"] == ["lo"]
    assert probe["routes"] == []
    assert probe["connect"] == {f"127.0.0.1:{port}": "ECONNREFUSED"}
    # Size caps as configured.
    assert probe["tmp_bytes"] == 32 * 2**20
    assert probe["shm_bytes"] == 16 * 2**20
    assert 16 * 2**20 <= probe["output_bytes"] < 20 * 2**20
    # The fork test hit the pids limit (48, minus init, sh and python themselves).
    if runtime == "runc":
        assert probe["fork_error"] == "EAGAIN" and 40 <= probe["forked"] < 48
    # The input was not touched.
    assert sorted(p.name for p in case_input.rglob("*")) == sorted(
        [
            "images",
            "ct",
            "inputs.json",
            "port.txt",
            *(["no-fork"] if runtime == "runsc" else []),
            *(p.name for p in case_input.glob("images/ct/*")),
        ]
    )


@BOTH
def test_fork_bomb_is_contained(
    executor: DockerExecutor, tags: Tags, case_input: Path, tmp_path: Path, runtime: str
) -> None:
    started = time.monotonic()
    result = run(executor, tags["fork-bomb"], case_input, tmp_path / "out", pids=32, wall_time_s=4)
    if runtime == "runc":
        assert result.timed_out and reason(result) == "timeout"
        assert "4 s" in message(result)
    else:
        # gVisor: the sandbox itself gives out (exit 2) before the deadline; still a
        # failed run, and the host never saw the processes.
        assert result.failure is not None and reason(result) != "engine_error"
    assert time.monotonic() - started < 20
    subprocess.run(["true"], check=True)  # the host can still fork


@BOTH
def test_memory_hog_is_oom_killed(
    executor: DockerExecutor, tags: Tags, case_input: Path, tmp_path: Path
) -> None:
    result = run(executor, tags["memory-hog"], case_input, tmp_path / "out", memory_mb=64)
    assert result.oom_killed and result.exit_code == 137
    assert reason(result) == "oom" and "64 MB" in message(result)


@BOTH
def test_infinite_loop_times_out(
    executor: DockerExecutor, tags: Tags, case_input: Path, tmp_path: Path
) -> None:
    started = time.monotonic()
    result = run(executor, tags["infinite-loop"], case_input, tmp_path / "out", wall_time_s=2)
    elapsed = time.monotonic() - started
    assert reason(result) == "timeout"
    assert 2 <= result.duration_s < 4 and elapsed < 10


@BOTH
def test_output_filler_hits_the_cap(
    executor: DockerExecutor, tags: Tags, case_input: Path, tmp_path: Path
) -> None:
    result = run(executor, tags["fill-output"], case_input, tmp_path / "out", output_mb=8)
    assert reason(result) == "disk_full:/output"
    assert "8 MB" in message(result)
    # What fit was written and collected, no more.
    assert 6.5 * 2**20 <= (out(result) / "fill.bin").stat().st_size <= 8.5 * 2**20


@BOTH
def test_output_filler_that_exits_0_is_still_disk_full(
    executor: DockerExecutor, tags: Tags, case_input: Path, tmp_path: Path
) -> None:
    result = run(executor, tags["fill-output-exit-0"], case_input, tmp_path / "out", output_mb=8)
    assert result.exit_code == 0
    # Not missing_output: the cap, not the algorithm, is why the outputs are not there.
    assert reason(result) == "disk_full:/output" and "8 MB" in message(result)


@BOTH
def test_tmp_filler_hits_the_cap(
    executor: DockerExecutor, tags: Tags, case_input: Path, tmp_path: Path
) -> None:
    result = run(executor, tags["fill-tmp"], case_input, tmp_path / "out", tmp_mb=8)
    assert reason(result) == "exit_code:1"
    assert "No space left on device" in result.stderr_tail


@BOTH
def test_scratch_filler_hits_the_cap(
    executor: DockerExecutor, tags: Tags, case_input: Path, tmp_path: Path
) -> None:
    result = run(
        executor, tags["fill-scratch"], case_input, tmp_path / "out", scratch=True, scratch_mb=8
    )
    assert reason(result) == "disk_full:/scratch"


@BOTH
def test_network_attempt_fails(
    executor: DockerExecutor, tags: Tags, case_input: Path, tmp_path: Path
) -> None:
    result = run(executor, tags["network"], case_input, tmp_path / "out")
    assert reason(result) == "exit_code:1"
    assert "Connection refused" in result.stderr_tail
    # The participant-facing message never carries log content.
    assert "Network" not in message(result)


def test_missing_module_is_named_as_an_import_failure(
    executor: DockerExecutor, tags: Tags, case_input: Path, tmp_path: Path
) -> None:
    result = run(executor, tags["missing-module"], case_input, tmp_path / "out")
    assert reason(result) == "exit_code:1"
    assert "an import failed" in message(result)
    assert "numpy_for_ct" not in message(result)  # the hint, never the log line


@BOTH
def test_writing_input_fails(
    executor: DockerExecutor, tags: Tags, case_input: Path, tmp_path: Path, runtime: str
) -> None:
    before = {p: p.read_bytes() for p in case_input.rglob("*") if p.is_file()}
    result = run(executor, tags["write-input"], case_input, tmp_path / "out")
    assert reason(result) == "exit_code:1"
    # gVisor's gofer refuses the open itself (EACCES) rather than report EROFS.
    want = "Read-only file system" if runtime == "runc" else "Permission denied"
    assert want in result.stderr_tail
    assert {p: p.read_bytes() for p in case_input.rglob("*") if p.is_file()} == before


@BOTH
def test_writable_rootfs_for_training(
    executor: DockerExecutor, tags: Tags, case_input: Path, tmp_path: Path
) -> None:
    ok = run(executor, tags["writes-home"], case_input, tmp_path / "ok", writable_rootfs=True)
    assert ok.failure is None and (out(ok) / "ok.json").read_text() == "1"
    # Read-only by default: the same image fails without the writable layer.
    ro = run(executor, tags["writes-home"], case_input, tmp_path / "ro", index=1)
    assert reason(ro) == "exit_code:1"
    # The layer's cap holds (storage quota, or the executor's size watchdog on this host).
    full = run(
        executor,
        tags["fill-rootfs"],
        case_input,
        tmp_path / "full",
        index=2,
        writable_rootfs=True,
        tmp_mb=32,
    )
    assert reason(full) == "disk_full:rootfs"


def test_log_tails_are_capped(
    executor: DockerExecutor, tags: Tags, case_input: Path, tmp_path: Path
) -> None:
    result = run(executor, tags["chatty"], case_input, tmp_path / "out")
    assert result.stdout_bytes == 200_000 and len(result.stdout_tail) == 64 * 1024
    assert result.stderr_tail == "oops"


@pytest.mark.parametrize("name", ["no-user", "user-root", "user-toor"])
def test_root_images_are_refused(
    executor: DockerExecutor, tags: Tags, case_input: Path, tmp_path: Path, name: str
) -> None:
    with pytest.raises(ExecutionError) as err:
        run(executor, tags[name], case_input, tmp_path / "out")
    failure = err.value.failure
    assert failure.kind is FailureKind.image_error and not failure.platform_caused
    assert "root" in failure.message


def test_missing_image_is_a_platform_error(
    executor: DockerExecutor, case_input: Path, tmp_path: Path
) -> None:
    with pytest.raises(ExecutionError) as err:
        run(executor, "heldout-test/does-not-exist:latest", case_input, tmp_path / "out")
    assert err.value.failure.platform_caused


def test_redelivered_task_replaces_its_own_container(
    executor: DockerExecutor, tags: Tags, case_input: Path, client: docker.DockerClient
) -> None:
    spec = RunSpec(
        image=tags["well-behaved"],
        job_id="redo",
        attempt=3,
        inputs=case_input,
        limits=Limits(),
        labels=LABELS,
    )
    first = executor.provision(spec)
    second = executor.provision(spec)  # the same task delivered again
    try:
        assert first.container and second.container
        assert first.container.id != second.container.id
        names = [c.name for c in client.containers.list(all=True, filters={"name": spec.name})]
        assert names == [spec.name]
        assert executor.execute(second).failure is None
    finally:
        executor.deprovision(second)
        executor.deprovision(first)  # idempotent on what the second provision removed


def test_cleanup_stale_removes_a_crashed_workers_leftovers(
    executor: DockerExecutor, tags: Tags, case_input: Path, client: docker.DockerClient
) -> None:
    specs = [
        RunSpec(
            image=tags["infinite-loop"],
            job_id="crashed",
            attempt=1,
            index=i,
            inputs=case_input,
            limits=Limits(),
            scratch=True,
            labels=LABELS,
        )
        for i in range(2)
    ]
    for spec in specs:
        handle = executor.provision(spec)
        assert handle.container is not None
        handle.container.start()  # then the worker "dies": no execute, no deprovision
    assert len(mounts_under(executor.work_root)) == 4
    other = executor.provision(
        RunSpec(
            image=tags["well-behaved"],
            job_id="other",
            attempt=1,
            inputs=case_input,
            limits=Limits(),
            labels=LABELS,
        )
    )
    try:
        removed = executor.cleanup_stale({LABEL_JOB: "crashed"})
        assert sorted(removed) == sorted(s.name for s in specs)
        assert client.containers.list(all=True, filters={"label": f"{LABEL_JOB}=crashed"}) == []
        # Only the other job's output mount remains.
        assert other.output and mounts_under(executor.work_root) == [other.output.path]
    finally:
        executor.deprovision(other)


def test_sized_dir_caps_and_cleans_up(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("loop mounts need root")
    with SizedDir(tmp_path / "d", 4, allow_fallback=False) as d:
        assert d.mounted and mounts_under(tmp_path) == [d.path]
        with pytest.raises(OSError), open(d.path / "big", "wb") as f:
            for _ in range(8):
                f.write(b"x" * 2**20)
                f.flush()
        assert d.is_full()
    assert mounts_under(tmp_path) == [] and not (tmp_path / "d").exists()
    assert not (tmp_path / "d.img").exists()


def test_sized_dir_fallback_checks_size_afterwards(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from worker.executor import sized_dir

    real_run = sized_dir._run

    def no_mount(*cmd: str) -> None:
        if cmd[0] == "mount":
            raise subprocess.CalledProcessError(32, cmd, stderr=b"mount: permission denied")
        real_run(*cmd)

    monkeypatch.setattr(sized_dir, "_run", no_mount)
    with SizedDir(tmp_path / "d", 1, allow_fallback=True) as d:
        assert not d.mounted and d.path.is_dir()
        (d.path / "small").write_bytes(b"x" * 1000)
        assert not d.is_full()
        (d.path / "big").write_bytes(b"x" * 2 * 2**20)
        assert d.is_full()
    assert not (tmp_path / "d").exists()
