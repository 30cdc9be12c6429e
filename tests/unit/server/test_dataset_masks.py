"""Reference masks in a dataset: ground-truth/<name>/<case><ext>, one per case, digested."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.datasets import manifest as mf
from server.datasets.service import input_files, truth_files
from server.errors import InvalidInput


def _dataset(root: Path, masks: dict[str, bytes] | None) -> Path:
    (root / "images" / "ct").mkdir(parents=True)
    (root / "labels.csv").write_text("case,site\n1.2.3,a\n1.2.3.4,b\n")
    for case in ("1.2.3", "1.2.3.4"):
        (root / "images" / "ct" / f"{case}.mha").write_bytes(f"ct {case}".encode())
    if masks is not None:
        (root / "ground-truth" / "lungs").mkdir(parents=True)
        for case, data in masks.items():
            (root / "ground-truth" / "lungs" / f"{case}.mha").write_bytes(data)
    return root


def test_masks_are_read_per_case_and_change_the_digest(tmp_path: Path) -> None:
    plain = mf.scan(_dataset(tmp_path / "plain", None))
    with_masks = mf.scan(_dataset(tmp_path / "m", {"1.2.3": b"m1", "1.2.3.4": b"m2"}))
    assert plain.truth == {}
    assert set(with_masks.truth) == {"1.2.3", "1.2.3.4"}  # DICOM-UID-style ids kept apart
    assert with_masks.truth["1.2.3.4"]["lungs"].relpath == "ground-truth/lungs/1.2.3.4.mha"
    assert with_masks.digest != plain.digest
    changed = mf.scan(_dataset(tmp_path / "c", {"1.2.3": b"m1", "1.2.3.4": b"other"}))
    assert changed.digest != with_masks.digest


def test_a_folder_missing_a_case_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="no mask for 1 case"):
        mf.scan(_dataset(tmp_path, {"1.2.3": b"m1"}))


def test_masks_are_kept_apart_from_algorithm_inputs() -> None:
    files = {"ct": {"digest": "a"}, "truth:lungs": {"digest": "b"}}
    assert input_files(files) == {"ct": {"digest": "a"}}
    assert truth_files(files) == {"lungs": {"digest": "b"}}
