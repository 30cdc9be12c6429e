"""The synthetic chest-CT generator: layout, header, HU, determinism, label signal."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from baseline_algorithm import synthetic
from baseline_algorithm.preprocess import read_patient_info_from_file


def hu(dataset: Path, patient_id: str) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(dataset / "images/ct" / f"{patient_id}.mha")))


def test_layout_labels_and_header(train_set: Path) -> None:
    with (train_set / "labels.csv").open() as handle:
        reader = csv.DictReader(handle)
        assert tuple(reader.fieldnames or ()) == synthetic.LABEL_COLUMNS
        rows = list(reader)
    assert len(rows) == 24
    assert sum(int(r["probCOVID"]) for r in rows) == 12
    assert all(int(r["probSevere"]) <= int(r["probCOVID"]) for r in rows)
    assert sorted(p.stem for p in (train_set / "images/ct").glob("*.mha")) == sorted(
        r["PatientID"] for r in rows
    )
    first = rows[0]
    path = train_set / "images/ct" / f"{first['PatientID']}.mha"
    header = path.read_bytes().split(b"ElementDataFile")[0].decode()
    assert f"PatientAge = {int(first['age']):03d}Y" in header
    assert f"PatientSex = {first['sex']}" in header
    info = read_patient_info_from_file(path)
    assert info.age_years == float(first["age"]) and info.sex == first["sex"]
    image = sitk.ReadImage(str(path))
    assert image.GetSpacing() == pytest.approx(synthetic.DEFAULT_SPACING)  # anisotropic
    assert image.GetSize() == (64, 64, 20)  # 64 * 0.8 / 2.5 = 20.5 -> 20 slices


def test_hounsfield_units_are_chest_like(train_set: Path) -> None:
    volume = hu(train_set, "10000")
    assert volume.dtype == np.int16
    assert abs(np.median(volume[:, 0, :]) + 1000) < 40  # air at the anterior edge
    centre = volume[:, 32, 32]  # mediastinum: soft tissue
    assert 0 < np.median(centre) < 80
    lung = volume[8:12, 27:33, 18:23]  # around the centre of the right lung
    assert -900 < np.median(lung) < -780


def test_positives_hold_ground_glass_inside_the_lungs(train_set: Path) -> None:
    """The learnable signal: voxels in the GGO range are far more common in positives."""
    cases = synthetic.read_labels(train_set)

    def ggo_fraction(patient_id: str) -> float:
        volume = hu(train_set, patient_id).astype(np.float32)
        return float(((volume > -650) & (volume < -300)).mean())

    pos = [ggo_fraction(c.patient_id) for c in cases if c.covid]
    neg = [ggo_fraction(c.patient_id) for c in cases if not c.covid]
    severe = [ggo_fraction(c.patient_id) for c in cases if c.severe]
    mild = [ggo_fraction(c.patient_id) for c in cases if c.covid and not c.severe]
    assert np.median(pos) > 2 * np.median(neg)
    assert np.median(severe) > np.median(mild)


def test_deterministic_and_splits_disjoint(tmp_path: Path) -> None:
    a = synthetic.generate_dataset(tmp_path / "a", 6, 32, seed=5, split="train")
    b = synthetic.generate_dataset(tmp_path / "b", 6, 32, seed=5, split="train")
    test = synthetic.generate_dataset(tmp_path / "t", 6, 32, seed=5, split="test")
    assert a == b
    for case in a:
        assert np.array_equal(
            hu(tmp_path / "a", case.patient_id), hu(tmp_path / "b", case.patient_id)
        )
    assert not {c.patient_id for c in a} & {c.patient_id for c in test}
    synthetic.generate_dataset(tmp_path / "o", 6, 32, seed=6, split="train")
    assert not np.array_equal(hu(tmp_path / "a", "10000"), hu(tmp_path / "o", "10000"))


def test_small_splits_hold_both_classes(tmp_path: Path) -> None:
    cases = synthetic.generate_dataset(tmp_path / "d", 4, 16, seed=0, split="test")
    assert {c.covid for c in cases} == {0, 1}
    with pytest.raises(ValueError, match="split"):
        synthetic.generate_dataset(tmp_path / "x", 2, 16, split="validation")  # type: ignore[arg-type]


def test_cli(tmp_path: Path, capsys) -> None:
    out = tmp_path / "cli"
    code = synthetic.main(
        [
            str(out),
            "--cases",
            "3",
            "--size",
            "24",
            "--seed",
            "2",
            "--split",
            "test",
            "--spacing",
            "1.0",
            "1.0",
            "3.0",
        ]
    )
    assert code == 0
    assert "wrote 3 cases" in capsys.readouterr().out
    image = sitk.ReadImage(str(next((out / "images/ct").glob("*.mha"))))
    assert image.GetSpacing() == pytest.approx((1.0, 1.0, 3.0))
    assert image.GetSize() == (24, 24, 8)


def test_training_layout(train_set: Path, t3_input: Path) -> None:
    assert (t3_input / "metadata/reference.csv").read_text() == (
        train_set / "labels.csv"
    ).read_text()
    assert len(list((t3_input / "data/mha").glob("*.mha"))) == 24
