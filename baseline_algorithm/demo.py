"""`heldout demo`: a STOIC-style challenge run end to end on this machine.

It generates synthetic chest CTs, creates a challenge from a bundle with a T2 qualification
phase and a T3 final phase, starts a heldout server and worker (SQLite and an embedded Redis
under the demo directory), builds the baseline, submits it to both phases as a participant
would (an image archive through the upload API; a git repository at a tag), follows both
submissions and prints the leaderboards with their confidence intervals.

Needs a running Docker engine and heldout's base images (`scripts/demo` sets both up).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from baseline_algorithm import build

ROOT = Path(__file__).resolve().parent.parent
CHALLENGE = "stoic-demo"
# `heldout status` exit codes of a submission that ended: succeeded, failed, cancelled.
FINISHED = (0, 1, 3)

BUNDLE = """\
version: 1
slug: {challenge}
title: STOIC-style demo (synthetic chest CT)
description: Predict COVID-19 and severe COVID-19 from a chest CT, as STOIC2021 did.
datasets:
  - {{slug: public-train, path: datasets/public-train, public: true,
     title: Public training set}}
  - {{slug: private-train, path: datasets/private-train, title: Sequestered training set}}
  - {{slug: test, path: datasets/test, title: Sequestered test set}}
  - {{slug: canary, path: datasets/canary, public: true, title: Public check cases}}
phases:
  - slug: qualification
    title: Qualification (algorithm images)
    kind: algorithm
    test_dataset: test
    canary_dataset: canary
    inputs: &inputs [{{slug: ct, kind: image, extension: .mha}}]
    outputs: &outputs
      - {{slug: probability-covid-19, kind: json, value_type: number, minimum: 0, maximum: 1}}
      - {{slug: probability-severe-covid-19, kind: json, value_type: number, minimum: 0,
         maximum: 1}}
    limits: {{wall_time_s: 300, memory_mb: 2048, cpus: 1, pids: 256}}
    rules: {{max_submissions: 3, window_hours: 24}}
    metrics: &metrics
      primary: auc-severity
      metrics:
        - {{name: auc-severity, kind: auc, output: probability-severe-covid-19,
           label: probSevere, subset_label: probCOVID, subset_value: 1}}
        - {{name: auc-covid, kind: auc, output: probability-covid-19, label: probCOVID}}
  - slug: final
    title: Final (codebases trained on sequestered data)
    kind: codebase
    training_dataset: private-train
    test_dataset: test
    batch_mode: true
    inputs: *inputs
    outputs: *outputs
    limits: {{wall_time_s: 60, memory_mb: 2048, cpus: 1, pids: 256}}
    training_limits: {{wall_time_s: 1200, memory_mb: 4096, cpus: 2, pids: 1024,
                      scratch_mb: 2048, tmp_mb: 1024, shm_mb: 512}}
    rules: {{single_shot: true, allow_renounce: true}}
    metrics: *metrics
"""


def say(message: str) -> None:
    print(f"\n== {message}", flush=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Platform:
    """A heldout server and worker as subprocesses, driven through the `heldout` CLI."""

    def __init__(self, root: Path, concurrency: int) -> None:
        self.root = root
        port = _free_port()
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("HELDOUT_")}
        self.env.update(
            HELDOUT_DATA_DIR=str(root / "platform"),
            HELDOUT_API_URL=f"http://127.0.0.1:{port}",
            HELDOUT_ALLOWED_LOCAL_REPO_ROOTS=json.dumps([str(root / "repos")]),
            HELDOUT_WORKER_CONCURRENCY=str(concurrency),
            HELDOUT_BUILD_NETWORK="none",
            # The organizers provide the baseline's runtime image; codebases build FROM it.
            HELDOUT_ALLOWED_BASE_IMAGES=json.dumps(
                ["heldout/base:bookworm", "heldout/python:bookworm", build.RUNTIME_IMAGE]
            ),
            PYTHONPATH=str(ROOT),
            COLUMNS="120",  # the CLI's tables, captured here, would wrap at 80
        )
        self.port = port
        self.procs: list[subprocess.Popen[bytes]] = []

    def cli(
        self,
        *args: str,
        token: str | None = None,
        capture: bool = False,
        allow: tuple[int, ...] = (0,),
    ) -> str:
        env = dict(self.env)
        if token:
            env["HELDOUT_TOKEN"] = token
        proc = subprocess.run(
            [sys.executable, "-m", "server.cli", *args],
            env=env,
            cwd=ROOT,
            text=True,
            capture_output=capture,
            stdin=subprocess.DEVNULL,
        )
        if proc.returncode not in allow:
            detail = (proc.stderr or "") if capture else ""
            raise SystemExit(f"`heldout {' '.join(args)}` failed: {detail.strip()}")
        return proc.stdout or ""

    def start(self) -> None:
        logs = self.root / "logs"
        logs.mkdir(exist_ok=True)
        for name, args in (
            ("server", ["server", "--port", str(self.port)]),
            ("worker", ["worker"]),
        ):
            out = (logs / f"{name}.log").open("wb")
            self.procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "server.cli", *args],
                    env=self.env,
                    cwd=ROOT,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
            if name == "server":
                self._wait_for_server()
        print(f"server on 127.0.0.1:{self.port}, worker running; logs in {logs}")

    def _wait_for_server(self) -> None:
        import httpx

        for _ in range(300):
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/api/v1/health").status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.2)
        raise SystemExit(f"the server did not start; see {self.root / 'logs' / 'server.log'}")

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
        pid = self.root / "platform" / "redis.pid"
        if pid.exists():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid.read_text()), signal.SIGTERM)


def make_datasets(root: Path, args: argparse.Namespace) -> None:
    from baseline_algorithm import synthetic

    plan: dict[str, tuple[int, int, synthetic.Split]] = {
        "public-train": (args.public_train, 12, "train"),
        "private-train": (args.private_train, 11, "train"),
        "test": (args.test, 21, "test"),
        "canary": (2, 99, "test"),
    }
    for name, (n, seed, split) in plan.items():
        dest = root / "datasets" / name
        params = json.dumps({"cases": n, "size": args.size, "seed": seed, "split": split})
        stamp = dest.parent / f"{name}.params.json"
        if stamp.exists() and stamp.read_text() == params and (dest / "labels.csv").exists():
            continue  # the same data as last run
        shutil.rmtree(dest, ignore_errors=True)
        synthetic.generate_dataset(dest, n, size=args.size, seed=seed, split=split)
        stamp.write_text(params)
    sizes = ", ".join(f"{k}: {v[0]}" for k, v in plan.items())
    print(f"synthetic chest CTs ({args.size}² in-plane, anisotropic spacing): {sizes}")


def runtime_image(root: Path) -> None:
    started = time.monotonic()
    wheels = build.download_wheels(root / "cache" / "wheels")
    build.ensure_runtime(wheels, root / "cache" / "ctx-runtime")
    print(
        f"{build.RUNTIME_IMAGE}: ready in {time.monotonic() - started:.0f} s "
        "(torch, SimpleITK, numpy)"
    )


def train_args(args: argparse.Namespace) -> list[str]:
    return [
        "--cube",
        str(args.cube),
        "--epochs",
        str(args.epochs),
        "--batch-size",
        "8",
        "--seed",
        "0",
    ]


def codebase_repo(root: Path, args: argparse.Namespace) -> Path:
    repo = root / "repos" / "stoic-baseline"
    if repo.exists():
        shutil.rmtree(repo)
    build.write_codebase(repo, train_args=train_args(args))
    git = [
        "git",
        "-c",
        "user.name=STOIC baseline",
        "-c",
        "user.email=baseline@heldout.invalid",
        "-c",
        "init.defaultBranch=main",
    ]
    for cmd in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "baseline"], ["tag", "v1"]):
        subprocess.run([*git, *cmd], cwd=repo, check=True)
    return repo


def algorithm_archive(root: Path, args: argparse.Namespace) -> Path:
    """What a participant does for T2: train on the public data, bake the weights into an
    image, `docker save` it."""
    from baseline_algorithm import train

    artifact = root / "cache" / "artifact"
    shutil.rmtree(artifact, ignore_errors=True)
    data = root / "datasets" / "public-train"
    started = time.monotonic()
    code = train.main(
        [
            "--data-dir",
            str(data / "images" / "ct"),
            "--reference",
            str(data / "labels.csv"),
            "--output",
            str(artifact),
            "--scratch",
            str(root / "cache" / "scratch"),
            *train_args(args),
            "--device",
            "cpu",
        ]
    )
    if code != 0:
        raise SystemExit("local training of the baseline failed")
    print(f"trained on the public training set in {time.monotonic() - started:.0f} s")
    ctx = build.assemble_context(
        "algorithm", root / "cache" / "ctx-algorithm", artifact_dir=artifact
    )
    tag = "stoic-baseline/algorithm:v1"
    build.build_image(ctx, tag)
    archive = root / "cache" / "baseline-algorithm.tar"
    with archive.open("wb") as f:
        subprocess.run(["docker", "save", tag], stdout=f, check=True)
    print(f"{tag}: saved as {archive.name} ({archive.stat().st_size / 1e6:.0f} MB)")
    return archive


def follow(
    platform: Platform, token: str, subs: dict[str, int], timeout_s: float
) -> dict[str, Any]:
    """Print every state change of the submissions until all have ended."""
    seen = {name: 0 for name in subs}
    final: dict[str, Any] = {}
    deadline = time.monotonic() + timeout_s
    while len(final) < len(subs) and time.monotonic() < deadline:
        for name, sid in subs.items():
            if name in final:
                continue
            sub = json.loads(
                platform.cli(
                    "status",
                    str(sid),
                    "--no-follow",
                    "--json",
                    token=token,
                    capture=True,
                    allow=FINISHED,
                )
            )
            for t in sub["transitions"][seen[name] :]:
                note = f" ({t['note']})" if t["note"] else ""
                queue = sub.get("queue")
                where = (
                    f" [queue position {queue['position']}]"
                    if queue and t is sub["transitions"][-1]
                    else ""
                )
                print(f"  {t['at'][11:19]}  {name:13} {t['to_status']}{note}{where}", flush=True)
            seen[name] = len(sub["transitions"])
            if sub["status"] in ("succeeded", "failed", "cancelled"):
                final[name] = sub
        time.sleep(2)
    return final


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="heldout demo",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--dir", type=Path, default=Path(".heldout-demo"))
    ap.add_argument("--public-train", type=int, default=120)
    ap.add_argument("--private-train", type=int, default=200)
    ap.add_argument("--test", type=int, default=60)
    ap.add_argument("--size", type=int, default=64, help="in-plane voxels of the synthetic CTs")
    ap.add_argument("--cube", type=int, default=32, help="network input cube (STOIC: 240)")
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--concurrency", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=1800)
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    root = args.dir.resolve()
    started = time.monotonic()
    # Platform state starts fresh each run; data, wheels and images are reused.
    shutil.rmtree(root / "platform", ignore_errors=True)
    for sub in ("datasets", "cache", "repos"):
        (root / sub).mkdir(parents=True, exist_ok=True)

    say("1/6 data: synthetic chest CTs")
    make_datasets(root, args)
    (root / "bundle.yaml").write_text(BUNDLE.format(challenge=CHALLENGE))

    say("2/6 platform: server, worker, challenge")
    platform = Platform(root, args.concurrency)
    try:
        admin = json.loads(
            platform.cli(
                # The demo's platform is new: its first token creates the database.
                "token", "create", "--user", "organizer", "--admin", "--create", "--json",
                capture=True,
            )
        )["token"]
        platform.start()
        print(
            platform.cli(
                "challenge", "apply", str(root / "bundle.yaml"), token=admin, capture=True
            ).rstrip()
        )
        team = json.loads(
            platform.cli("token", "create", "--user", "stoic-baseline", "--json", capture=True)
        )["token"]

        say("3/6 the baseline's runtime image (organizer-provided base for codebases)")
        runtime_image(root)

        say("4/6 T3: submit the baseline codebase (git repository, tag v1) to the final phase")
        repo = codebase_repo(root, args)
        t3 = json.loads(
            platform.cli(
                "submit",
                CHALLENGE,
                "final",
                "--repo",
                f"file://{repo}",
                "--ref",
                "v1",
                "--json",
                token=team,
                capture=True,
            )
        )
        print(f"submission {t3['id']}: {t3['status']}, commit {t3['commit_sha'][:12]}")

        say("5/6 T2: train on public data, save the image, upload it to the qualification phase")
        archive = algorithm_archive(root, args)
        t2 = json.loads(
            platform.cli(
                "submit",
                CHALLENGE,
                "qualification",
                "--image",
                str(archive),
                "--json",
                token=team,
                capture=True,
            )
        )
        print(f"submission {t2['id']}: {t2['status']}")

        say("6/6 following both submissions")
        final = follow(platform, team, {"qualification": t2["id"], "final": t3["id"]}, args.timeout)
        ok = len(final) == 2 and all(s["status"] == "succeeded" for s in final.values())
        for name, sub in final.items():
            if sub["status"] != "succeeded":
                print(f"{name}: {sub['status']}: {sub['failure_code']}: {sub['failure_message']}")
        for phase in ("qualification", "final"):
            print(platform.cli("leaderboard", CHALLENGE, phase, token=team, capture=True))
        # The organizers' analysis report (rank uncertainty, robustness, figures, CSV).
        print(
            platform.cli(
                "report", CHALLENGE, "--out", str(root / "report"), token=admin, capture=True
            ).rstrip()
        )
        logs = platform.cli(
            "status", str(t3["id"]), "--no-follow", token=team, capture=True, allow=FINISHED
        )
        print(logs.rstrip())
        print(
            f"\ndemo finished in {time.monotonic() - started:.0f} s; "
            f"the platform's data is under {root / 'platform'}"
        )
        return 0 if ok else 1
    finally:
        platform.stop()


if __name__ == "__main__":
    sys.exit(main())
