"""Platform overhead of the Docker executor per case: per-case mode vs batch mode.

Overhead = a case's wall time on the worker (staging, provision, start, wait, collect,
deprovision, output validation) minus the time inside the algorithm, read from the
container's State.StartedAt/FinishedAt. The algorithm is a no-op that reads each case's
.mha header and writes the two STOIC outputs. Cases run in parallel up to the worker's
concurrency (2 by default); batch mode splits the cases into one batch per slot.

    .venv/bin/python -m bench.bench_executor [--cases 200] [--concurrency 2]

Needs root (loop-mounted /output) and a Docker engine on this host.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import docker

from server.challenges.schemas import Interface, InterfaceKind, Limits
from tests.support import images as im
from worker.executor.base import RunSpec
from worker.executor.docker import DockerExecutor, container_options
from worker.outputs import (
    stage_batch_inputs,
    stage_case_inputs,
    validate_batch_outputs,
    validate_outputs,
)

T = TypeVar("T")
CT = Interface(slug="ct", kind=InterfaceKind.image)
OUTPUTS = [
    Interface(slug=s, kind=InterfaceKind.json, minimum=0, maximum=1) for s in im.STOIC_OUTPUTS
]
LIMITS = Limits(wall_time_s=120, memory_mb=512, cpus=1, output_mb=64, tmp_mb=64)


@dataclass
class Timing:
    wall_s: float
    inside_s: float
    cases: int
    steps: dict[str, float]

    @property
    def overhead_per_case_s(self) -> float:
        return (self.wall_s - self.inside_s) / self.cases


def _timed(steps: dict[str, float], name: str, fn: Callable[[], T]) -> T:
    t0 = time.perf_counter()
    out = fn()
    steps[name] = steps.get(name, 0.0) + time.perf_counter() - t0
    return out


def run_case(ex: DockerExecutor, image: str, source: Path, work: Path, n: int) -> Timing:
    steps: dict[str, float] = {}
    t0 = time.perf_counter()
    _timed(steps, "stage", lambda: stage_case_inputs(work / "in", [CT], {"ct": source}))
    spec = RunSpec(
        image=image, job_id="bench", attempt=1, index=n, inputs=work / "in", limits=LIMITS
    )
    handle = _timed(steps, "provision", lambda: ex.provision(spec))
    try:
        result = _timed(steps, "execute", lambda: ex.execute(handle))
        result = _timed(steps, "collect", lambda: ex.collect(handle, result, work / "out"))
    finally:
        _timed(steps, "deprovision", lambda: ex.deprovision(handle))
    checked = _timed(steps, "validate", lambda: validate_outputs(work / "out", OUTPUTS))
    assert result.failure is None and checked.ok, (result, checked)
    steps["execute"] -= result.duration_s
    return Timing(time.perf_counter() - t0, result.duration_s, 1, steps)


def bare_case(client: docker.DockerClient, image: str, source: Path, work: Path, n: int) -> float:
    """The engine alone: the same container options heldout uses (docker.container_options),
    /input staged the same way, /output a plain directory; create, start, wait, remove."""
    from docker.types import Mount

    t0 = time.perf_counter()
    stage_case_inputs(work / "in", [CT], {"ct": source})
    out = work / "out"
    out.mkdir(parents=True)
    out.chmod(0o777)
    spec = RunSpec(
        image=image, job_id="bare", attempt=1, index=n, inputs=work / "in", limits=LIMITS
    )
    mounts = [
        Mount("/input", str((work / "in").resolve()), type="bind", read_only=True),
        Mount("/output", str(out.resolve()), type="bind"),
    ]
    opts = container_options(spec, image, mounts, rootfs_quota=False)
    opts["name"] = f"heldout-bench-bare-{n}-{time.monotonic_ns()}"
    container = client.containers.create(**opts)
    try:
        container.start()
        status = container.wait(timeout=120)
        assert status["StatusCode"] == 0, container.logs()[-500:]
    finally:
        container.remove(force=True, v=True)
    return time.perf_counter() - t0


def sized_output_cost(root: Path, n: int = 20) -> None:
    """heldout's own part of a case's /output: provision + removal of the size-capped
    directory, from the pool (formatted ahead) and fresh (mkfs on the case's path)."""
    from worker.executor.sized_dir import ImagePool, SizedDir

    pool = ImagePool(root / "pool", per_size=2)
    pool.take(LIMITS.output_mb)
    for label, use in (("fresh (mkfs per case)", None), ("pooled (formatted ahead)", pool)):
        up, down = [], []
        for i in range(n):
            if use is not None:
                deadline = time.monotonic() + 10
                while use.ready_count(LIMITS.output_mb) == 0 and time.monotonic() < deadline:
                    time.sleep(0.01)  # the pool is ahead of the cases in a real run
            d = SizedDir(root / f"{label[:5]}-{i}" / "output", LIMITS.output_mb, pool=use)
            t0 = time.perf_counter()
            d.create()
            t1 = time.perf_counter()
            d.remove()
            up.append(t1 - t0)
            down.append(time.perf_counter() - t1)
        print(f"  /output {label:26s} provision {statistics.median(up) * 1000:6.1f} ms, "
              f"removal {statistics.median(down) * 1000:6.1f} ms (median of {n})")  # fmt: skip
    pool.close()


def run_batch(ex: DockerExecutor, image: str, cases: dict[str, Path], work: Path, n: int) -> Timing:
    steps: dict[str, float] = {}
    t0 = time.perf_counter()
    _timed(
        steps,
        "stage",
        lambda: stage_batch_inputs(work / "in", [CT], {c: {"ct": p} for c, p in cases.items()}),
    )
    spec = RunSpec(image=image, job_id="bench-batch", attempt=1, index=n, inputs=work / "in",
                   limits=LIMITS)  # fmt: skip
    result = ex.run(spec, work / "out")
    steps["run (provision..deprovision)"] = time.perf_counter() - t0 - steps["stage"]
    per_case = _timed(
        steps, "validate", lambda: validate_batch_outputs(work / "out", list(cases), OUTPUTS)
    )
    assert result.failure is None and all(o.ok for o in per_case.values())
    steps["run (provision..deprovision)"] -= result.duration_s
    return Timing(time.perf_counter() - t0, result.duration_s, len(cases), steps)


def report(name: str, timings: list[Timing], total_wall_s: float, n_cases: int) -> None:
    per_case = [t.overhead_per_case_s for t in timings]
    inside = sum(t.inside_s for t in timings)
    overhead = sum(t.wall_s - t.inside_s for t in timings)
    print(f"\n== {name}: {n_cases} cases, {len(timings)} containers")
    rate = n_cases / total_wall_s
    print(f"  wall time, all cases          {total_wall_s:8.2f} s  ({rate:.1f} cases/s)")
    print(
        f"  inside the algorithm (sum)    {inside:8.2f} s  ({inside / n_cases * 1000:.1f} ms/case)"
    )
    per = overhead / n_cases * 1000
    print(f"  platform overhead (sum)       {overhead:8.2f} s  ({per:.1f} ms/case)")
    if len(per_case) > 1:
        q = statistics.quantiles(per_case, n=20)
        print(
            f"  overhead per container        median {statistics.median(per_case) * 1000:.0f} ms,"
            f" p95 {q[18] * 1000:.0f} ms, max {max(per_case) * 1000:.0f} ms"
        )
    steps: dict[str, float] = {}
    for t in timings:
        for k, v in t.steps.items():
            steps[k] = steps.get(k, 0.0) + v
    print("  where the overhead goes (ms/case, summed over parallel slots):")
    for k, v in steps.items():
        print(f"    {k:30s} {v / n_cases * 1000:8.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=2)
    args = parser.parse_args()

    client = docker.from_env(timeout=300)
    image = client.images.get(im.build_image(client, "bench-noop", im.NOOP)).id
    info = client.info()
    print(
        f"engine {info['ServerVersion']}, {info['NCPU']} CPUs, storage {info['Driver']}, "
        f"cgroup v{info.get('CgroupVersion', '?')}; image {image[:19]}"
    )
    with tempfile.TemporaryDirectory(prefix="heldout-bench-") as tmp:
        root = Path(tmp)
        ex = DockerExecutor(client, root / "work", image_pool=args.concurrency)
        cases = {
            f"case-{i:04d}": im.write_mha(root / "dataset" / f"{i:04d}.mha", age=f"0{20 + i % 70}Y")
            for i in range(args.cases)
        }
        print("\n== heldout's size-capped /output alone")
        sized_output_cost(root / "sized")
        # Warm-up: first container start pays for page cache and the engine's lazy init.
        run_case(ex, image, next(iter(cases.values())), root / "warmup", 999_999)

        t0 = time.perf_counter()
        with ThreadPoolExecutor(args.concurrency) as pool:
            per_case = list(
                pool.map(
                    lambda item: run_case(
                        ex, image, item[1][1], root / "case" / item[1][0], item[0]
                    ),
                    enumerate(cases.items()),
                )
            )
        heldout_wall = time.perf_counter() - t0
        report("per-case mode", per_case, heldout_wall, args.cases)

        # The same cases through a bare engine run with the same flags, in the same run.
        bare_case(client, image, next(iter(cases.values())), root / "bare-warmup", 999_998)
        t0 = time.perf_counter()
        with ThreadPoolExecutor(args.concurrency) as pool:
            bare = list(
                pool.map(
                    lambda item: bare_case(
                        client, image, item[1][1], root / "bare" / item[1][0], item[0]
                    ),
                    enumerate(cases.items()),
                )
            )
        bare_wall = time.perf_counter() - t0
        h_med = statistics.median(t.wall_s for t in per_case)
        b_med = statistics.median(bare)
        print("\n== per-case mode vs a bare engine run (same flags, same cases, same slots)")
        print(f"  wall, all cases               heldout {heldout_wall:7.2f} s, "
              f"bare {bare_wall:7.2f} s")  # fmt: skip
        print(f"  per case (median)             heldout {h_med * 1000:7.1f} ms, "
              f"bare {b_med * 1000:7.1f} ms")  # fmt: skip
        extra = (heldout_wall - bare_wall) / args.cases * 1000
        print(f"  heldout's own cost per case   {(h_med - b_med) * 1000:7.1f} ms (median), "
              f"{extra:7.1f} ms (wall / cases)")  # fmt: skip
        ratio = heldout_wall / bare_wall
        print(f"  ratio heldout / bare          {ratio:.2f} (target <= 1.1: "
              f"{'met' if ratio <= 1.1 else 'MISSED'})")  # fmt: skip

        names = list(cases)
        batches = [names[i :: args.concurrency] for i in range(args.concurrency)]
        t0 = time.perf_counter()
        with ThreadPoolExecutor(args.concurrency) as pool:
            batch = list(
                pool.map(
                    lambda item: run_batch(
                        ex,
                        image,
                        {c: cases[c] for c in item[1]},
                        root / "batch" / str(item[0]),
                        item[0],
                    ),
                    enumerate(batches),
                )
            )
        report("batch mode", batch, time.perf_counter() - t0, args.cases)


if __name__ == "__main__":
    main()
