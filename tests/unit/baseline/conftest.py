"""Synthetic data and a quickly trained artifact, shared by the baseline's unit tests."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("SimpleITK")

from baseline_algorithm import synthetic, train

# 64 voxels in-plane at 0.8 mm is 32 voxels at 1.6 mm: the cube size the tests use.
SIZE = 64
CUBE = 32


@pytest.fixture(scope="session")
def train_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synthetic") / "train"
    synthetic.generate_dataset(out, cases=24, size=SIZE, seed=0, split="train")
    return out


@pytest.fixture(scope="session")
def t3_input(train_set: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The training set as the T3 training container sees /input."""
    return synthetic.to_training_layout(train_set, tmp_path_factory.mktemp("t3") / "input")


@pytest.fixture(scope="session")
def artifact(t3_input: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Weights and config from a short training run (a few seconds on CPU)."""
    root = tmp_path_factory.mktemp("trained")
    code = train.main(
        [
            "--input",
            str(t3_input),
            "--output",
            str(root / "output"),
            "--scratch",
            str(root / "scratch"),
            "--cube",
            str(CUBE),
            "--epochs",
            "2",
            "--batch-size",
            "8",
            "--device",
            "cpu",
        ]
    )
    assert code == 0
    return root / "output"
