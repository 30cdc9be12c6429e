"""The default evaluation image on the real engine: built offline, run without network with
the ground truth mounted read-only (or baked into a derived image), as the worker runs it."""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import numpy as np
import pytest
from docker.errors import DockerException
from sklearn.metrics import roc_auc_score

from evaluation import EVALUATOR_VERSION
from evaluation.build_image import BASE_IMAGE, build_evaluation_image
from tests.conftest import need

pytestmark = [pytest.mark.docker, pytest.mark.slow]

TAG = "heldout/evaluation:it"
SEVERE = "probability-severe-covid-19"
COVID = "probability-covid-19"
CONFIG = {
    "primary": "auc-severity",
    "bootstrap_resamples": 500,
    "bootstrap_seed": 20211,
    "ci_level": 0.95,
    "metrics": [
        {"name": "auc-severity", "kind": "auc", "output": SEVERE, "label": "probSevere",
         "subset_label": "probCOVID", "subset_value": 1, "classes": None,
         "higher_is_better": True},
        {"name": "auc-covid", "kind": "auc", "output": COVID, "label": "probCOVID",
         "subset_label": None, "subset_value": None, "classes": None, "higher_is_better": True},
    ],
}  # fmt: skip


@pytest.fixture(scope="module")
def client() -> Iterator[docker.DockerClient]:
    try:
        c = docker.from_env()
        c.ping()
    except DockerException:
        need(False, "a Docker engine")
    need(bool(c.images.list(name=BASE_IMAGE)), f"base image {BASE_IMAGE} (scripts/base-image.sh)")
    yield c
    c.close()


@pytest.fixture(scope="module")
def image(client: docker.DockerClient) -> str:
    return build_evaluation_image(client, TAG)


class Data:
    def __init__(self, root: Path, n: int = 150) -> None:
        rng = np.random.default_rng(5)
        self.cases = [str(4000 + i) for i in range(n)]
        self.covid = rng.integers(0, 2, n)
        self.severe = self.covid * (rng.random(n) < 0.35)
        self.p_covid = np.clip(0.4 * self.covid + 0.6 * rng.random(n), 0, 1)
        self.p_severe = np.clip(0.3 * self.severe + 0.7 * rng.random(n), 0, 1)
        self.gt = root / "ground_truth"
        self.input = root / "input"
        self.output = root / "output"
        for d in (self.gt, self.input, self.output):
            d.mkdir()
        self.output.chmod(0o777)  # written by the image's non-root user
        rows = zip(self.cases, self.covid, self.severe, strict=True)
        (self.gt / "labels.csv").write_text(
            "PatientID,probCOVID,probSevere\n" + "".join(f"{c},{v},{s}\n" for c, v, s in rows)
        )
        (self.gt / "metrics.json").write_text(json.dumps(CONFIG))
        self.write_predictions(self.jobs())

    def jobs(self) -> list[dict[str, Any]]:
        return [
            {
                "pk": f"job-{c}",
                "inputs": [{"interface": {"slug": "ct-image"}, "image": {"name": f"{c}.mha"}}],
                "outputs": [
                    {"interface": {"slug": COVID}, "value": float(pc)},
                    {"socket": {"slug": SEVERE}, "value": float(ps)},
                ],
            }
            for c, pc, ps in zip(self.cases, self.p_covid, self.p_severe, strict=True)
        ]

    def write_predictions(self, jobs: list[dict[str, Any]]) -> None:
        (self.input / "predictions.json").write_text(json.dumps(jobs))


def run(
    client: docker.DockerClient, image: str, data: Data, *, mount_gt: bool = True
) -> tuple[int, str]:
    volumes = {
        str(data.input): {"bind": "/input", "mode": "ro"},
        str(data.output): {"bind": "/output", "mode": "rw"},
    }
    if mount_gt:
        volumes[str(data.gt)] = {"bind": "/opt/ml/input/data/ground_truth", "mode": "ro"}
    container = client.containers.run(
        image,
        detach=True,
        network_mode="none",
        read_only=True,
        cap_drop=["ALL"],
        security_opt=["no-new-privileges"],
        mem_limit="1g",
        pids_limit=128,
        volumes=volumes,
    )
    try:
        status = container.wait(timeout=300)["StatusCode"]
        return status, container.logs(stdout=True, stderr=False).decode()
    finally:
        container.remove(force=True)


def test_image_is_non_root_and_runs_the_evaluation_module(
    client: docker.DockerClient, image: str
) -> None:
    config = client.images.get(image).attrs["Config"]
    assert config["User"] == "10001:10001"
    assert config["Entrypoint"] == ["python3", "-m", "evaluation"]
    assert config["Labels"]["org.heldout.evaluator-version"] == EVALUATOR_VERSION


def test_scores_a_stoic_submission_offline_with_read_only_ground_truth(
    client: docker.DockerClient, image: str, tmp_path: Path
) -> None:
    data = Data(tmp_path)
    status, stdout = run(client, image, data)
    assert status == 0, stdout
    out = json.loads((data.output / "metrics.json").read_text())
    pos = data.covid == 1
    severity = out["aggregates"]["auc-severity"]
    assert severity["value"] == pytest.approx(
        roc_auc_score(data.severe[pos], data.p_severe[pos]), abs=1e-12
    )
    assert severity["ci_lower"] < severity["value"] < severity["ci_upper"]
    assert severity["n"] == int(pos.sum()) and severity["n_resamples"] == 500
    assert out["aggregates"]["auc-covid"]["value"] == pytest.approx(
        roc_auc_score(data.covid, data.p_covid), abs=1e-12
    )
    assert out["predictions"]["auc-severity"]["y_true"] == data.severe[pos].tolist()
    assert len(out["roc"]["auc-severity"]["fpr"]) == 101
    assert out["evaluator_version"] == EVALUATOR_VERSION
    assert json.loads(stdout)["evaluated"]["value"] == severity["value"]


def test_invalid_predictions_fail_with_a_json_error_naming_the_case(
    client: docker.DockerClient, image: str, tmp_path: Path
) -> None:
    data = Data(tmp_path)
    jobs = data.jobs()
    jobs[3]["outputs"][1]["value"] = 1.5
    data.write_predictions(jobs[:-1])  # and the last case is missing
    status, stdout = run(client, image, data)
    assert status == 1
    error = json.loads(stdout.strip())["error"]
    assert error["kind"] == "invalid_predictions" and error["cases"] == [data.cases[-1]]
    assert json.loads((data.output / "metrics.json").read_text())["error"] == error

    data.write_predictions(jobs)
    status, stdout = run(client, image, data)
    error = json.loads(stdout.strip())["error"]
    assert status == 1 and error["cases"] == [data.cases[3]] and error["interface"] == SEVERE


def test_ground_truth_baked_into_a_derived_image(
    client: docker.DockerClient, image: str, tmp_path: Path
) -> None:
    data = Data(tmp_path)
    context = io.BytesIO()
    with tarfile.open(fileobj=context, mode="w") as tar:
        dockerfile = f"FROM {TAG}\nCOPY labels.csv metrics.json /opt/evaluation/ground-truth/\n"
        for name, payload in (
            ("Dockerfile", dockerfile.encode()),
            ("labels.csv", (data.gt / "labels.csv").read_bytes()),
            ("metrics.json", (data.gt / "metrics.json").read_bytes()),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    context.seek(0)
    derived, _ = client.images.build(
        fileobj=context, custom_context=True, tag=f"{TAG}-baked", network_mode="none", rm=True
    )
    try:
        status, stdout = run(client, derived.id, data, mount_gt=False)
        assert status == 0, stdout
        assert json.loads(stdout)["evaluated"]["primary"] == "auc-severity"
    finally:
        client.images.remove(derived.id, force=True)
