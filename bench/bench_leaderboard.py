"""Leaderboard and statistics under load, on SQLite and PostgreSQL.

Fills one phase with --results scored submissions from --teams teams through the services
(each team's first submission goes through the worker's recording path and the real
evaluation program; its others are recorded with that evaluation's metrics), starts
`heldout server --workers N` on loopback, and loads the leaderboard and statistics
endpoints at each concurrency for --seconds with a small keep-alive HTTP/1.1 load
generator. Prints req/s, p50, p99, errors (non-200) and the server's RSS per process.

    .venv/bin/python bench/bench_leaderboard.py --quick
    .venv/bin/python bench/bench_leaderboard.py --db sqlite,postgres --workers 2
    (PostgreSQL: --postgres-url, default $HELDOUT_TEST_POSTGRES_URL; its schema is wiped)

Targets (2 cores, --workers 2, 10,000 results): leaderboard at c=64 >= 1,000 req/s and
p99 < 50 ms; no 5xx anywhere; RSS < 300 MB per worker. The load generator shares the
cores with the server, so figures are a lower bound on a quiet machine.

Measured (10,000 results, 200 teams, SQLite, --workers 2, 5 s loads, on 2 cores shared with
other jobs at load average 4-6, so req/s and p99 are noisy; server CPU per request is the
steadier figure):

    leaderboard        c=1               c=16               c=64
    before (d45dc87)   411 req/s 2.17 ms  478 req/s 2.08 ms  526 req/s 2.03 ms  p99 473 ms
    fast lane          494 req/s 1.20 ms  981 req/s 0.92 ms 1538 req/s 0.72 ms  p99 175 ms
    + --no-access-log 1228 req/s 0.64 ms 1365 req/s 0.63 ms 1376 req/s 0.52 ms  p99 149 ms

At 548c1bd (2026-12-04; 10,000 results, --workers 2, 5 s loads, other jobs on the cores):

    leaderboard c=64   SQLite     6764 req/s  p50  7.0 ms  p99  49.0 ms  0.19 ms/req  RSS 169-197 MB
                       PostgreSQL 2653 req/s  p50 17.1 ms  p99 117.6 ms  0.38 ms/req  RSS 181-186 MB
                       PostgreSQL 2347 req/s  p50 24.6 ms  p99  71.7 ms  0.55 ms/req  (no other job)
    (PostgreSQL before the probe read ran in autocommit: 1608 req/s, p50 34 ms, p99 84 ms,
    0.54 ms/req; worker RSS before SimpleITK and matplotlib were loaded lazily: 315-350 MB)
    errors: 0 (no 5xx) at c=1, 16 and 64 on both, leaderboard and statistics.

At ed2a22d (2026-12-08; 10,000 results, --workers 2, 5 s loads, access log on, quiet
machine, a fresh clone), after the hot read stopped pinging its connection at checkout (a
round trip of its own: 163 -> 75 us per read alone) and the lane kept one reader thread
rather than four (fewer contend for the GIL: see server/readers.py), two runs:

    leaderboard c=64   PostgreSQL 4343, 3467 req/s  p99 25.1, 33.3 ms  0.30-0.37 ms/req
                       (the code before, same machine: 2131 req/s, p99 65.9 ms, 0.58 ms/req)
                       SQLite     7871, 8060 req/s  p99 15.4, 15.7 ms  0.19 ms/req
    statistics c=64    PostgreSQL 2630, 2412 req/s  p99 46.8, 48.6 ms
                       SQLite     4244, 4031 req/s  p99 48.0, 40.4 ms
    RSS 165-190 MB per process; errors: 0 (no 5xx) at c=1, 16 and 64 on both.

A no-op ASGI app under the same uvicorn, returning the same 99 KiB, cost 0.14-0.17 ms per
request (0.30 ms with the access log) on 2026-12-04, with other jobs on the cores. On
PostgreSQL the rest of the 2 cores goes to the load generator and the database's backends.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BOARD = "/api/v1/challenges/stoic/phases/qualification/leaderboard"
STATS = BOARD + "/statistics"


def fill(settings: Any, teams: int, results: int, cases: int, work: Path) -> str:
    """The phase, its teams and scored submissions; returns a participant's token."""
    from fastapi.testclient import TestClient

    from server import dispatch
    from server.app import create_app
    from server.challenges.models import Phase
    from server.db import session_scope
    from server.leaderboards import service as leaderboards
    from server.leaderboards.models import Result
    from server.submissions import service as submissions
    from server.submissions.models import Submission
    from server.submissions.schemas import SubmissionCreate
    from server.submissions.states import SubmissionStatus as S
    from tests.support.factories import (
        apply_bundle,
        stoic_bundle,
        stoic_cases,
        submit_blob,
        upload_bytes,
        user_token,
        write_dataset,
    )
    from tests.support.scoring import score

    dispatch.sender = lambda tasks, _broker: None  # no broker: nothing runs the jobs
    all_cases = stoic_cases(cases)
    per_team = max(1, results // teams)
    distinct = min(teams, 12)  # teams whose first submission is evaluated for real
    scored: list[int] = []
    started = time.monotonic()
    with TestClient(create_app(settings)) as api:
        admin = user_token(settings, "admin", admin=True)
        r = apply_bundle(api, admin, stoic_bundle(), {"test": write_dataset(work, all_cases)})
        assert r.status_code == 200, r.text
        token = admin
        for t in range(teams):
            token = user_token(settings, f"team{t:03d}")
            first = submit_blob(api, token).json()["id"]
            if t >= distinct:
                # Recorded with the metrics of an earlier team's evaluation (the real
                # evaluation of every team would take most of the run).
                for step in (S.validating, S.queued, S.inferring, S.evaluating, S.succeeded):
                    with session_scope(settings) as session:
                        sub = session.get(Submission, first)
                        assert sub is not None
                        if sub.status != step.value:
                            submissions.transition(session, sub, step)
                with session_scope(settings) as session:
                    res = (
                        session.query(Result)
                        .filter(Result.submission_id == scored[t % distinct])
                        .one()
                    )
                    sub = session.get(Submission, first)
                    phase = session.get(Phase, res.phase_id)
                    assert sub is not None and phase is not None
                    leaderboards.record(
                        session, sub, phase, res.evaluator_version, res.ground_truth_digest,
                        res.metrics, metrics_version=res.metrics_version,
                    )  # fmt: skip
                source = scored[t % distinct]
            else:
                source = first
            bend = (t % 17) / 17
            outputs = {
                c: {
                    "probability-covid-19": round(0.2 + 0.6 * v["probCOVID"] * (0.5 + bend), 3)
                    % 1.0,
                    "probability-severe-covid-19": round(
                        min(1.0, 0.1 + 0.5 * v["probSevere"] + bend * ((i * 5) % 7) / 10), 3
                    ),
                }
                for i, (c, v) in enumerate(all_cases.items())
            }
            if t < distinct:
                score(settings, first, outputs, work / f"t{t}")
                scored.append(first)
            key = upload_bytes(api, token, f"team {t}".encode())
            with session_scope(settings) as session:
                res = session.query(Result).filter(Result.submission_id == source).one()
                phase = session.get(Phase, res.phase_id)
                assert phase is not None
                from server.accounts import service as accounts

                user = accounts.get_user(session, f"team{t:03d}")
                for _ in range(per_team - 1):
                    sub = submissions.create(
                        session, settings, user, "stoic", "qualification",
                        SubmissionCreate(upload=key),
                    )  # fmt: skip
                    for step in (S.queued, S.inferring, S.evaluating, S.succeeded):
                        submissions.transition(session, sub, step)
                    leaderboards.record(
                        session, sub, phase, res.evaluator_version, res.ground_truth_digest,
                        res.metrics, metrics_version=res.metrics_version,
                    )  # fmt: skip
            if t % 20 == 0:
                print(f"  filled {t + 1}/{teams} teams ({time.monotonic() - started:.0f} s)")
    print(f"filled {teams * per_team} results for {teams} teams in "
          f"{time.monotonic() - started:.0f} s")  # fmt: skip
    return token


class _Conn(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection sending the request again as soon as the whole
    answer is in (no pipelining): a Protocol, not streams, so the client costs little."""

    def __init__(self, request: bytes, until: float, lat: list[float], statuses: list[int]):
        self.request, self.until, self.lat, self.statuses = request, until, lat, statuses
        self.buf = bytearray()
        self.need: int | None = None
        self.status = 0
        self.t0 = 0.0
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self._send()

    def _send(self) -> None:
        self.buf.clear()
        self.need = None
        self.t0 = time.perf_counter()
        self.transport.write(self.request)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.need is None:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buf[:end]).lower()
            self.status = int(head[9:12])
            at = head.find(b"content-length:")
            length = int(head[at + 15 : head.find(b"\r\n", at)]) if at >= 0 else 0
            self.need = end + 4 + length
        if len(self.buf) >= self.need:
            now = time.perf_counter()
            self.lat.append(now - self.t0)
            self.statuses.append(self.status)
            if time.monotonic() < self.until:
                self._send()
            else:
                self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(None)


async def _connections(
    port: int, request: bytes, c: int, until: float
) -> tuple[list[float], list[int]]:
    lat: list[float] = []
    statuses: list[int] = []
    loop = asyncio.get_running_loop()
    conns = []
    for _ in range(c):
        _, conn = await loop.create_connection(
            lambda: _Conn(request, until, lat, statuses), "127.0.0.1", port
        )
        conns.append(conn)
    await asyncio.gather(*(conn.done for conn in conns))
    return lat, statuses


def _client(args: tuple[int, bytes, int, float]) -> tuple[list[float], list[int], float]:
    """One client process: its connections, their latencies and statuses, its CPU seconds."""
    port, request, c, until = args
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    cpu = time.process_time()
    lat, statuses = asyncio.run(_connections(port, request, c, until))
    return lat, statuses, time.process_time() - cpu


def _load(port: int, path: str, token: str, c: int, seconds: float, procs: int) -> dict[str, Any]:
    """`c` connections spread over `procs` client processes (so the client is not one
    Python thread's worth of CPU); returns the figures and the client's own CPU share."""
    import multiprocessing

    request = (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n\r\n"
    ).encode()
    procs = max(1, min(procs, c))
    shares = [c // procs + (1 if i < c % procs else 0) for i in range(procs)]
    t0 = time.monotonic()
    until = t0 + seconds
    with multiprocessing.get_context("fork").Pool(procs) as pool:
        parts = pool.map(_client, [(port, request, n, until) for n in shares])
    wall = time.monotonic() - t0
    lat = sorted(x for part in parts for x in part[0])
    statuses = [s for part in parts for s in part[1]]

    def q(p: float) -> float:
        return lat[min(len(lat) - 1, int(p * len(lat)))] * 1000 if lat else float("nan")

    return {
        "req_s": len(lat) / wall,
        "p50_ms": q(0.50),
        "p99_ms": q(0.99),
        "errors": sum(1 for s in statuses if s != 200),
        "5xx": sum(1 for s in statuses if s >= 500),
        "client_cpu": sum(part[2] for part in parts) / wall,
        "wall_s": wall,
    }


def _rss_mb(pid: int) -> list[float]:
    out = []
    for p in [pid, *_children(pid)]:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    out.append(int(line.split()[1]) / 1024)
        except OSError:
            pass
    return out


def _cpu_s(pid: int) -> float:
    """CPU seconds the server's processes have used (user + system)."""
    total = 0
    for p in [pid, *_children(pid)]:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            pass
    return total / os.sysconf("SC_CLK_TCK")


def _children(pid: int) -> list[int]:
    try:
        kids = [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []
    return [k for kid in kids for k in (kid, *_children(kid))]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_db(db: str, args: argparse.Namespace) -> None:
    from sqlalchemy import text

    from server.config import Settings
    from server.db import get_engine
    from server.embedded import migrate

    with tempfile.TemporaryDirectory(prefix="heldout-bench-lb-") as tmp:
        if args.keep:  # a filled phase kept from an earlier run with the same --keep
            tmp = str(Path(args.keep) / db)
        data = Path(tmp) / "data"
        filled = Path(tmp) / "token"
        data.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("HELDOUT_")}
        path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
        env.update(HELDOUT_DATA_DIR=str(data), HELDOUT_REDIS_URL=args.redis_url,
                   PYTHONPATH=path)  # fmt: skip
        if db == "postgres":
            if not args.postgres_url:
                print("postgres: skipped (no --postgres-url)")
                return
            env["HELDOUT_DATABASE_URL"] = args.postgres_url
            settings = Settings(data_dir=data, database_url=args.postgres_url,
                                redis_url=args.redis_url)  # fmt: skip
            if not filled.exists():
                with get_engine(settings).begin() as conn:
                    conn.execute(text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
        else:
            settings = Settings(data_dir=data, redis_url=args.redis_url)
        migrate(settings)
        if filled.exists():
            token = filled.read_text()
        else:
            token = fill(settings, args.teams, args.results, args.cases, Path(tmp) / "work")
            if args.keep:
                filled.write_text(token)
        get_engine(settings).dispose()
        port = _free_port()
        log = (Path(tmp) / "server.log").open("wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "server.cli", "server", "--port", str(port),
             "--workers", str(args.workers),
             "--access-log" if args.access_log else "--no-access-log"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        try:
            import httpx

            deadline = time.monotonic() + 180
            while True:
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/api/v1/health").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise SystemExit("the server did not start: " + str(Path(tmp) / "server.log"))
                time.sleep(0.2)
            # The first look computes the stored board (once); every later one is served.
            t0 = time.monotonic()
            r = httpx.get(f"http://127.0.0.1:{port}{BOARD}",
                          headers={"Authorization": f"Bearer {token}"}, timeout=300)  # fmt: skip
            assert r.status_code == 200, r.text
            print(f"[{db}] first view (computes the board): {time.monotonic() - t0:.2f} s, "
                  f"{len(r.json()['entries'])} entries, {len(r.content) // 1024} KiB")  # fmt: skip
            for name, path in (("leaderboard", BOARD), ("statistics", STATS)):
                for c in args.concurrency:
                    cpu = _cpu_s(proc.pid)
                    m = _load(port, path, token, c, args.seconds, args.client_procs)
                    served = m["req_s"] * m["wall_s"]
                    cpu_ms = (_cpu_s(proc.pid) - cpu) / max(1.0, served) * 1000
                    rss = _rss_mb(proc.pid)
                    print(
                        f"[{db}] {name:11s} c={c:<3d} {m['req_s']:8.0f} req/s  "
                        f"p50 {m['p50_ms']:6.1f} ms  p99 {m['p99_ms']:6.1f} ms  "
                        f"errors {m['errors']} (5xx {m['5xx']})  "
                        f"server CPU {cpu_ms:.2f} ms/req  client CPU {m['client_cpu']:.2f} cores  "
                        f"RSS MB per process {', '.join(f'{x:.0f}' for x in rss)}",
                        flush=True,
                    )
            t0 = time.monotonic()
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
            print(f"[{db}] SIGTERM to exit: {time.monotonic() - t0:.2f} s")
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            log.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="1,000 results for 40 teams, 3 s loads")
    ap.add_argument("--db", default="sqlite,postgres")
    ap.add_argument("--teams", type=int, default=200)
    ap.add_argument("--results", type=int, default=10_000)
    ap.add_argument("--cases", type=int, default=100)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--concurrency", default="1,16,64")
    ap.add_argument("--client-procs", type=int, default=2, help="load generator processes")
    ap.add_argument("--keep", help="keep the filled phases in this folder and reuse them")
    ap.add_argument(
        "--no-access-log", dest="access_log", action="store_false",
        help="the server logs no line per request (as behind a proxy that logs them)",
    )  # fmt: skip
    ap.add_argument("--postgres-url", default=os.environ.get("HELDOUT_TEST_POSTGRES_URL"))
    ap.add_argument(
        "--redis-url", default=os.environ.get("HELDOUT_TEST_REDIS_URL", "redis://127.0.0.1:1/0")
    )
    args = ap.parse_args()
    if args.quick:
        args.teams, args.results, args.seconds = 40, 1000, 3.0
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    print(json.dumps({k: v for k, v in vars(args).items() if k != "postgres_url"}))
    for db in args.db.split(","):
        run_db(db, args)


if __name__ == "__main__":
    main()
