"""Build contexts and the T3 codebase (no engine needed; images are built in
tests/integration/test_baseline_images.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from baseline_algorithm import artifact as artifact_module
from baseline_algorithm import build

TORCH_WHEEL = "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl"


@pytest.fixture
def wheels(tmp_path: Path) -> Path:
    """Stand-in wheel files: contexts only copy them."""
    d = tmp_path / "wheels"
    d.mkdir()
    for name in (TORCH_WHEEL, "numpy-2.4.6-cp311-cp311-manylinux_2_28_x86_64.whl"):
        (d / name).write_bytes(b"wheel " + name.encode())
    return d


def dockerfile_lines(context: Path) -> list[str]:
    return [line.strip() for line in (context / "Dockerfile").read_text().splitlines()]


def test_artifact_file_names_match_the_artifact_module() -> None:
    assert build.ARTIFACT_FILES == (artifact_module.WEIGHTS_FILE, artifact_module.CONFIG_FILE)


def test_runtime_context_installs_the_wheels(wheels: Path, tmp_path: Path) -> None:
    ctx = build.assemble_context("runtime", tmp_path / "ctx", wheels)
    assert sorted(p.name for p in ctx.iterdir()) == [
        ".dockerignore",
        "Dockerfile",
        "requirements.txt",
        "wheels",
    ]
    assert sorted(p.name for p in (ctx / "wheels").iterdir()) == sorted(
        p.name for p in wheels.iterdir()
    )
    lines = dockerfile_lines(ctx)
    assert "FROM heldout/python:bookworm AS deps" in lines
    assert "FROM heldout/base:bookworm" in lines
    assert any("--no-index" in line for line in lines)
    assert "USER algorithm" in lines
    assert "torch==2.13.0" in (ctx / "requirements.txt").read_text().split()


def test_runtime_context_needs_a_torch_wheel(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(build.BuildError, match="torch"):
        build.assemble_context("runtime", tmp_path / "ctx", tmp_path / "empty")
    with pytest.raises(build.BuildError, match="wheel_dir"):
        build.assemble_context("runtime", tmp_path / "ctx")


def test_training_context(tmp_path: Path) -> None:
    ctx = build.assemble_context("training", tmp_path / "ctx", train_args=["--cube", "32"])
    assert sorted(p.name for p in ctx.iterdir()) == [
        ".dockerignore",
        "Dockerfile",
        "baseline_algorithm",
    ]
    source = sorted(p.name for p in (ctx / "baseline_algorithm").iterdir())
    assert {"train.py", "inference.py", "preprocess.py", "model.py", "artifact.py"} <= set(source)
    assert "build.py" not in source and "demo.py" not in source
    assert "__pycache__" not in source and "runtime" not in source
    lines = [line for line in dockerfile_lines(ctx) if line and not line.startswith("#")]
    assert lines[0] == f"FROM {build.RUNTIME_IMAGE}"
    assert 'ENTRYPOINT ["python", "-m", "baseline_algorithm.train"]' in lines
    assert lines[-1] == 'CMD ["--cube", "32"]'


def test_algorithm_context_bakes_in_the_weights(artifact: Path, tmp_path: Path) -> None:
    ctx = build.assemble_context("algorithm", tmp_path / "ctx", artifact_dir=artifact)
    assert (ctx / "artifact" / "model.pt").read_bytes() == (artifact / "model.pt").read_bytes()
    lines = [line for line in dockerfile_lines(ctx) if line]
    assert "COPY artifact/ /opt/algorithm/artifact/" in lines
    assert lines[-1] == 'ENTRYPOINT ["python", "-m", "baseline_algorithm.inference"]'


def test_algorithm_context_refuses_missing_weights(tmp_path: Path) -> None:
    with pytest.raises(build.BuildError, match="artifact_dir"):
        build.assemble_context("algorithm", tmp_path / "ctx")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "model.pt").write_bytes(b"x")
    with pytest.raises(build.BuildError, match=r"config\.json"):
        build.assemble_context("algorithm", tmp_path / "ctx", artifact_dir=tmp_path / "half")


def test_inference_context_without_weights_keeps_an_artifact_dir(tmp_path: Path) -> None:
    ctx = build.assemble_context("inference", tmp_path / "ctx")
    assert [p.name for p in (ctx / "artifact").iterdir()] == [".gitkeep"]


def test_context_is_rebuilt_from_scratch(tmp_path: Path) -> None:
    ctx = build.assemble_context("training", tmp_path / "ctx")
    (ctx / "stale.txt").write_text("left over")
    build.assemble_context("training", ctx)
    assert not (ctx / "stale.txt").exists()


def test_codebase_is_a_t3_repository(tmp_path: Path) -> None:
    repo = build.write_codebase(tmp_path / "repo", runtime_image="org/runtime:1")
    assert {"training", "inference", "README.md", ".gitignore"} <= {p.name for p in repo.iterdir()}
    for part in ("training", "inference"):
        assert "FROM org/runtime:1" in dockerfile_lines(repo / part)
        assert (repo / part / "baseline_algorithm" / "train.py").is_file()
        assert not (repo / part / "wheels").exists()
    assert (repo / "inference" / "artifact").is_dir()


def test_download_wheels_runs_pip_once_per_request(tmp_path: Path) -> None:
    calls = tmp_path / "calls.txt"
    fake_pip = [
        sys.executable,
        "-c",
        f"import sys; open({str(calls)!r}, 'a').write(' '.join(sys.argv[1:]) + '\\n')",
    ]
    dest = tmp_path / "wheels"
    build.download_wheels(dest, torch_wheel=None, pip=fake_pip)
    build.download_wheels(dest, torch_wheel=None, pip=fake_pip)
    (args,) = calls.read_text().splitlines()
    assert "--only-binary=:all:" in args and "--python-version 3.11" in args
    assert build.TORCH_CPU_INDEX in args and "torch==2.13.0" in args
    failing = [sys.executable, "-c", "import sys; sys.exit('no network')"]
    with pytest.raises(build.BuildError, match="no network"):
        build.download_wheels(tmp_path / "other", torch_wheel=None, pip=failing)
