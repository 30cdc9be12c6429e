"""Server memory during a large streamed upload.

Starts `heldout server` (SQLite, embedded Redis) in a scratch data directory, uploads a file
of --gb gigabytes through the CLI's client in 8 MiB chunks, and samples the server's RSS
every 0.1 s. Prints the RSS before, the peak during, and the throughput.

    .venv/bin/python bench/bench_upload.py --gb 2
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]


def rss_mb(pid: int) -> float:
    total = 0
    for p in [pid, *_children(pid)]:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gb", type=float, default=2.0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="heldout-bench-") as tmp:
        data = Path(tmp) / "d"
        env = {k: v for k, v in os.environ.items() if not k.startswith("HELDOUT_")}
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        env.update(
            HELDOUT_DATA_DIR=str(data),
            HELDOUT_API_URL=f"http://127.0.0.1:{port}",
            PYTHONPATH=str(ROOT),
        )
        cli = [sys.executable, "-m", "server.cli"]
        token = subprocess.run(
            [*cli, "token", "create", "--user", "bench", "--json"],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        import json

        env["HELDOUT_TOKEN"] = json.loads(token)["token"]
        server = subprocess.Popen(
            [*cli, "server", "--port", str(port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            for _ in range(100):
                try:
                    httpx.get(f"http://127.0.0.1:{port}/api/v1/health")
                    break
                except httpx.TransportError:
                    time.sleep(0.1)
            big = Path(tmp) / "image.tar"
            size = int(args.gb * 1024**3)
            with big.open("wb") as f:  # random-ish content, written in blocks
                block = os.urandom(8 * 1024 * 1024)
                written = 0
                while written < size:
                    n = min(len(block), size - written)
                    f.write(block[:n])
                    written += n
            before = rss_mb(server.pid)
            peak = [before]
            stop = threading.Event()

            def sample() -> None:
                while not stop.is_set():
                    peak[0] = max(peak[0], rss_mb(server.pid))
                    time.sleep(0.1)

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            os.environ.update({k: v for k, v in env.items() if k.startswith("HELDOUT_")})
            from server.client import Client
            from server.config import Settings

            start = time.monotonic()
            up = Client(Settings()).upload(big)
            elapsed = time.monotonic() - start
            stop.set()
            sampler.join()
            assert up["status"] == "complete", up
            print(
                f"upload of {size / 1024**3:.2f} GiB: {elapsed:.1f} s "
                f"({size / 1024**2 / elapsed:.0f} MiB/s, hashing on both sides included)"
            )
            print(
                f"server RSS: {before:.0f} MiB before, peak {peak[0]:.0f} MiB during "
                f"(+{peak[0] - before:.0f} MiB)"
            )
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=20)
            pid = data / "redis.pid"
            if pid.exists():
                os.kill(int(pid.read_text()), signal.SIGTERM)


if __name__ == "__main__":
    main()
