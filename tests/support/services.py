"""Test-owned Redis, PostgreSQL and Docker engine instances that a fault test may restart,
flush, stop or kill without touching the shared services: each on a free loopback port or
its own socket, its files in a temporary directory that goes with it."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import docker
import redis

from tests.support.workers import free_port, wait_for

PG_BIN = Path("/usr/lib/postgresql/15/bin")


class RedisServer:
    """redis-server without persistence (no RDB, no AOF): a restart starts it empty, as a
    node that lost its memory does."""

    def __init__(self) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="heldout-redis-"))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        log = open(self.dir / "redis.log", "ab")  # noqa: SIM115 - lives with proc
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--save", "",
                "--appendonly", "no",
                "--dir", str(self.dir),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        wait_for(self._answers, 20, f"redis-server on port {self.port}", interval=0.1)

    def _answers(self) -> bool:
        try:
            return bool(redis.Redis(port=self.port, socket_timeout=1).ping())
        except redis.RedisError:
            return False

    def stop(self) -> None:
        """Kill it (SIGKILL): whatever it held is gone."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None

    def restart(self, down_s: float = 0.0) -> None:
        self.stop()
        time.sleep(down_s)
        self.start()

    def flush(self) -> None:
        redis.Redis(port=self.port).flushall()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@contextmanager
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.close()


class PostgresCluster:
    """A throwaway PostgreSQL 15 cluster (initdb + pg_ctl as user postgres) with the role
    heldout, trusted on loopback, and its own database heldout."""

    def __init__(self) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="heldout-pg-"))
        self.data = self.dir / "data"
        shutil.chown(self.dir, "postgres", "postgres")

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://heldout@127.0.0.1:{self.port}/heldout"

    def _as_postgres(self, *args: str) -> None:
        subprocess.run(
            ["runuser", "-u", "postgres", "--", *args],
            check=True,
            cwd=self.dir,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

    def init(self) -> None:
        self._as_postgres(
            str(PG_BIN / "initdb"), "-D", str(self.data), "-U", "heldout", "-A", "trust", "-N"
        )
        self.start()
        self._as_postgres(
            str(PG_BIN / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "heldout",
            "heldout",
        )  # fmt: skip

    def start(self) -> None:
        opts = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._as_postgres(
            str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.dir / "pg.log"),
            "-o", opts, "-w", "start",
        )  # fmt: skip

    def stop(self, mode: str = "fast") -> None:
        """Stop it; "fast" ends every session (clients see their connections drop)."""
        self._as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    def restart(self, down_s: float = 0.0) -> None:
        self.stop()
        time.sleep(down_s)
        self.start()

    def close(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):  # already stopped
            self.stop("immediate")
        shutil.rmtree(self.dir, ignore_errors=True)


@contextmanager
def postgres_cluster() -> Iterator[PostgresCluster]:
    cluster = PostgresCluster()
    try:
        cluster.init()
        yield cluster
    finally:
        cluster.close()


class DockerEngine:
    """A second, test-owned dockerd (its own containerd, data root and socket) that a fault
    test may SIGKILL and start again, never the shared engine. No iptables: the worker runs
    every container with network "none". The exec root lives under a short path, since
    containerd's sockets under it must fit the 108-character limit.

    It gets a bridge of its own: a dockerd started with `--bridge=none` deletes the host's
    `docker0`, which the shared engine's builds need (seen: every build after it failed with
    "could not find bridge docker0")."""

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="heldout-dockerd-"))
        # A configuration file of its own: without --config-file dockerd reads the shared
        # engine's /etc/docker/daemon.json, whose hosts or data-root would clash with ours.
        # The runtimes are the shared engine's, so a phase or setting naming runsc runs here.
        self.config = self.dir / "daemon.json"
        self.config.write_text(json.dumps({"runtimes": shared_runtimes(), **(config or {})}))
        self.exec_root = Path(tempfile.mkdtemp(prefix="hd-", dir="/tmp")) / "x"
        self.sock = self.dir / "docker.sock"
        self.proc: subprocess.Popen[bytes] | None = None
        self.bridge = f"hdt{os.getpid() % 100000}"
        subprocess.run(["ip", "link", "add", self.bridge, "type", "bridge"], check=True)
        net = 16 + os.getpid() % 200
        subprocess.run(["ip", "addr", "add", f"10.254.{net}.1/24", "dev", self.bridge], check=True)

    @property
    def host(self) -> str:
        return f"unix://{self.sock}"

    def client(self, timeout: int = 60) -> docker.DockerClient:
        return docker.DockerClient(base_url=self.host, timeout=timeout)

    def start(self) -> None:
        log = open(self.dir / "dockerd.log", "ab")  # noqa: SIM115 - lives with proc
        self.proc = subprocess.Popen(
            [
                "dockerd",
                "--host", self.host,
                "--data-root", str(self.dir / "root"),
                "--exec-root", str(self.exec_root),
                "--pidfile", str(self.dir / "dockerd.pid"),
                "--config-file", str(self.config),
                f"--bridge={self.bridge}", "--iptables=false", "--ip-masq=false",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        wait_for(self._answers, 60, f"the test-owned dockerd on {self.sock}", interval=0.2)

    def _answers(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            tail = (self.dir / "dockerd.log").read_text(errors="replace")[-2000:]
            raise AssertionError(f"dockerd exited ({self.proc.returncode}):\n{tail}")
        try:
            return bool(self.client(timeout=5).ping())
        except docker.errors.DockerException:
            return False

    def kill(self) -> None:
        """SIGKILL dockerd alone, as a crash does: its containerd and shims stay."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None
        # Its containerd dies with it (parent-death signal) but may linger unreaped as a
        # zombie here, where PID 1 reaps slowly; a dockerd started meanwhile takes the pid
        # file's zombie for a live containerd and times out waiting on its socket. Where
        # systemd reaps at once the pid file names a dead process, as it does after this.
        pidfile = self.exec_root / "containerd" / "containerd.pid"
        with contextlib.suppress(OSError, ValueError):
            pid = int(pidfile.read_text())
            wait_for(lambda: _gone_or_zombie(pid), 20, f"containerd {pid} to exit", interval=0.1)
            pidfile.unlink()

    def restart(self, down_s: float = 0.0) -> None:
        self.kill()
        time.sleep(down_s)
        self.start()

    def load(self, *tags: str) -> None:
        """Copy images from the shared engine into this one (docker save | docker load)."""
        save = subprocess.Popen(["docker", "save", *tags], stdout=subprocess.PIPE)
        subprocess.run(
            ["docker", "-H", self.host, "load", "-q"],
            stdin=save.stdout,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        assert save.wait() == 0, f"docker save {tags} failed"

    def mounts(self) -> list[str]:
        """Mount points left under this engine's directories (from /proc/mounts)."""
        with open("/proc/mounts") as f:
            points = [line.split()[1] for line in f]
        roots = (str(self.dir), str(self.exec_root.parent))
        return [p for p in points if p.startswith(roots)]

    def close(self) -> None:
        """Remove every container, stop dockerd (and its containerd), kill what is left,
        unmount anything under its directories and delete them."""
        with contextlib.suppress(docker.errors.DockerException):
            if self.proc is not None and self.proc.poll() is None:
                client = self.client(timeout=30)
                for c in client.containers.list(all=True):
                    c.remove(force=True, v=True)
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None
        # containerd (and any shim) of this engine: started by dockerd with our exec root.
        for pid in _pids_mentioning(str(self.exec_root)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for point in sorted(self.mounts(), key=len, reverse=True):
            subprocess.run(["umount", "-l", point], check=False, stderr=subprocess.DEVNULL)
        shutil.rmtree(self.dir, ignore_errors=True)
        shutil.rmtree(self.exec_root.parent, ignore_errors=True)
        subprocess.run(["ip", "link", "del", self.bridge], check=False, capture_output=True)


def shared_runtimes(path: Path = Path("/etc/docker/daemon.json")) -> dict[str, Any]:
    """The runtimes registered with the shared engine (scripts/start-docker.sh adds runsc)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    return dict(json.loads(text).get("runtimes", {})) if text.strip() else {}


def _gone_or_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[0] in ("Z", "X")


def _pids_mentioning(text: str) -> list[int]:
    pids: list[int] = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if text in cmdline:
            pids.append(int(proc.name))
    return pids


@contextmanager
def docker_engine(config: dict[str, Any] | None = None) -> Iterator[DockerEngine]:
    engine = DockerEngine(config)
    try:
        engine.start()
        yield engine
    finally:
        engine.close()
