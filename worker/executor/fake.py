"""A backend without an engine, for unit tests of what drives the executor: the "container"
is a Python function given the staged /input and an empty /output. It goes through the same
interface as the Docker backend (provision → execute → collect → deprovision, cleanup_stale),
so code tested on it is the code that runs on Docker; the sandbox itself is proven only on
the real engine (tests/integration)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from worker.executor.base import Executor, RunResult, RunSpec


@dataclass
class Behaviour:
    """What the fake container does: `write` fills /output from /input, then the run ends
    with these figures (as the engine would report them)."""

    write: Callable[[Path, Path], None] = lambda inputs, output: None
    exit_code: int = 0
    timed_out: bool = False
    oom_killed: bool = False
    stdout: str = ""
    stderr: str = ""


@dataclass
class FakeHandle:
    spec: RunSpec
    output: Path
    removed: bool = False


@dataclass
class FakeExecutor(Executor[FakeHandle]):
    """`behaviour(spec)` picks what each run does (by image, say); `runs` records every spec
    in order and `live` the runs not yet deprovisioned, by name."""

    behaviour: Callable[[RunSpec], Behaviour] = lambda spec: Behaviour()
    runs: list[RunSpec] = field(default_factory=list)
    live: dict[str, FakeHandle] = field(default_factory=dict)

    def provision(self, spec: RunSpec) -> FakeHandle:
        self.live.pop(spec.name, None)  # a leftover of the same name goes first, as on Docker
        handle = FakeHandle(spec, Path(tempfile.mkdtemp(prefix="fake-output-")))
        self.runs.append(spec)
        self.live[spec.name] = handle
        return handle

    def execute(self, handle: FakeHandle) -> RunResult:
        b = self.behaviour(handle.spec)
        b.write(handle.spec.inputs, handle.output)
        return RunResult(
            exit_code=b.exit_code,
            timed_out=b.timed_out,
            oom_killed=b.oom_killed,
            duration_s=0.0,
            limits=handle.spec.limits,
            stdout_tail=b.stdout,
            stderr_tail=b.stderr,
            stdout_bytes=len(b.stdout.encode()),
            stderr_bytes=len(b.stderr.encode()),
        )

    def collect(self, handle: FakeHandle, result: RunResult, dest: Path) -> RunResult:
        shutil.copytree(handle.output, dest, dirs_exist_ok=True)
        return replace(result, output_dir=dest)

    def deprovision(self, handle: FakeHandle) -> None:
        shutil.rmtree(handle.output, ignore_errors=True)
        handle.removed = True
        self.live.pop(handle.spec.name, None)

    def running(self, labels: Mapping[str, str]) -> list[dict[str, str]]:
        return [
            h.spec.all_labels
            for h in self.live.values()
            if all(h.spec.all_labels.get(k) == v for k, v in labels.items())
        ]

    def cleanup_stale(self, labels: Mapping[str, str]) -> list[str]:
        names = [
            name
            for name, h in self.live.items()
            if all(h.spec.all_labels.get(k) == v for k, v in labels.items())
        ]
        for name in names:
            self.deprovision(self.live[name])
        return names
