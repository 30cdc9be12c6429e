"""Images travelling between nodes through the registry, on fake engines that share one
registry as two nodes do: each image is pushed where it is loaded or built and recorded by
digest, a node that lacks an image pulls it by that digest before running it and refuses
anything else the registry serves; a node short of disk drops images it can pull again.
(The real push and pull: tests/integration/test_registry.py.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from server.app import create_app
from server.config import Settings
from server.db import session_scope
from server.jobs import service as jobs
from server.jobs.models import Job
from server.submissions.models import Submission
from tests.conftest import _sqlite_settings
from tests.unit.worker.test_steps_on_fake import (
    _archive,
    _backend,
    _final,
    _setup,
    _submit,
    _t3_backend,
    _t3_repos,
    _t3_setup,
    _t3_submit,
)
from worker import pipeline, steps
from worker.executor.fake import FakeExecutor, make_image
from worker.images import submission_tag
from worker.registry import ImageMismatch, ensure_local, prune, publish
from worker.steps import InfrastructureError

REGISTRY = "registry.test:5000"


@pytest.fixture
def settings(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    base = _sqlite_settings(tmp_path, tmp_path_factory)
    return base.model_copy(update={"image_registry": REGISTRY})


@pytest.fixture
def api(settings: Settings, sent_tasks: list[Any]) -> Any:
    with TestClient(create_app(settings)) as client:
        yield client


@pytest.fixture(autouse=True)
def no_background_release(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("worker.images.release_in_background", lambda *a, **k: None)


def _pending(settings: Settings, sid: int) -> list[tuple[int, str]]:
    with session_scope(settings) as session:
        rows = session.scalars(
            select(Job).where(Job.submission_id == sid, Job.status == "pending").order_by(Job.id)
        )
        return [(j.id, j.kind) for j in rows]


def _drive_on(settings: Settings, nodes: dict[str, FakeExecutor], sid: int) -> list[str]:
    """Run the submission's jobs, each kind on the node `nodes` names for it (default the
    "*" node), until none is pending; the kinds in order."""
    ran: list[str] = []
    while todo := _pending(settings, sid):
        for job_id, kind in todo:
            with steps.using_backend(nodes.get(kind, nodes["*"])):
                pipeline.run_job(settings, job_id)
            ran.append(kind)
    return ran


def _submission(settings: Settings, sid: int) -> Submission:
    with session_scope(settings) as session:
        row = session.get(Submission, sid)
        assert row is not None
        session.expunge(row)
        return row


def test_a_t2_image_loaded_on_one_node_runs_on_another(
    settings: Settings, api: Any, tmp_path: Path
) -> None:
    alice = _setup(settings, api, tmp_path)
    intake, runner = _backend(), _backend()
    runner.registry = intake.registry  # one registry, two engines
    sid = _submit(api, alice, _archive(tmp_path / "algo.tar"))
    ran = _drive_on(settings, {"validate": intake, "*": runner}, sid)
    assert ran == ["validate", "canary", *["infer"] * 4, "evaluate"]
    assert _final(api, alice, sid)["status"] == "succeeded"
    sub = _submission(settings, sid)
    # Recorded within the registry: each node prefixes the address it reaches it by.
    assert sub.image_ref is not None and sub.image_ref.startswith("heldout-")
    assert "@sha256:" in sub.image_ref and f"{REGISTRY}/{sub.image_ref}" in intake.registry
    # Pulled once, by digest, then held; tagged as the submission's so release removes it.
    assert runner.calls.count("pull_image") == 1 and "push_image" not in runner.calls
    tag = submission_tag(settings, sid, "image")
    assert [i.id for i in runner.list_images(tag)] == [sub.image_id]


def test_without_a_registry_nothing_is_pushed(settings: Settings, api: Any, tmp_path: Path) -> None:
    settings = settings.model_copy(update={"image_registry": None})
    alice = _setup(settings, api, tmp_path, canary=False)
    node = _backend()
    sid = _submit(api, alice, _archive(tmp_path / "algo.tar"))
    _drive_on(settings, {"*": node}, sid)
    assert _final(api, alice, sid)["status"] == "succeeded"
    assert _submission(settings, sid).image_ref is None
    assert not {"push_image", "pull_image"} & set(node.calls) and node.registry == {}


def test_a_tampered_reference_is_refused(settings: Settings) -> None:
    origin, node = FakeExecutor(), FakeExecutor()
    node.registry = origin.registry
    wanted = origin.add_image(make_image({"Cmd": ["wanted"]}), "a:1")
    other = origin.add_image(make_image({"Cmd": ["other"]}), "b:1")
    ref = publish(origin, settings, wanted, "image", 1)
    other_ref = publish(origin, settings, other, "image", 2)
    assert ref and other_ref and ref != other_ref
    with pytest.raises(ImageMismatch, match="refusing the image") as caught:
        ensure_local(node, settings, wanted, other_ref)
    assert other in str(caught.value) and wanted in str(caught.value)
    assert node.images == {}  # what the pull brought is gone again
    with pytest.raises(InfrastructureError, match="could not be pulled"):
        ensure_local(node, settings, wanted, ref.replace(ref[-8:], "0" * 8))
    ensure_local(node, settings, wanted, ref, tag="x:1")
    assert node.inspect_image("x:1")["Id"] == wanted
    # Held already: nothing is pulled; without a reference or a registry a missing image
    # is the run's to report.
    ensure_local(node, settings, wanted, other_ref)
    ensure_local(node, settings, other, None)
    ensure_local(node, settings.model_copy(update={"image_registry": None}), other, other_ref)
    assert node.calls.count("pull_image") == 3 and other not in node.images


def test_t3_build_train_and_inference_on_three_nodes(
    settings: Settings, tmp_path: Path, sent_tasks: list[Any]
) -> None:
    from tests.support.gitserver import GitDaemon

    settings = settings.model_copy(update={"allow_loopback_repos": True})
    builder, trainer, runner = _t3_backend(), _t3_backend(), _t3_backend()
    trainer.registry = runner.registry = builder.registry
    with TestClient(create_app(settings)) as api, GitDaemon(_t3_repos(tmp_path)) as daemon:
        url, alice = _t3_setup(settings, api, tmp_path, daemon)
        sid = _t3_submit(api, url, alice)
        nodes = {"validate": builder, "build": builder, "train": trainer, "*": runner}
        _drive_on(settings, nodes, sid)
        assert _final(api, alice, sid)["status"] == "succeeded"
    # The trainer pulled the training image and the inference base; the runner the
    # trained inference image, whose reference the submission records.
    assert trainer.calls.count("pull_image") == 2 and runner.calls.count("pull_image") == 1
    # Both before the training run: a failed pull after it would retry the training.
    pulls = [i for i, c in enumerate(trainer.calls) if c == "pull_image"]
    first_run = next(i for i, c in enumerate(trainer.calls) if c == "provision")
    assert max(pulls) < first_run, trainer.calls
    sub = _submission(settings, sid)
    assert builder.registry[f"{REGISTRY}/{sub.image_ref}"].id == sub.image_id


def test_prune_drops_pullable_images_no_queued_or_running_job_needs(
    settings: Settings, api: Any, tmp_path: Path
) -> None:
    alice = _setup(settings, api, tmp_path, canary=False)
    node = _backend()
    node.storage = tmp_path
    idle = _submit(api, alice, _archive(tmp_path / "a.tar"))
    _drive_on(settings, {"*": node}, idle)  # loaded, tagged, pushed, run: nothing queued
    # A submission with cases queued, its image loaded and pushed.
    queued = _submit(api, alice, _archive(tmp_path / "q.tar", cmd="queued"))
    ((validate, _),) = _pending(settings, queued)
    with steps.using_backend(node):
        pipeline.run_job(settings, validate)
    queued_image = _submission(settings, queued).image_id
    # A submission whose case runs on this node, and an image the registry never got.
    busy = _submit(api, alice, _archive(tmp_path / "b.tar", cmd="other"))
    ((validate, _),) = _pending(settings, busy)
    with steps.using_backend(node):
        pipeline.run_job(settings, validate)
    busy_image = _submission(settings, busy).image_id
    with session_scope(settings) as session:
        job_id = _pending(settings, busy)[0][0]
        assert jobs.claim(session, job_id, "w", 60, 60, node=steps.node_name(settings))
    local_only = node.add_image(make_image({"Cmd": ["c"]}), submission_tag(settings, 99, "image"))

    assert prune(settings.model_copy(update={"image_registry": None}), node) == []
    assert prune(settings.model_copy(update={"image_prune_free_bytes": 1}), node) == []  # room
    low = settings.model_copy(update={"image_prune_free_bytes": 1 << 62})  # always short
    assert prune(low, node) == [submission_tag(settings, idle, "image")]
    sub = _submission(settings, idle)
    assert sub.image_id is not None and sub.image_id not in node.images
    assert busy_image in node.images and local_only in node.images
    assert queued_image in node.images
    # Pulled again, by digest, when a job needs it.
    ensure_local(node, settings, sub.image_id, sub.image_ref)
    assert sub.image_id in node.images
    # A wiped or replaced registry: the records say pushed, but this copy is the only one.
    node.registry.clear()
    assert prune(low, node) == []
    assert sub.image_id in node.images
