"""docker-compose.yml brought up for real: server, worker, PostgreSQL and Redis as containers
on this machine's engine. No registry answers here, so the images come from local stand-ins
(tests/support/compose/) and the server image installs wheels downloaded beforehand; the
compose file itself is used as shipped. A participant's image then goes through the
composed worker to a leaderboard score, which needs the worker's size-capped /output mounts
to reach the participant containers it starts on the host's engine."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import httpx
import pytest

from evaluation.build_image import build_evaluation_image, default_tag
from server.config import Settings
from tests.conftest import need
from tests.support import images
from tests.support.factories import apply_bundle, auth, stoic_bundle
from tests.support.workers import ROOT, free_port, wait_final, wait_healthy
from worker.executor.base import LABEL_JOB, LABEL_MANAGED
from worker.steps import instance_prefix

pytestmark = [pytest.mark.docker, pytest.mark.slow]

COMPOSE_DIR = Path(__file__).resolve().parents[1] / "support" / "compose"
WHEELS = ROOT / ".wheels"
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
N_CASES = 6
# docker-compose.yml has no default password; the test passes one, as an operator must.
DB_PASSWORD = "compose-test-password"
REGISTRY_PASSWORD = "compose-test-registry-password"
# As docker-compose.yml sets it for server and worker.
DATABASE_URL = f"postgresql+psycopg://heldout:{DB_PASSWORD}@postgres:5432/heldout"


def _htpasswd(path: Path) -> Path:
    """The registry's htpasswd file: user heldout, bcrypt, as `htpasswd -B` writes it."""
    hashed = subprocess.run(
        [sys.executable, "-W", "ignore", "-c",
         "import crypt, sys; print(crypt.crypt(sys.argv[1], crypt.mksalt(crypt.METHOD_BLOWFISH)))",
         REGISTRY_PASSWORD],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    path.write_text(f"heldout:{hashed}\n")
    return path


def _build_stand_ins(client: docker.DockerClient) -> dict[str, str]:
    tags = {}
    for name in ("postgres", "redis", "registry"):
        tag = f"{images.REPO}/compose-{name}:latest"
        # apt needs the network at build time; the engine runs without iptables here.
        # rm/forcerm: the SDK keeps each step's container otherwise (the CLI does not).
        client.images.build(
            path=str(COMPOSE_DIR), dockerfile=f"{name}.Dockerfile", tag=tag,
            network_mode="host", rm=True, forcerm=True,
        )  # fmt: skip
        tags[name] = tag
    return tags


def _download_wheels(client: docker.DockerClient) -> None:
    """The server image's dependencies, resolved by the image's own interpreter (its
    markers differ from the host's: bookworm's 3.11.2 needs async-timeout for redis)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    # The image installs heldout[worker]: the client's, the server's and the worker's.
    extras = project["optional-dependencies"]
    deps = [
        d
        for d in [*project["dependencies"], *extras["server"], *extras["worker"]]
        if not d.startswith("heldout")
    ]
    WHEELS.mkdir(exist_ok=True)
    download = "pip download -q -d /wheels " + shlex.join(["setuptools", *deps])
    client.containers.run(
        "heldout/python:bookworm",
        ["sh", "-c", f"python3 -m venv /tmp/v && /tmp/v/bin/{download}"],
        network_mode="host",
        environment={"PIP_CERT": CA_BUNDLE},
        volumes={
            str(WHEELS): {"bind": "/wheels", "mode": "rw"},
            CA_BUNDLE: {"bind": CA_BUNDLE, "mode": "ro"},
        },
        remove=True,
    )


def _shared_mount(path: Path) -> None:
    """The data directory as a shared mount, as docker-compose.yml asks of the host."""
    subprocess.run(["mount", "--bind", str(path), str(path)], check=True)
    subprocess.run(["mount", "--make-rshared", str(path)], check=True)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    client = images.client_or_none()
    need(client is not None, "a Docker engine")
    assert client is not None
    compose = shutil.which("docker-compose")
    need(compose is not None, "docker-compose (apt docker-compose)")
    assert compose is not None
    need(os.geteuid() == 0, "root (shared bind mount of the data directory)")

    images.ensure_base_image(client)
    stand_ins = _build_stand_ins(client)
    _download_wheels(client)
    # The composed worker has no network to fetch wheels with; build the image here.
    # Tagged by the digest of the evaluation code, which the composed worker computes alike.
    if not client.images.list(name=default_tag()):
        build_evaluation_image(client)

    data = tmp_path_factory.mktemp("compose-data")
    _shared_mount(data)
    port = free_port()
    project = f"heldout-test-{os.getpid()}"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("HELDOUT_")},
        "HELDOUT_DATA_DIR": str(data),
        "HELDOUT_DB_PASSWORD": DB_PASSWORD,
        "HELDOUT_PORT": str(port),
        "HELDOUT_VERSION": "test",
        "HELDOUT_BASE_IMAGE": "heldout/python:bookworm",
        "HELDOUT_PIP_ARGS": "--no-index --find-links .wheels",
        "HELDOUT_POSTGRES_IMAGE": stand_ins["postgres"],
        "HELDOUT_REDIS_IMAGE": stand_ins["redis"],
        "HELDOUT_REGISTRY_IMAGE": stand_ins["registry"],
        "HELDOUT_REGISTRY_PORT": str(free_port()),
        "HELDOUT_REGISTRY_HTPASSWD": str(_htpasswd(data.parent / "registry.htpasswd")),
        "HELDOUT_IMAGE_REGISTRY_PASSWORD": REGISTRY_PASSWORD,
    }

    def dc(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [compose, "-p", project, *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )

    url = f"http://127.0.0.1:{port}"
    try:
        started = dc("up", "-d", "--build", timeout=900)
        assert started.returncode == 0, started.stdout + started.stderr
        wait_healthy(url, 120, "the composed server to answer")
        yield {"url": url, "dc": dc, "data": data, "project": project, "client": client,
               "registry": f"http://127.0.0.1:{env['HELDOUT_REGISTRY_PORT']}"}  # fmt: skip
    finally:
        logs = dc("logs", "--no-color", "--tail", "60")
        print(logs.stdout, file=sys.stderr)
        dc("down", "-v", "--remove-orphans")
        subprocess.run(["umount", "-R", str(data)], check=False)
        shutil.rmtree(WHEELS, ignore_errors=True)


def _token(stack: dict[str, Any], user: str, *admin: str) -> str:
    made = stack["dc"]("exec", "-T", "server", "heldout", "token", "create", "--user", user,
                       *admin, "--json")  # fmt: skip
    assert made.returncode == 0, made.stdout + made.stderr
    return str(json.loads(made.stdout)["token"])


def test_composed_stack_scores_a_submission(stack: dict[str, Any], tmp_path: Path) -> None:
    dc, client = stack["dc"], stack["client"]
    ps = dc("ps", "--services", "--filter", "status=running")
    services = ["postgres", "redis", "registry", "server", "worker"]
    assert sorted(ps.stdout.split()) == services, ps.stderr

    admin = _token(stack, "admin", "--admin")
    alice = _token(stack, "alice")
    dataset = images.write_ct_dataset(
        tmp_path / "test",
        ((f"P{i:03d}", 30 + 8 * i, int(i >= 2), int(i in (3, 5))) for i in range(N_CASES)),
    )
    with httpx.Client(base_url=stack["url"], timeout=60) as api:
        applied = apply_bundle(api, admin, stoic_bundle(), {"test": dataset})
        assert applied.status_code == 200, applied.text

        tag = images.build_image(client, "compose-good", images.WELL_BEHAVED)
        archive = images.save_image(client, [tag], tmp_path / "good.tar.gz", gz=True)
        # The participant's way in: the CLI on this machine against the composed server.
        submit = ["submit", "stoic", "qualification", "--image", str(archive), "--json"]
        client_env = {"HELDOUT_API_URL": stack["url"], "HELDOUT_TOKEN": alice}
        submitted = subprocess.run(
            [sys.executable, "-m", "server.cli", *submit],
            env={**os.environ, **client_env, "PYTHONPATH": str(ROOT)},
            capture_output=True,
            text=True,
            timeout=300,
            stdin=subprocess.DEVNULL,
        )
        assert submitted.returncode == 0, submitted.stdout + submitted.stderr
        final = wait_final(api, alice, json.loads(submitted.stdout)["id"], timeout=300)
        assert final["status"] == "succeeded", final
        board = api.get(
            "/api/v1/challenges/stoic/phases/qualification/leaderboard", headers=auth(alice)
        ).json()
        # The worker started beside the server, before it had migrated the database: the
        # node is registered all the same, with the queues it consumes.
        listed = api.get("/api/v1/nodes", headers=auth(admin)).json()
    (entry,) = board["entries"]
    (node,) = listed
    assert node["name"] == "node-1" and "cpu" in node["queues"], listed
    assert entry["team"] == "alice"
    assert entry["metrics"]["auc-covid"]["value"] == pytest.approx(1.0)

    # The worker pushed the image to the composed registry, which lets no one else in.
    catalog = f"{stack['registry']}/v2/_catalog"
    assert httpx.get(catalog, timeout=10).status_code == 401
    pushed = httpx.get(catalog, auth=("heldout", REGISTRY_PASSWORD), timeout=10)
    assert pushed.status_code == 200 and pushed.json()["repositories"], pushed.text

    # The job records live in the composed PostgreSQL, not in a file of the server's.
    jobs = dc("exec", "-T", "postgres", "psql", "-U", "heldout", "-d", "heldout", "-tAc",
              "SELECT kind, status, count(*) FROM jobs GROUP BY kind, status")  # fmt: skip
    assert sorted(jobs.stdout.split()) == [
        "evaluate|succeeded|1",
        f"infer|succeeded|{N_CASES}",
        "validate|succeeded|1",
    ], jobs.stdout + jobs.stderr
    # The algorithm ran in containers beside the worker, on the host's engine; none is left.
    composed = Settings(data_dir=stack["data"], database_url=DATABASE_URL)
    left = client.containers.list(all=True, filters={"label": LABEL_MANAGED})
    assert not [c for c in left if c.labels[LABEL_JOB].startswith(instance_prefix(composed))]
