"""An organizer's own evaluation image (grand-challenge style, written like an evalutils
program), uploaded as a `docker save` archive and named by the phase: the same intake as an
algorithm image, run through the executor with no network and the ground truth read-only;
its score and extra columns read from /output/metrics.json by JSON path, with bootstrap CIs
from its per-case values. Its failures are the platform's: never charged, the participant
reads fixed words, the organizer reads its stderr.

Real engine, Redis, a Celery worker; SQLite and PostgreSQL."""

from __future__ import annotations

import io
import json
import statistics
import tarfile
import textwrap
from pathlib import Path
from typing import Any

import docker
import pytest
from fastapi.testclient import TestClient

from tests.conftest import need
from tests.support import images
from tests.support.factories import apply_bundle, auth, stoic_bundle, upload_bytes, user_token
from tests.support.netprobe import ConnectionCounter
from tests.support.workers import celery_worker, wait_final
from worker.messages import EVALUATION_FAILED_MESSAGE

pytestmark = [pytest.mark.docker, pytest.mark.redis, pytest.mark.slow]

PYTHON_BASE = "heldout/python:bookworm"
N_CASES = 6
AGES = [30 + 8 * i for i in range(N_CASES)]
COVID = [int(i >= 2) for i in range(N_CASES)]

# A minimal evalutils-style evaluation: load the predictions and the ground truth, score
# each case, write `case` (column -> {row: value}, as pandas' to_dict() writes it) and
# `aggregates` (column -> statistics, as describe() does). MODE is set per image.
EVALUATION = """
import csv, json, math, os, socket, sys

MODE = "{mode}"
GT = "/opt/ml/input/data/ground_truth"


def slug_of(item):
    interface = item.get("interface") or item.get("socket")
    return interface["slug"] if isinstance(interface, dict) else interface


def value_of(job, slug):
    for item in job["outputs"]:
        if slug_of(item) == slug:
            if "value" in item:
                return item["value"]
            with open(item["file"]) as f:
                return json.load(f)
    raise KeyError(slug)


class ClassificationEvaluation:
    def __init__(self):
        with open(GT + "/labels.csv") as f:
            self.labels = {{row["PatientID"]: row for row in csv.DictReader(f)}}
        with open(GT + "/extra/threshold.json") as f:  # from the ground-truth tarball
            self.threshold = json.load(f)["threshold"]
        with open("/input/predictions.json") as f:
            self.jobs = json.load(f)

    def score_case(self, job):
        name = job["inputs"][0]["image"]["name"].split(".")[0]
        p = float(value_of(job, "probability-covid-19"))
        y = int(self.labels[name]["probCOVID"])
        return name, (p - y) ** 2, float((p >= self.threshold) == bool(y))

    def evaluate(self):
        rows = [self.score_case(job) for job in self.jobs]
        case = {{
            "case_id": {{str(i): r[0] for i, r in enumerate(rows)}},
            "brier": {{str(i): r[1] for i, r in enumerate(rows)}},
            "accuracy": {{str(i): r[2] for i, r in enumerate(rows)}},
        }}
        brier = [r[1] for r in rows]
        mean = sum(brier) / len(brier)
        aggregates = {{
            "brier": {{"mean": mean, "count": len(brier), "max": max(brier)}},
            "accuracy": {{"mean": sum(r[2] for r in rows) / len(rows)}},
        }}
        if MODE == "network":
            interfaces = [l.split(":")[0].strip() for l in open("/proc/net/dev").readlines()[2:]]
            port = int(open(GT + "/extra/port.txt").read())
            try:
                socket.create_connection(("127.0.0.1", port), timeout=2).close()
                reached = 1.0
            except OSError:
                reached = 0.0
            print("interfaces:", interfaces, file=sys.stderr)
            aggregates["interfaces"] = {{"mean": float(len(interfaces))}}
            aggregates["only-lo"] = {{"mean": float(interfaces == ["lo"])}}
            aggregates["reached"] = {{"mean": reached}}
        if MODE == "missing":
            del aggregates["brier"]
            print("wrote metrics without brier (organizer bug)", file=sys.stderr)
        if MODE == "exit1":
            print("Traceback: KeyError ORGANIZER-ONLY-TRACE case P003", file=sys.stderr)
            sys.exit(1)
        with open("/output/metrics.json", "w") as f:
            json.dump({{"case": case, "aggregates": aggregates}}, f)


ClassificationEvaluation().evaluate()
"""


@pytest.fixture
def live(pg_live: Any) -> Any:
    # Slow (an image built and run per test): once, on PostgreSQL; the evaluation step's
    # database paths are those of test_pipeline_t2.py, run on both.
    _, _, client = pg_live
    need(bool(client.images.list(name=PYTHON_BASE)), f"base image {PYTHON_BASE}")
    return pg_live


def build_evaluation(
    client: docker.DockerClient,
    mode: str,
    dest: Path,
    *,
    user: str | None = "evaluator",
    script: str = EVALUATION,
) -> Path:
    """The organizer's evaluation image, built offline from the local Python base and
    saved as the archive an organizer uploads."""
    lines = [
        f"FROM {PYTHON_BASE}",
        "RUN useradd --create-home --uid 1002 --user-group evaluator",
        "COPY evaluation.py /opt/evaluation/evaluation.py",
        "WORKDIR /opt/evaluation",
        *([f"USER {user}"] if user else []),
        "ENTRYPOINT python3 -u /opt/evaluation/evaluation.py $0 $@",
    ]
    context = io.BytesIO()
    with tarfile.open(fileobj=context, mode="w") as tar:
        for name, text in (
            ("Dockerfile", "\n".join(lines)),
            ("evaluation.py", textwrap.dedent(script.format(mode=mode))),
        ):
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    context.seek(0)
    tag = f"heldout-test/organizer-evaluation-{mode}:latest"
    client.images.build(
        fileobj=context, custom_context=True, tag=tag, rm=True, forcerm=True, network_mode="none"
    )
    return images.save_image(client, [tag], dest / f"evaluation-{mode}.tar.gz", gz=True)


def ground_truth_tarball(extra: dict[str, str], folder: str = "extra") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, text in extra.items():
            data = text.encode()
            info = tarfile.TarInfo(f"{folder}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _challenge(
    live: Any, tmp_path: Path, mode: str, *, port: int = 9, user: str | None = "evaluator"
) -> tuple[str, Any]:
    settings, api, client = live
    admin = user_token(settings, "organizer", admin=True)
    archive = build_evaluation(client, mode, tmp_path, user=user)
    image_key = upload_bytes(api, admin, archive.read_bytes(), "evaluation.tar.gz")
    gt_key = upload_bytes(
        api,
        admin,
        ground_truth_tarball({"threshold.json": '{"threshold": 0.5}', "port.txt": str(port)}),
        "ground-truth.tar.gz",
    )
    columns: dict[str, Any] = {"accuracy": "aggregates.accuracy.mean"}
    if mode == "network":
        columns |= {
            "interfaces": "aggregates.interfaces.mean",
            "only-lo": "aggregates.only-lo.mean",
            "reached": "aggregates.reached.mean",
        }
    bundle = stoic_bundle(
        slug="orgeval",
        extra_phase={
            "metrics": None,
            "evaluation": {
                "image": image_key,
                "ground_truth": gt_key,
                "name": "brier",
                "score": "aggregates.brier.mean",
                "higher_is_better": False,
                "per_case": "case",
                "columns": columns,
            },
        },
    )
    dataset = images.write_ct_dataset(
        tmp_path / "test",
        ((f"P{i:03d}", AGES[i], COVID[i], int(i in (3, 5))) for i in range(N_CASES)),
    )
    return admin, apply_bundle(api, admin, bundle, {"test": dataset})


def _submit(live: Any, tmp_path: Path) -> tuple[str, dict[str, Any]]:
    settings, api, client = live
    tag = images.build_image(client, "orgeval-algorithm", images.WELL_BEHAVED)
    archive = images.save_image(client, [tag], tmp_path / "algorithm.tar.gz", gz=True)
    alice = user_token(settings, "alice")
    key = upload_bytes(api, alice, archive.read_bytes())
    r = api.post(
        "/api/v1/challenges/orgeval/phases/qualification/submissions",
        json={"upload": key},
        headers=auth(alice),
    )
    assert r.status_code == 201, r.text
    return alice, dict(r.json())


def _board(api: TestClient, token: str) -> dict[str, Any]:
    r = api.get("/api/v1/challenges/orgeval/phases/qualification/leaderboard", headers=auth(token))
    assert r.status_code == 200, r.text
    return dict(r.json())


def test_submission_is_scored_by_the_organizers_image(live: Any, tmp_path: Path) -> None:
    settings, api, _ = live
    admin, applied = _challenge(live, tmp_path, "good")
    assert applied.status_code == 200, applied.text
    # The upload keys are stored as the digests of what was vetted.
    phase = api.get("/api/v1/challenges/orgeval/phases/qualification", headers=auth(admin)).json()
    assert phase["evaluation"]["image"].startswith("sha256:")
    assert phase["evaluation"]["ground_truth"].startswith("sha256:")
    alice, sub = _submit(live, tmp_path)
    with celery_worker(settings):
        final = wait_final(api, alice, sub["id"])
    assert final["status"] == "succeeded", final
    # WELL_BEHAVED predicts age/100 for COVID.
    brier = [(a / 100 - y) ** 2 for a, y in zip(AGES, COVID, strict=True)]
    accuracy = statistics.mean(
        float((a / 100 >= 0.5) == bool(y)) for a, y in zip(AGES, COVID, strict=True)
    )
    board = _board(api, alice)
    assert board["primary_metric"] == "brier" and board["higher_is_better"] is False
    (entry,) = board["entries"]
    assert entry["team"] == "alice" and entry["rank"] == 1
    assert entry["value"] == pytest.approx(statistics.mean(brier))
    # The 95% percentile bootstrap interval of the per-case mean.
    lo, hi = entry["ci"]
    assert lo is not None and hi is not None
    assert min(brier) <= lo < entry["value"] < hi <= max(brier)
    acc = entry["metrics"]["accuracy"]
    assert acc["value"] == pytest.approx(accuracy)
    assert acc["ci_lower"] is not None and acc["ci_lower"] <= acc["value"] <= acc["ci_upper"]
    # The same board twice: the bootstrap is seeded.
    assert _board(api, alice)["entries"][0]["ci"] == [lo, hi]
    assert (
        "evaluation"
        not in api.get(
            "/api/v1/challenges/orgeval/phases/qualification", headers=auth(alice)
        ).json()
    )


@pytest.mark.parametrize("mode", ["exit1", "missing"])
def test_broken_evaluation_is_not_charged_and_its_log_is_the_organizers(
    live: Any, tmp_path: Path, mode: str
) -> None:
    settings, api, _ = live
    admin, applied = _challenge(live, tmp_path, mode)
    assert applied.status_code == 200, applied.text
    alice, sub = _submit(live, tmp_path)
    with celery_worker(settings):
        final = wait_final(api, alice, sub["id"])
    assert final["status"] == "failed", final
    assert final["failure_code"] == "evaluation_config_error"
    assert final["failure_message"] == EVALUATION_FAILED_MESSAGE
    assert final["charged"] is False
    assert final["operator_detail"] is None
    text = json.dumps(final)
    assert "ORGANIZER-ONLY" not in text and "P003" not in text and "brier" not in text
    organizer = api.get(f"/api/v1/submissions/{sub['id']}", headers=auth(admin)).json()
    detail = organizer["operator_detail"]
    if mode == "exit1":
        assert "exit" in detail and "ORGANIZER-ONLY-TRACE case P003" in detail
    else:
        assert "aggregates.brier.mean" in detail and "wrote metrics without brier" in detail
    assert _board(api, alice)["entries"] == []
    # Marked for the organizers: an event on the challenge, naming the submission.
    events = api.get("/api/v1/challenges/orgeval/events", headers=auth(admin)).json()
    assert [(e["kind"], e["submission_id"]) for e in events] == [
        ("evaluation_config_error", sub["id"])
    ]


def test_evaluation_image_sees_only_loopback(live: Any, tmp_path: Path) -> None:
    settings, api, _ = live
    with ConnectionCounter() as probe:
        _, applied = _challenge(live, tmp_path, "network", port=probe.port)
        assert applied.status_code == 200, applied.text
        alice, sub = _submit(live, tmp_path)
        with celery_worker(settings):
            final = wait_final(api, alice, sub["id"])
        assert final["status"] == "succeeded", final
        assert probe.connections == 0
    metrics = _board(api, alice)["entries"][0]["metrics"]
    assert metrics["interfaces"]["value"] == 1.0
    assert metrics["only-lo"]["value"] == 1.0
    assert metrics["reached"]["value"] == 0.0


def test_root_evaluation_image_is_refused_at_apply(live: Any, tmp_path: Path) -> None:
    _, applied = _challenge(live, tmp_path, "good", user=None)
    assert applied.status_code == 422, applied.text
    message = json.dumps(applied.json())
    assert "evaluation image" in message and "root" in message.lower()


# A file output: the algorithm writes a "mask" (a row of ten voxels, age // 10 of them set);
# the organizer's image reads it from /input/<pk>/output/mask.mha and scores it with Dice
# against the reference masks of its ground-truth tarball (five voxels set).
MASK_ALGORITHM = """
import glob
(path,) = glob.glob("/input/images/ct/*.mha")
age = 50
for line in open(path, "rb"):
    key, _, value = line.decode(errors="replace").partition(" = ")
    if key.strip() == "PatientAge":
        age = int(value.strip().rstrip("Y"))
    if key.strip() == "ElementDataFile":
        break
k = age // 10
open("/output/mask.mha", "w").write("1" * k + "0" * (10 - k))
"""

MASK_EVALUATION = """
import json, sys
MODE = "{mode}"
GT = "/opt/ml/input/data/ground_truth"
jobs = json.load(open("/input/predictions.json"))
dice = {{}}
for i, job in enumerate(jobs):
    name = job["inputs"][0]["image"]["name"].split(".")[0]
    (item,) = [o for o in job["outputs"] if o["interface"] == "mask"]
    pred = open(item["file"]).read()
    ref = open(GT + "/masks/" + name + ".txt").read()
    both = sum(p == r == "1" for p, r in zip(pred, ref))
    dice[str(i)] = 2 * both / (pred.count("1") + ref.count("1"))
mean = sum(dice.values()) / len(dice)
json.dump({{"case": {{"dice": dice}}, "aggregates": {{"dice": {{"mean": mean}}}}}},
          open("/output/metrics.json", "w"))
"""


def test_file_outputs_reach_the_organizers_image(live: Any, tmp_path: Path) -> None:
    settings, api, client = live
    admin = user_token(settings, "organizer", admin=True)
    archive = build_evaluation(client, "mask", tmp_path, script=MASK_EVALUATION)
    image_key = upload_bytes(api, admin, archive.read_bytes(), "evaluation.tar.gz")
    masks = {f"P{i:03d}.txt": "1" * 5 + "0" * 5 for i in range(N_CASES)}
    gt_key = upload_bytes(api, admin, ground_truth_tarball(masks, "masks"), "masks.tar.gz")
    bundle = stoic_bundle(
        slug="orgeval",
        extra_phase={
            "outputs": [{"slug": "mask", "kind": "file", "extension": ".mha"}],
            "metrics": None,
            "evaluation": {
                "image": image_key,
                "ground_truth": gt_key,
                "name": "dice",
                "score": "aggregates.dice.mean",
                "per_case": "case",
            },
        },
    )
    dataset = images.write_ct_dataset(
        tmp_path / "test",
        ((f"P{i:03d}", AGES[i], COVID[i], 0) for i in range(N_CASES)),
    )
    r = apply_bundle(api, admin, bundle, {"test": dataset})
    assert r.status_code == 200, r.text
    tag = images.build_image(client, "orgeval-mask", MASK_ALGORITHM)
    algorithm = images.save_image(client, [tag], tmp_path / "mask.tar.gz", gz=True)
    alice = user_token(settings, "alice")
    key = upload_bytes(api, alice, algorithm.read_bytes())
    sub = api.post(
        "/api/v1/challenges/orgeval/phases/qualification/submissions",
        json={"upload": key},
        headers=auth(alice),
    ).json()
    with celery_worker(settings):
        final = wait_final(api, alice, sub["id"])
    assert final["status"] == "succeeded", final
    dice = [2 * min(a // 10, 5) / (a // 10 + 5) for a in AGES]
    (entry,) = _board(api, alice)["entries"]
    assert entry["value"] == pytest.approx(statistics.mean(dice))
    lo, hi = entry["ci"]
    assert lo is not None and min(dice) <= lo <= entry["value"] <= hi <= max(dice)
