"""The baseline's images on the real engine: the T2 algorithm image under the sandbox
flags, and the T3 chain (training image → artifact → inference image built from the
codebase). The runtime image installs torch from wheels in its context; the others build
FROM it; nothing is pulled."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("SimpleITK")

import torch

from baseline_algorithm import build, synthetic, train
from baseline_algorithm.artifact import load_artifact
from baseline_algorithm.inference import predict
from tests.conftest import need
from tests.support import images as im

pytestmark = [pytest.mark.docker, pytest.mark.slow]

REPO_ROOT = Path(__file__).resolve().parents[2]
OUTPUTS = ("probability-covid-19.json", "probability-severe-covid-19.json")
ALGORITHM_TAG = "heldout-test/baseline-algorithm:pytest"
TRAINING_TAG = "heldout-test/baseline-training:pytest"
T3_INFERENCE_TAG = "heldout-test/baseline-t3-inference:pytest"
# The T2 reference flags (contracts.md), plus the read-only root filesystem.
T2_FLAGS = (
    "--network",
    "none",
    "--read-only",
    "--cap-drop",
    "ALL",
    "--security-opt",
    "no-new-privileges",
    "--user",
    "algorithm",
    "--memory",
    "4g",
    "--memory-swap",
    "4g",
    "--pids-limit",
    "256",
    "--shm-size",
    "128m",
)
T3_TRAINING_FLAGS = (
    "--network",
    "none",
    "--cap-drop",
    "ALL",
    "--cap-add",
    "SYS_NICE",
    "--security-opt",
    "no-new-privileges",
    "--user",
    "algorithm",
    "--memory",
    "8g",
    "--pids-limit",
    "1024",
    "--shm-size",
    "1g",
)


def image_present(tag: str) -> bool:
    return subprocess.run(["docker", "image", "inspect", tag], capture_output=True).returncode == 0


@pytest.fixture(scope="module")
def engine() -> Iterator[None]:
    client = im.client_or_none()
    need(client is not None, "a Docker engine")
    if not (image_present("heldout/base:bookworm") and image_present("heldout/python:bookworm")):
        subprocess.run(["bash", str(REPO_ROOT / "scripts" / "base-image.sh")], check=True)
    yield
    for tag in (ALGORITHM_TAG, TRAINING_TAG, T3_INFERENCE_TAG):
        subprocess.run(["docker", "rmi", "--force", tag], capture_output=True)


@pytest.fixture(scope="module")
def runtime(engine: None, tmp_path_factory: pytest.TempPathFactory) -> str:
    try:
        wheels = build.download_wheels(tmp_path_factory.mktemp("wheels"))
    except build.BuildError as exc:
        need(False, f"the images' wheels ({exc})")
        raise
    return build.ensure_runtime(wheels, tmp_path_factory.mktemp("ctx-runtime"))


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("baseline-data")
    synthetic.generate_dataset(root / "train", 8, 64, seed=3, split="train")
    synthetic.generate_dataset(root / "test", 2, 64, seed=3, split="test")
    synthetic.to_training_layout(root / "train", root / "t3-input")
    return root


@pytest.fixture(scope="module")
def host_artifact(data: Path) -> Path:
    out = data / "host-run"
    args = [
        "--input",
        str(data / "t3-input"),
        "--output",
        str(out / "output"),
        "--scratch",
        str(out / "scratch"),
        "--cube",
        "32",
        "--epochs",
        "2",
        "--batch-size",
        "4",
        "--device",
        "cpu",
    ]
    assert train.main(args) == 0
    return out / "output"


@pytest.fixture(scope="module")
def algorithm_image(runtime: str, host_artifact: Path, data: Path) -> str:
    ctx = build.assemble_context("algorithm", data / "ctx-algorithm", artifact_dir=host_artifact)
    build.build_image(ctx, ALGORITHM_TAG)
    return ALGORITHM_TAG


def writable_dir(path: Path) -> Path:
    """A host directory the image's (non-root, unknown uid) user can write."""
    path.mkdir(parents=True)
    path.chmod(0o777)
    return path


def stage_case(data: Path, root: Path, patient_id: str) -> Path:
    ct = root / "images" / "ct"
    ct.mkdir(parents=True)
    # grand-challenge names the file by a random UUID.
    shutil.copyfile(
        data / "test/images/ct" / f"{patient_id}.mha",
        ct / "1b4e28ba-2fa1-11d2-883f-0016d3cca427.mha",
    )
    return root


def docker_run(image: str, flags: tuple[str, ...], mounts: dict[Path, str], *args: str):
    command = ["docker", "run", "--rm", *flags]
    for host, spec in mounts.items():
        command += ["-v", f"{host}:{spec}"]
    return subprocess.run([*command, image, *args], capture_output=True, text=True, timeout=600)


def read_bare_number(path: Path) -> float:
    value = json.loads(path.read_text())
    assert isinstance(value, float), path.read_text()
    assert math.isfinite(value) and 0 <= value <= 1
    return value


def host_prediction(artifact: Path, image: Path) -> tuple[float, float]:
    loaded = load_artifact(artifact)
    return predict(loaded.build_model(), loaded.preprocess_config, image, torch.device("cpu"))


def test_algorithm_image_metadata(algorithm_image: str) -> None:
    inspect = subprocess.run(
        ["docker", "image", "inspect", algorithm_image], capture_output=True, text=True, check=True
    )
    (info,) = json.loads(inspect.stdout)
    assert info["Config"]["User"] == "algorithm"
    assert info["Config"]["Entrypoint"] == ["python", "-m", "baseline_algorithm.inference"]
    print(f"{algorithm_image}: {info['Size'] / 1e6:.0f} MB")
    assert info["Size"] < 1.5e9


def test_algorithm_image_predicts_one_case_in_the_sandbox(
    algorithm_image: str, host_artifact: Path, data: Path, tmp_path: Path
) -> None:
    inp = stage_case(data, tmp_path / "input", "60000")
    out = writable_dir(tmp_path / "output")
    result = docker_run(algorithm_image, T2_FLAGS, {inp: "/input:ro", out: "/output"})
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUTS)
    values = tuple(read_bare_number(out / name) for name in OUTPUTS)
    # Same weights and code as on the host: the same numbers.
    expected = host_prediction(host_artifact, data / "test/images/ct/60000.mha")
    assert values == pytest.approx(expected, abs=1e-5)


def test_algorithm_image_batch_mode(algorithm_image: str, data: Path, tmp_path: Path) -> None:
    inp = tmp_path / "input"
    stage_case(data, inp / "case-0", "60000")
    stage_case(data, inp / "case-1", "60001")
    out = writable_dir(tmp_path / "output")
    result = docker_run(algorithm_image, T2_FLAGS, {inp: "/input:ro", out: "/output"})
    assert result.returncode == 0, result.stderr
    for case in ("case-0", "case-1"):
        assert sorted(p.name for p in (out / case).iterdir()) == sorted(OUTPUTS)
        for name in OUTPUTS:
            read_bare_number(out / case / name)


def test_algorithm_image_without_input_fails_with_a_reason(
    algorithm_image: str, tmp_path: Path
) -> None:
    inp = tmp_path / "input"
    inp.mkdir()
    out = writable_dir(tmp_path / "output")
    result = docker_run(algorithm_image, T2_FLAGS, {inp: "/input:ro", out: "/output"})
    assert result.returncode == 1
    assert "no input image" in result.stderr
    assert list(out.iterdir()) == []


def test_t3_chain_training_image_then_inference_from_the_codebase(
    runtime: str, data: Path, tmp_path: Path
) -> None:
    repo = build.write_codebase(tmp_path / "codebase")
    build.build_image(repo / "training", TRAINING_TAG)
    out = writable_dir(tmp_path / "train-output")
    scratch = writable_dir(tmp_path / "scratch")
    result = docker_run(
        TRAINING_TAG,
        T3_TRAINING_FLAGS,
        {data / "t3-input": "/input:ro", out: "/output", scratch: "/scratch"},
        "--cube",
        "32",
        "--epochs",
        "2",
        "--batch-size",
        "4",
        "--device",
        "auto",
    )
    assert result.returncode == 0, result.stderr
    assert "epoch 2/2" in result.stdout and "device cpu" in result.stdout
    assert {"model.pt", "config.json"} <= {p.name for p in out.iterdir()}
    assert list((scratch / "preprocessed").glob("*.npy"))

    # The platform copies /output into inference/artifact/ and builds inference/.
    shutil.copytree(out, repo / "inference" / "artifact", dirs_exist_ok=True)
    build.build_image(repo / "inference", T3_INFERENCE_TAG)
    inp = stage_case(data, tmp_path / "input", "60001")
    pred = writable_dir(tmp_path / "pred")
    result = docker_run(T3_INFERENCE_TAG, T2_FLAGS, {inp: "/input:ro", pred: "/output"})
    assert result.returncode == 0, result.stderr
    values = tuple(read_bare_number(pred / name) for name in OUTPUTS)
    assert values == pytest.approx(
        host_prediction(out, data / "test/images/ct/60001.mha"), abs=1e-5
    )
