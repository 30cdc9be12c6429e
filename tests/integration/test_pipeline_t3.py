"""T3 end to end: real git repositories served by `git daemon` on 127.0.0.1, built and
trained on the real engine, inference and evaluation as for T2; log review; webhooks."""

from __future__ import annotations

import json
import textwrap
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient

from server.app import create_app
from server.codebases.webhooks import sign
from server.config import Settings
from tests.conftest import REDIS_URL, need
from tests.support import images
from tests.support.factories import STOIC_PHASE, apply_bundle, auth, user_token
from tests.support.gitserver import GitDaemon, RepoFactory
from tests.support.workers import celery_worker, wait_final

pytestmark = [pytest.mark.docker, pytest.mark.redis, pytest.mark.slow]

N = 6
# Learns an age threshold from the training cases; the inference image reads it back.
TRAIN = """
import csv, glob, json, os, sys, time
def age(path):
    with open(path, "rb") as f:
        for line in f:
            k, _, v = line.decode().partition(" = ")
            if k.strip() == "PatientAge":
                return int(v.strip().rstrip("Y"))
rows = list(csv.DictReader(open("/input/metadata/reference.csv")))
ages = {os.path.basename(p).split(".")[0]: age(p) for p in glob.glob("/input/data/mha/*.mha")}
pos = [ages[r["PatientID"]] for r in rows if r["probCOVID"] == "1"]
print(f"training on {len(rows)} cases; first patient {rows[0]['PatientID']}", flush=True)
SLEEP
NETWORK
json.dump({"threshold": min(pos)}, open("/output/model.json", "w"))
"""
PROCESS = """
import glob, json
model = json.load(open("/opt/artifact/model.json"))
(path,) = glob.glob("/input/images/ct/*.mha")
age = 0
for line in open(path, "rb"):
    k, _, v = line.decode().partition(" = ")
    if k.strip() == "PatientAge":
        age = int(v.strip().rstrip("Y")); break
json.dump(age / 100, open("/output/probability-covid-19.json", "w"))
json.dump(1.0 if age >= model["threshold"] else 0.0,
          open("/output/probability-severe-covid-19.json", "w"))
"""
DOCKERFILE = """
FROM heldout/base:bookworm
RUN useradd --create-home --uid 1001 algorithm
{copy}
USER algorithm
ENTRYPOINT ["python3", "/opt/{script}"]
"""


def codebase(*, sleep: str = "", network: str = "", build: str = "") -> dict[str, str]:
    train = TRAIN.replace("SLEEP", sleep).replace("NETWORK", network)
    return {
        "training/Dockerfile": DOCKERFILE.format(
            copy="COPY train.py /opt/train.py\n" + build, script="train.py"
        ),
        "training/train.py": textwrap.dedent(train),
        "inference/Dockerfile": DOCKERFILE.format(
            copy="COPY artifact/ /opt/artifact/\nCOPY process.py /opt/process.py",
            script="process.py",
        ),
        "inference/process.py": textwrap.dedent(PROCESS),
    }


def _dataset(root: Path, offset: int) -> Path:
    return images.write_ct_dataset(
        root, ((f"P{offset + i:03d}", 30 + 8 * i, int(i >= 2), int(i >= 4)) for i in range(N))
    )


def _bundle(training_limits: dict[str, Any] | None = None, **phase: Any) -> dict[str, Any]:
    import yaml

    spec = yaml.safe_load(STOIC_PHASE)
    spec.update(
        slug="final",
        title="Final",
        kind="codebase",
        test_dataset="test",
        training_dataset="train",
        limits={"wall_time_s": 60},
        training_limits=training_limits or {"wall_time_s": 120, "memory_mb": 1024},
        **phase,
    )
    return {
        "version": 1,
        "slug": "stoic",
        "title": "STOIC final",
        "datasets": [
            {"slug": "test", "path": "test"},
            {"slug": "train", "path": "train", "public": True},
        ],
        "phases": [spec],
    }


@pytest.fixture
def live(pg_settings: Settings, tmp_path: Path) -> Iterator[Any]:
    need(REDIS_URL is not None, "Redis (HELDOUT_TEST_REDIS_URL)")
    client = images.client_or_none()
    need(client is not None, "a Docker engine")
    assert client is not None
    images.ensure_base_image(client)
    settings = pg_settings.model_copy(update={"heartbeat_s": 1, "allow_loopback_repos": True})
    redis.Redis.from_url(settings.broker_url).flushdb()
    factory = RepoFactory(tmp_path / "repos")
    with TestClient(create_app(settings)) as api, GitDaemon(factory.root) as daemon:
        admin = user_token(settings, "admin", admin=True)
        yield settings, api, factory, daemon, admin, tmp_path


def _setup(live: Any, files: dict[str, str], **bundle_kw: Any) -> tuple[str, str]:
    settings, api, factory, daemon, admin, tmp = live
    ds = {"test": _dataset(tmp / "test", 100), "train": _dataset(tmp / "train", 0)}
    r = apply_bundle(api, admin, _bundle(**bundle_kw), ds)
    assert r.status_code == 200, r.text
    repo = factory.create("team")
    repo.commit(files, "solution")
    repo.tag("v1")
    return daemon.url("team"), user_token(settings, "alice")


def _submit(api: TestClient, token: str, url: str, ref: str = "v1") -> dict[str, Any]:
    r = api.post(
        "/api/v1/challenges/stoic/phases/final/submissions",
        json={"repository_url": url, "ref": ref},
        headers=auth(token),
    )
    assert r.status_code == 201, r.text
    return dict(r.json())


def _jobs(api: TestClient, token: str, sid: int) -> dict[str, dict[str, Any]]:
    return {
        j["kind"]: j for j in api.get(f"/api/v1/submissions/{sid}/jobs", headers=auth(token)).json()
    }


def test_codebase_trained_scored_and_logs_reviewed(live: Any) -> None:
    settings, api, _, _, admin, _ = live
    # The organizers review successful runs' held logs too: the training log waits for them.
    url, alice = _setup(live, codebase(), review_successful_logs=True)
    with celery_worker(settings):
        sub = _submit(api, alice, url)
        assert len(sub["commit_sha"]) == 40 and sub["ref"] == "v1"
        final = wait_final(api, alice, sub["id"], timeout=300)
    assert final["status"] == "succeeded", final
    assert [t["to_status"] for t in final["transitions"]] == [
        "received",
        "validating",
        "queued",
        "building",
        "training",
        "inferring",
        "evaluating",
        "succeeded",
    ]
    board = api.get("/api/v1/challenges/stoic/phases/final/leaderboard", headers=auth(alice)).json()
    assert board["entries"][0]["metrics"]["auc-covid"]["value"] == pytest.approx(1.0)

    jobs = _jobs(api, alice, sub["id"])
    # Build logs are the participant's; training logs on private data are held.
    build_log = api.get(f"/api/v1/jobs/{jobs['build']['id']}/logs", headers=auth(alice))
    assert build_log.status_code == 200 and "Step" in build_log.json()["log"]
    train_id = jobs["train"]["id"]
    held = api.get(f"/api/v1/jobs/{train_id}/logs", headers=auth(alice))
    assert held.status_code == 403 and "held" in held.json()["detail"]
    # The build adding the trained artifacts is platform-written: its log is the team's.
    every = api.get(f"/api/v1/submissions/{sub['id']}/logs", headers=auth(alice)).json()
    (inference_build,) = [e for e in every if e["part"] == "inference_build"]
    assert "COPY" in inference_build["log"] and "first patient" not in str(every)
    for path in (
        f"/api/v1/submissions/{sub['id']}",
        f"/api/v1/submissions/{sub['id']}/jobs",
        "/api/v1/challenges/stoic/phases/final/submissions",
        "/api/v1/challenges/stoic/phases/final/leaderboard",
    ):
        assert "first patient" not in api.get(path, headers=auth(alice)).text, path
    assert api.get("/api/v1/challenges/stoic/log-reviews", headers=auth(alice)).status_code == 403
    assert (
        api.post(f"/api/v1/jobs/{train_id}/logs/release", json={}, headers=auth(alice)).status_code
        == 403
    )

    pending = api.get("/api/v1/challenges/stoic/log-reviews", headers=auth(admin)).json()
    assert train_id in [p["job_id"] for p in pending]
    full = api.get(f"/api/v1/jobs/{train_id}/logs", headers=auth(admin)).json()
    assert "first patient P000" in full["log"]
    r = api.post(
        f"/api/v1/jobs/{train_id}/logs/release", json={"redactions": ["P000"]}, headers=auth(admin)
    )
    assert r.json()["review"] == "released"
    released = api.get(f"/api/v1/jobs/{train_id}/logs", headers=auth(alice)).json()
    assert "first patient [redacted]" in released["log"] and "P000" not in released["log"]
    assert train_id not in [
        p["job_id"]
        for p in api.get("/api/v1/challenges/stoic/log-reviews", headers=auth(admin)).json()
    ]


def test_training_over_its_time_limit(live: Any) -> None:
    settings, api, *_ = live
    url, alice = _setup(
        live, codebase(sleep="time.sleep(60)"), training_limits={"wall_time_s": 3, "memory_mb": 512}
    )
    with celery_worker(settings):
        final = wait_final(api, alice, _submit(api, alice, url)["id"], timeout=300)
    assert final["status"] == "failed" and final["failure_code"] == "timeout"
    assert "time limit of 3 s" in final["failure_message"]
    assert final["charged"] is True


def test_build_failure_shows_the_build_log(live: Any) -> None:
    settings, api, *_ = live
    url, alice = _setup(live, codebase(build="RUN echo compiling-solution && false"))
    with celery_worker(settings):
        final = wait_final(api, alice, _submit(api, alice, url)["id"], timeout=300)
    assert final["status"] == "failed" and final["failure_code"] == "build_failed"
    assert "training image did not build" in final["failure_message"]
    build = _jobs(api, alice, final["id"])["build"]
    log = api.get(f"/api/v1/jobs/{build['id']}/logs", headers=auth(alice)).json()["log"]
    assert "compiling-solution" in log


class _Hits(BaseHTTPRequestHandler):
    hits = 0

    def do_GET(self) -> None:
        type(self).hits += 1
        self.send_response(200)
        self.end_headers()

    def log_message(self, *_: Any) -> None:
        pass


def test_training_cannot_reach_the_network(live: Any) -> None:
    settings, api, *_ = live
    server = HTTPServer(("127.0.0.1", 0), _Hits)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    probe = (
        "import socket, urllib.request\n"
        "print('interfaces:', sorted(n for _, n in socket.if_nameindex()), flush=True)\n"
        f"urllib.request.urlopen('http://127.0.0.1:{port}/', timeout=5)\n"
    )
    url, alice = _setup(live, codebase(network=probe))
    try:
        with celery_worker(settings):
            final = wait_final(api, alice, _submit(api, alice, url)["id"], timeout=300)
    finally:
        server.shutdown()
    assert _Hits.hits == 0
    assert final["status"] == "failed" and final["failure_code"] == "exit_code:1"
    admin = live[4]
    train = _jobs(api, admin, final["id"])["train"]
    log = api.get(f"/api/v1/jobs/{train['id']}/logs", headers=auth(admin)).json()["log"]
    assert "interfaces: ['lo']" in log and ("Connection refused" in log or "URLError" in log)


def test_bad_refs_and_urls_are_refused(live: Any) -> None:
    _, api, *_ = live
    url, alice = _setup(live, codebase())
    r = api.post(
        "/api/v1/challenges/stoic/phases/final/submissions",
        json={"repository_url": url, "ref": "no-such-tag"},
        headers=auth(alice),
    )
    assert r.status_code == 422 and r.json()["field"] == "ref"
    assert "no-such-tag" in r.json()["detail"]
    for bad in (
        "ext::sh -c touch% /tmp/pwned",
        "--upload-pack=touch /tmp/x",
        "file:///etc",
        "ssh://git@example.org/x.git",
    ):
        r = api.post(
            "/api/v1/challenges/stoic/phases/final/submissions",
            json={"repository_url": bad, "ref": "v1"},
            headers=auth(alice),
        )
        assert r.status_code == 422 and r.json()["field"] == "repository_url", bad


def test_webhook_signature_and_tag_push(live: Any) -> None:
    _, api, factory, _, _, _ = live
    url, alice = _setup(live, codebase())
    link = api.post(
        "/api/v1/challenges/stoic/phases/final/repository-link",
        json={"repository_url": url},
        headers=auth(alice),
    )
    assert link.status_code == 201, link.text
    hook, secret = link.json()["webhook_url"], link.json()["secret"].encode()
    repo_sha = factory.git("rev-parse", "v1^{commit}", cwd=factory.root / "team.git")
    payload = json.dumps(
        {
            "ref": "refs/tags/v1",
            "after": repo_sha,
            "deleted": False,
            "repository": {"clone_url": url},
        }
    ).encode()
    headers = {"X-GitHub-Event": "push", "Content-Type": "application/json"}

    bad = api.post(
        hook, content=payload, headers={**headers, "X-Hub-Signature-256": "sha256=" + "0" * 64}
    )
    assert bad.status_code == 401 and bad.json()["field"] == "signature"
    missing = api.post(hook, content=payload, headers=headers)
    assert missing.status_code == 401
    wrong_key = api.post(
        hook, content=payload, headers={**headers, "X-Hub-Signature-256": sign(b"guess", payload)}
    )
    assert wrong_key.status_code == 401
    subs = api.get("/api/v1/challenges/stoic/phases/final/submissions", headers=auth(alice))
    assert subs.json() == []

    branch = json.dumps(
        {"ref": "refs/heads/main", "after": repo_sha, "repository": {"clone_url": url}}
    ).encode()
    ignored = api.post(
        hook, content=branch, headers={**headers, "X-Hub-Signature-256": sign(secret, branch)}
    )
    assert ignored.status_code == 202 and ignored.json()["submitted"] is False

    ok = api.post(
        hook, content=payload, headers={**headers, "X-Hub-Signature-256": sign(secret, payload)}
    )
    assert ok.status_code == 201, ok.text
    assert ok.json()["commit_sha"] == repo_sha
    subs = api.get("/api/v1/challenges/stoic/phases/final/submissions", headers=auth(alice))
    assert [s["ref"] for s in subs.json()] == ["refs/tags/v1"]


def test_feedback_round_returns_logs_and_artifacts(live: Any) -> None:
    import io
    import tarfile

    settings, api, *_ = live
    url, alice = _setup(live, codebase(), feedback_round=True)
    with celery_worker(settings):
        final = wait_final(api, alice, _submit(api, alice, url)["id"], timeout=300)
    assert final["status"] == "succeeded", final
    train = _jobs(api, alice, final["id"])["train"]
    assert train["logs_held"] is False and train["log_review"] is None
    log = api.get(f"/api/v1/jobs/{train['id']}/logs", headers=auth(alice))
    assert log.status_code == 200 and "first patient P000" in log.json()["log"]
    r = api.get(f"/api/v1/submissions/{final['id']}/artifacts", headers=auth(alice))
    assert r.status_code == 200
    with tarfile.open(fileobj=io.BytesIO(r.content)) as tar:
        model = json.load(tar.extractfile("model.json"))  # type: ignore[arg-type]
    assert model["threshold"] == 46  # the youngest COVID-positive training case


def test_sequestered_training_artifacts_stay_with_the_organizers(live: Any) -> None:
    settings, api, _, _, admin, _ = live
    url, alice = _setup(live, codebase())
    with celery_worker(settings):
        final = wait_final(api, alice, _submit(api, alice, url)["id"], timeout=300)
    assert final["status"] == "succeeded"
    r = api.get(f"/api/v1/submissions/{final['id']}/artifacts", headers=auth(alice))
    assert r.status_code == 403 and "feedback round" in r.json()["detail"]
    assert (
        api.get(f"/api/v1/submissions/{final['id']}/artifacts", headers=auth(admin)).status_code
        == 200
    )


def test_run_local_trains_and_runs_a_codebase(tmp_path: Path) -> None:
    """`heldout run-local --codebase`: the platform's build, training and inference steps
    on the participant's own data, ending in the same per-case classification."""
    import subprocess
    import sys

    import yaml

    from tests.support.workers import ROOT

    need(images.client_or_none() is not None, "a Docker engine")
    repo = tmp_path / "repo"
    for rel, text in codebase().items():
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / rel).write_text(text)
    bundle = tmp_path / "bundle.yaml"
    bundle.write_text(yaml.safe_dump(_bundle()))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "server.cli",
            "run-local",
            "--bundle",
            str(bundle),
            "--phase",
            "final",
            "--codebase",
            str(repo),
            "--training-data",
            str(_dataset(tmp_path / "train", 0)),
            "--cases",
            str(_dataset(tmp_path / "mine", 100)),
            "--json",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = json.loads(proc.stdout)
    assert out["status"] == "succeeded" and len(out["cases"]) == N
    assert "first patient P000" in out["training"]["stdout"]  # your own data: full logs
    # Threshold 46 learnt in the container: of ages 30..70, the four from 46 are severe.
    severe = sorted(c["outputs"]["probability-severe-covid-19"] for c in out["cases"].values())
    assert severe == ["0.0"] * 2 + ["1.0"] * 4
