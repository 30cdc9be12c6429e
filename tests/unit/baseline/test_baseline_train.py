"""T3 training entry point: inputs, artifact, determinism, cache, and what it learns."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from baseline_algorithm import synthetic, train
from baseline_algorithm.artifact import FORMAT, load_artifact
from baseline_algorithm.inference import predict
from baseline_algorithm.preprocess import PatientInfo

from .conftest import CUBE, SIZE


def run_train(input_dir: Path, out: Path, *extra: str) -> int:
    return train.main(
        [
            "--input",
            str(input_dir),
            "--output",
            str(out / "output"),
            "--scratch",
            str(out / "scratch"),
            "--cube",
            str(CUBE),
            "--batch-size",
            "8",
            "--device",
            "cpu",
            *extra,
        ]
    )


def test_artifact_holds_weights_config_and_per_epoch_losses(artifact: Path, t3_input: Path) -> None:
    config = json.loads((artifact / "config.json").read_text())
    assert config["format"] == FORMAT
    assert config["preprocess"]["cube"] == CUBE
    assert config["preprocess"]["spacing_mm"] == 1.6
    assert config["training"]["cases"] == 24
    assert [h["epoch"] for h in config["history"]] == [1, 2]
    loaded = load_artifact(artifact)
    assert loaded.preprocess_config.cube == CUBE
    loaded.build_model()  # the state dict fits the stored architecture


def test_prints_per_epoch_loss(t3_input: Path, tmp_path: Path, capsys) -> None:
    assert run_train(t3_input, tmp_path, "--epochs", "3") == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch")]
    assert [line.split()[1] for line in lines] == ["1/3", "2/3", "3/3"]
    assert all(float(line.split()[3]) > 0 for line in lines)


def test_same_seed_same_weights_other_seed_other_weights(t3_input: Path, tmp_path: Path) -> None:
    for name, seed in (("a", "7"), ("b", "7"), ("c", "8")):
        assert run_train(t3_input, tmp_path / name, "--epochs", "2", "--seed", seed) == 0
    weights = {
        name: torch.load(tmp_path / name / "output" / "model.pt", weights_only=True)
        for name in "abc"
    }
    for key, value in weights["a"].items():
        assert torch.equal(value, weights["b"][key]), key
    assert any(not torch.equal(v, weights["c"][k]) for k, v in weights["a"].items())
    history = {
        name: json.loads((tmp_path / name / "output" / "config.json").read_text())["history"]
        for name in "ab"
    }
    assert [h["loss"] for h in history["a"]] == [h["loss"] for h in history["b"]]


def test_preprocessed_cubes_are_cached_in_scratch(t3_input: Path, tmp_path: Path) -> None:
    assert run_train(t3_input, tmp_path, "--epochs", "1") == 0
    cached = sorted((tmp_path / "scratch" / "preprocessed").glob("*.npy"))
    assert len(cached) == 24
    assert np.load(cached[0]).shape == (CUBE, CUBE, CUBE)
    stamps = [p.stat().st_mtime_ns for p in cached]
    assert run_train(t3_input, tmp_path, "--epochs", "1") == 0
    assert [p.stat().st_mtime_ns for p in cached] == stamps  # reused, not rewritten


def test_missing_image_fails_naming_the_case(t3_input: Path, tmp_path: Path, capsys) -> None:
    broken = tmp_path / "input"
    shutil.copytree(t3_input, broken)
    victim = sorted((broken / "data" / "mha").glob("*.mha"))[0]
    victim.unlink()
    assert run_train(broken, tmp_path / "run", "--epochs", "1") == 1
    err = capsys.readouterr().err
    assert "training failed" in err and victim.stem in err
    assert not (tmp_path / "run" / "output" / "model.pt").exists()


def test_reference_without_label_column_fails(t3_input: Path, tmp_path: Path, capsys) -> None:
    broken = tmp_path / "input"
    shutil.copytree(t3_input, broken)
    reference = broken / "metadata" / "reference.csv"
    rows = list(csv.DictReader(reference.open()))
    with reference.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["PatientID", "probCOVID"])
        writer.writeheader()
        writer.writerows({"PatientID": r["PatientID"], "probCOVID": r["probCOVID"]} for r in rows)
    assert run_train(broken, tmp_path / "run", "--epochs", "1") == 1
    assert "probSevere" in capsys.readouterr().err


def test_stoic_reference_with_only_three_columns(t3_input: Path, tmp_path: Path) -> None:
    """STOIC's reference.csv has no age/sex: those come from the image header."""
    plain = tmp_path / "input"
    shutil.copytree(t3_input, plain)
    reference = plain / "metadata" / "reference.csv"
    rows = list(csv.DictReader(reference.open()))
    with reference.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=train.REQUIRED_COLUMNS)
        writer.writeheader()
        writer.writerows({k: r[k] for k in train.REQUIRED_COLUMNS} for r in rows)
    cases = train.read_cases(plain / "data" / "mha", reference)
    by_id = {r["PatientID"]: r for r in rows}
    for case in cases:
        assert case.info == PatientInfo(
            float(by_id[case.patient_id]["age"]), by_id[case.patient_id]["sex"]
        )


def test_device_resolution() -> None:
    assert train.resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert train.resolve_device("auto").type == expected
    if not torch.cuda.is_available():
        with pytest.raises(train.TrainingError, match="CUDA"):
            train.resolve_device("cuda")


@pytest.mark.slow
def test_reaches_a_useful_auc_on_the_synthetic_test_split(tmp_path: Path) -> None:
    """About 30 s of CPU training; a random predictor stays near 0.5 on the same split."""
    synthetic.generate_dataset(tmp_path / "train", 200, SIZE, seed=1, split="train")
    test_cases = synthetic.generate_dataset(tmp_path / "test", 80, SIZE, seed=1, split="test")
    t3 = synthetic.to_training_layout(tmp_path / "train", tmp_path / "t3")
    assert run_train(t3, tmp_path / "run", "--epochs", "60", "--seed", "1") == 0

    loaded = load_artifact(tmp_path / "run" / "output")
    model = loaded.build_model()
    scores = [
        predict(
            model,
            loaded.preprocess_config,
            tmp_path / "test/images/ct" / f"{c.patient_id}.mha",
            torch.device("cpu"),
        )
        for c in test_cases
    ]
    covid = [c.covid for c in test_cases]
    auc_covid = roc_auc_score(covid, [s[0] for s in scores])
    positives = [i for i, c in enumerate(test_cases) if c.covid]
    auc_severe = roc_auc_score(
        [test_cases[i].severe for i in positives], [scores[i][1] for i in positives]
    )
    rng = np.random.default_rng(0)
    random_aucs = [roc_auc_score(covid, rng.uniform(size=len(covid))) for _ in range(500)]
    print(
        f"AUC COVID-19 {auc_covid:.3f}, severe {auc_severe:.3f}; 500 random predictors: "
        f"mean {np.mean(random_aucs):.3f}, best {max(random_aucs):.3f}"
    )
    assert auc_covid > 0.85
    assert auc_severe > 0.65
    assert abs(np.mean(random_aucs) - 0.5) < 0.02
    assert auc_covid > max(random_aucs)  # no lucky guess comes close
