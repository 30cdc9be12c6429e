"""The pipeline's step drivers on the fake backend, through the Backend interface the Docker
backend implements: a T2 submission on a real (SQLite) database goes validate → canary →
infer → evaluate with every job run by `pipeline.run_job`, the real evaluator scoring in the
fake's evaluation "container". What the backend reports is classified as on Docker: the
image's fault fails (and, past the canary, charges) the submission; the engine's is retried
and never charged."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from evaluation.evaluate import main as evaluate_main
from server.app import create_app
from server.config import Settings
from server.db import session_scope
from server.jobs.models import Job
from tests.conftest import _sqlite_settings
from tests.support.factories import apply_bundle, auth, stoic_bundle, submit_blob, user_token
from tests.support.images import write_ct_dataset
from worker import pipeline, steps
from worker.executor.base import ExecutionError, Failure, RunSpec
from worker.executor.engine import Backend, EngineError
from worker.executor.fake import Behaviour, FakeExecutor, make_image
from worker.images import release_images, submission_tag

GROUND_TRUTH = "/opt/ml/input/data/ground_truth"
OUTPUTS = ("probability-covid-19", "probability-severe-covid-19")


@pytest.fixture
def settings(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return _sqlite_settings(tmp_path, tmp_path_factory)


@pytest.fixture
def api(settings: Settings, sent_tasks: list[Any]) -> Any:
    with TestClient(create_app(settings)) as client:
        yield client


def _archive(path: Path, user: str = "algo", cmd: str = "run") -> Path:
    """A `docker save` archive of one image with a real layer (its /etc/passwd)."""
    config = json.dumps(
        {"os": "linux", "architecture": "amd64", "config": {"User": user, "Cmd": [cmd]}}
    ).encode()
    digest = hashlib.sha256(config).hexdigest()
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w") as tar:
        passwd = b"root:x:0:0::/root:/bin/sh\nalgo:x:1000:1000::/home/algo:/bin/sh\n"
        info = tarfile.TarInfo("etc/passwd")
        info.size = len(passwd)
        tar.addfile(info, io.BytesIO(passwd))
    manifest = [{"Config": f"{digest}.json", "RepoTags": ["x:1"], "Layers": ["l1/layer.tar"]}]
    with tarfile.open(path, "w") as tar:
        for name, data in (
            (f"{digest}.json", config),
            ("l1/layer.tar", layer.getvalue()),
            ("manifest.json", json.dumps(manifest).encode()),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _algorithm(inputs: Path, output: Path) -> None:
    (case,) = (inputs / "images" / "ct").iterdir()
    age = int(case.read_bytes().split(b"PatientAge = ")[1][:3])  # written by write_ct_dataset
    (output / f"{OUTPUTS[0]}.json").write_text(json.dumps(age / 100))
    (output / f"{OUTPUTS[1]}.json").write_text(json.dumps(0.25))


def _evaluator(spec: RunSpec) -> Behaviour:
    """The real evaluator, run on the mounts the platform gives its container."""
    gt = next(host for host, target in spec.read_only_mounts.items() if target == GROUND_TRUTH)

    def write(inputs: Path, output: Path) -> None:
        code = evaluate_main(
            [
                "--predictions", str(inputs / "predictions.json"),
                "--ground-truth", str(gt / "labels.csv"),
                "--config", str(gt / "metrics.json"),
                "--output", str(output / "metrics.json"),
            ]
        )  # fmt: skip
        assert code == 0

    return Behaviour(write=write)


def _backend() -> FakeExecutor:
    def behaviour(spec: RunSpec) -> Behaviour:
        if spec.read_only_mounts:
            return _evaluator(spec)
        return Behaviour(write=_algorithm)

    return FakeExecutor(behaviour=behaviour)


def _setup(settings: Settings, api: Any, tmp_path: Path, canary: bool = True) -> str:
    admin = user_token(settings, "admin", admin=True)
    bundle = stoic_bundle()
    datasets = {
        "test": write_ct_dataset(
            tmp_path / "test",
            ((f"P{i:03d}", 30 + 8 * i, int(i >= 2), int(i == 3)) for i in range(4)),
        )
    }
    if canary:
        bundle["datasets"].append({"slug": "public", "path": "public", "public": True})
        bundle["phases"][0]["canary_dataset"] = "public"
        datasets["public"] = write_ct_dataset(tmp_path / "public", [("Q000", 50, 1, 0)])
    r = apply_bundle(api, admin, bundle, datasets)
    assert r.status_code == 200, r.text
    return user_token(settings, "alice")


def _drive(settings: Settings, backend: Backend[Any], sid: int) -> list[tuple[str, int]]:
    """Run the submission's pending jobs as a worker would, until none is left; the
    (kind, attempt) of each run in order."""
    ran: list[tuple[str, int]] = []
    with steps.using_backend(backend):
        while True:
            with session_scope(settings) as session:
                pending = session.scalars(
                    select(Job)
                    .where(Job.submission_id == sid, Job.status == "pending")
                    .order_by(Job.id)
                ).all()
                todo = [j.id for j in pending]
            if not todo:
                return ran
            for job_id in todo:
                pipeline.run_job(settings, job_id)
                with session_scope(settings) as session:
                    job = session.get(Job, job_id)
                    assert job is not None
                    ran.append((job.kind, job.attempt))


def _submit(api: Any, token: str, archive: Path) -> int:
    r = submit_blob(api, token, data=archive.read_bytes())
    assert r.status_code == 201, r.text
    return int(r.json()["id"])


def _final(api: Any, token: str, sid: int) -> dict[str, Any]:
    r = api.get(f"/api/v1/submissions/{sid}", headers=auth(token))
    assert r.status_code == 200, r.text
    return dict(r.json())


@pytest.fixture(autouse=True)
def no_background_release(monkeypatch: pytest.MonkeyPatch) -> None:
    """Image release runs off-thread after each job; here the test calls it itself."""
    monkeypatch.setattr("worker.images.release_in_background", lambda *a, **k: None)


def test_a_t2_submission_advances_through_every_step(
    settings: Settings, api: Any, tmp_path: Path
) -> None:
    alice = _setup(settings, api, tmp_path)
    backend = _backend()
    sid = _submit(api, alice, _archive(tmp_path / "algo.tar"))
    ran = _drive(settings, backend, sid)
    final = _final(api, alice, sid)
    assert final["status"] == "succeeded", final
    states = [t["to_status"] for t in final["transitions"]]
    assert states == ["received", "validating", "queued", "inferring", "evaluating", "succeeded"]
    assert [k for k, _ in ran] == ["validate", "canary", *["infer"] * 4, "evaluate"]
    # Through the interface: the archive loaded and tagged, the evaluator built once.
    tag = submission_tag(settings, sid, "image")
    assert [i.tags for i in backend.list_images(tag.rpartition(":")[0])] == [[tag]]
    assert backend.calls.count("build_evaluation_image") == 1
    assert backend.live == {}  # every run deprovisioned
    board = api.get(
        "/api/v1/challenges/stoic/phases/qualification/leaderboard", headers=auth(alice)
    ).json()
    (entry,) = board["entries"]
    # The fake algorithm predicts age/100 and COVID follows age: a perfect AUC.
    assert entry["metrics"]["auc-covid"]["value"] == pytest.approx(1.0)
    # Once over, the submission's tag leaves the engine.
    with steps.using_backend(backend):
        assert release_images(settings, [sid]) == [tag]
    assert backend.list_images(tag.rpartition(":")[0]) == []


def test_an_image_error_fails_the_case_and_charges_the_team(
    settings: Settings, api: Any, tmp_path: Path
) -> None:
    alice = _setup(settings, api, tmp_path, canary=False)
    backend = _backend()
    backend.fail("provision", ExecutionError(Failure.image_error("The image has no command.")))
    sid = _submit(api, alice, _archive(tmp_path / "algo.tar"))
    ran = _drive(settings, backend, sid)
    final = _final(api, alice, sid)
    assert final["status"] == "failed", final
    assert final["failure_code"] == "cases_failed"
    assert final["charged"] is True
    # Not retried: the image's fault is the participant's.
    assert ran.count(("infer", 2)) == 0


def test_an_image_error_on_the_canary_is_not_charged(
    settings: Settings, api: Any, tmp_path: Path
) -> None:
    alice = _setup(settings, api, tmp_path)
    backend = _backend()
    backend.fail("provision", ExecutionError(Failure.image_error("The image has no command.")))
    sid = _submit(api, alice, _archive(tmp_path / "algo.tar"))
    ran = _drive(settings, backend, sid)
    final = _final(api, alice, sid)
    assert final["status"] == "failed"
    assert final["failure_code"] == "canary:image_error"
    assert final["charged"] is False
    assert ran == [("validate", 1), ("canary", 1)]


def test_an_engine_error_is_retried_and_not_charged(
    settings: Settings, api: Any, tmp_path: Path
) -> None:
    alice = _setup(settings, api, tmp_path, canary=False)
    backend = _backend()
    backend.fail("provision", ExecutionError(Failure.engine_error()))
    sid = _submit(api, alice, _archive(tmp_path / "algo.tar"))
    ran = _drive(settings, backend, sid)
    assert _final(api, alice, sid)["status"] == "succeeded"
    assert ("infer", 2) in ran  # the failed attempt ran again

    # An engine that keeps failing: the submission fails as the platform's fault.
    backend.fail("provision", ExecutionError(Failure.engine_error()), times=100)
    sid = _submit(api, alice, _archive(tmp_path / "again.tar"))
    _drive(settings, backend, sid)
    final = _final(api, alice, sid)
    assert final["status"] == "failed"
    assert final["charged"] is False
    assert "does not count" in final["failure_message"]


def test_intake_on_the_fake_engine(settings: Settings, api: Any, tmp_path: Path) -> None:
    alice = _setup(settings, api, tmp_path, canary=False)
    backend = _backend()
    # The engine failing to load: retried, and the second attempt loads it.
    backend.fail("load_archive", EngineError("connection reset"))
    sid = _submit(api, alice, _archive(tmp_path / "algo.tar"))
    ran = _drive(settings, backend, sid)
    assert ran[:2] == [("validate", 1), ("validate", 2)]
    assert _final(api, alice, sid)["status"] == "succeeded"
    # A root USER is the image's fault: refused at validation, not charged (nothing ran).
    sid = _submit(api, alice, _archive(tmp_path / "root.tar", user="root"))
    _drive(settings, backend, sid)
    final = _final(api, alice, sid)
    assert final["status"] == "failed" and final["failure_code"] == "invalid_image"
    assert "root" in final["failure_message"] and final["charged"] is False


# --- T3: clone (real git on 127.0.0.1), build, train, infer, evaluate on the fake --------

T3_DOCKERFILE = """FROM heldout/base:bookworm
RUN useradd --create-home --uid 1001 algorithm
{copy}
USER algorithm
ENTRYPOINT ["python3", "/opt/{script}"]
"""
T3_FILES = {
    "training/Dockerfile": T3_DOCKERFILE.format(
        copy="COPY train.py /opt/train.py", script="train.py"
    ),
    "training/train.py": "# the fake's training behaviour stands in for it\n",
    "inference/Dockerfile": T3_DOCKERFILE.format(
        copy="COPY artifact/ /opt/artifact/\nCOPY process.py /opt/process.py", script="process.py"
    ),
    "inference/process.py": "# the fake's inference behaviour stands in for it\n",
}


def _t3_backend() -> FakeExecutor:
    """Training writes a model; inference reads it from the inference *image* (where the
    platform's second build put it), so the artifacts' way through the builds is checked."""
    backend = FakeExecutor()

    def train(inputs: Path, output: Path) -> None:
        assert (inputs / "metadata" / "reference.csv").is_file()
        (output / "model.json").write_text(json.dumps({"severe_from_age": 60}))

    def behaviour(spec: RunSpec) -> Behaviour:
        if spec.read_only_mounts:
            return _evaluator(spec)
        if spec.writable_rootfs:
            return Behaviour(write=train, stdout="training on the private cases\n")
        model_file = backend.images[spec.image].files["/opt/artifact/model.json"]
        assert model_file.content is not None
        model = json.loads(model_file.content)

        def infer(inputs: Path, output: Path) -> None:
            _algorithm(inputs, output)
            (case,) = (inputs / "images" / "ct").iterdir()
            age = int(case.read_bytes().split(b"PatientAge = ")[1][:3])
            severe = 1.0 if age >= model["severe_from_age"] else 0.0
            (output / f"{OUTPUTS[1]}.json").write_text(json.dumps(severe))

        return Behaviour(write=infer)

    backend.behaviour = behaviour
    passwd = b"root:x:0:0::/root:/bin/sh\nalgorithm:x:1001:1001::/home/algorithm:/bin/sh\n"
    backend.add_image(make_image(files={"/etc/passwd": passwd}), "heldout/base:bookworm")
    return backend


def _t3_setup(settings: Settings, api: Any, tmp_path: Path, daemon: Any) -> tuple[str, str]:
    import yaml

    from tests.support.factories import STOIC_PHASE

    spec = yaml.safe_load(STOIC_PHASE)
    spec.update(
        slug="final", title="Final", kind="codebase", test_dataset="test",
        training_dataset="train", limits={"wall_time_s": 60},
        training_limits={"wall_time_s": 120, "memory_mb": 1024},
    )  # fmt: skip
    bundle = {
        "version": 1,
        "slug": "stoic",
        "title": "STOIC final",
        "datasets": [
            {"slug": "test", "path": "test"},
            {"slug": "train", "path": "train", "public": True},
        ],
        "phases": [spec],
    }
    rows = [(f"P{i:03d}", 30 + 8 * i, int(i >= 2), int(i >= 4)) for i in range(6)]
    datasets = {
        "test": write_ct_dataset(tmp_path / "test", rows),
        "train": write_ct_dataset(tmp_path / "train", [(f"T{c[1:]}", *r) for c, *r in rows]),
    }
    admin = user_token(settings, "admin", admin=True)
    r = apply_bundle(api, admin, bundle, datasets)
    assert r.status_code == 200, r.text
    return daemon.url("team"), user_token(settings, "alice")


def _t3_repos(tmp_path: Path) -> Path:
    """A git root holding the team's T3 solution, tagged v1."""
    from tests.support.gitserver import RepoFactory

    factory = RepoFactory(tmp_path / "repos")
    repo = factory.create("team")
    repo.commit(T3_FILES, "solution")
    repo.tag("v1")
    return factory.root


def _t3_submit(api: TestClient, url: str, token: str) -> int:
    r = api.post(
        "/api/v1/challenges/stoic/phases/final/submissions",
        json={"repository_url": url, "ref": "v1"},
        headers=auth(token),
    )
    assert r.status_code == 201, r.text
    return int(r.json()["id"])


def test_a_t3_codebase_is_built_trained_and_scored(
    settings: Settings, tmp_path: Path, sent_tasks: list[Any]
) -> None:
    from tests.support.gitserver import GitDaemon

    settings = settings.model_copy(update={"allow_loopback_repos": True})
    with TestClient(create_app(settings)) as api, GitDaemon(_t3_repos(tmp_path)) as daemon:
        url, alice = _t3_setup(settings, api, tmp_path, daemon)
        sid = _t3_submit(api, url, alice)
        backend = _t3_backend()
        ran = _drive(settings, backend, sid)
        final = _final(api, alice, sid)
        assert final["status"] == "succeeded", final
        assert [t["to_status"] for t in final["transitions"]] == [
            "received", "validating", "queued", "building", "training", "inferring",
            "evaluating", "succeeded",
        ]  # fmt: skip
        assert [k for k, _ in ran] == ["validate", "build", "train", *["infer"] * 6, "evaluate"]
        # Two builds of the participant's and one of the platform's (FROM the inference base).
        assert backend.calls.count("build") == 3
        inference = submission_tag(settings, sid, "inference")
        (image,) = backend.list_images(inference.rpartition(":")[0] + ":inference")
        assert "/opt/artifact/model.json" in backend.images[image.id].files
        board = api.get(
            "/api/v1/challenges/stoic/phases/final/leaderboard", headers=auth(alice)
        ).json()
        assert board["entries"][0]["metrics"]["auc-covid"]["value"] == pytest.approx(1.0)
