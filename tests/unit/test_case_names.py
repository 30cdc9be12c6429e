"""How dataset files are named to cases: by the labels.csv ids, so DICOM-UID-style ids and
compound extensions both work, and the same rule for run-local's own cases."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from server.datasets.manifest import scan, split_case_file
from server.errors import InvalidInput

UID = "1.2.826.0.1.3680043.8.498.10025629581362719577423478931166574701"


@pytest.mark.parametrize(
    ("name", "ids", "expected"),
    [
        (f"{UID}.mha", {UID}, (UID, ".mha")),
        ("P001.nii.gz", {"P001"}, ("P001", ".nii.gz")),
        # The longest id the name continues with a dot.
        ("P1.v2.mha", {"P1", "P1.v2"}, ("P1.v2", ".mha")),
        ("P1.mha", {"P1", "P1.v2"}, ("P1", ".mha")),
        ("P2.mha", {"P1"}, None),
        ("P1", {"P1"}, None),  # no extension
        # No labels: the compound or last suffix goes.
        (f"{UID}.mha", None, (UID, ".mha")),
        ("P001.NII.GZ", None, ("P001", ".NII.GZ")),
        ("noext", None, None),
    ],
)
def test_split_case_file(name: str, ids: set[str] | None, expected: tuple[str, str] | None) -> None:
    assert split_case_file(name, ids) == expected


def _dataset(root: Path, ids: list[str], files: list[str]) -> Path:
    (root / "images" / "ct").mkdir(parents=True)
    (root / "labels.csv").write_text("PatientID,probSevere\n" + "".join(f"{i},1\n" for i in ids))
    for name in files:
        (root / "images" / "ct" / name).write_bytes(name.encode())
    return root


def test_a_dataset_of_dicom_uid_cases_scans_one_case_per_file(tmp_path: Path) -> None:
    other = UID[:-1] + "2"
    root = _dataset(tmp_path / "d", [UID, other], [f"{UID}.mha", f"{other}.mha"])
    manifest = scan(root)
    assert sorted(manifest.files) == sorted([UID, other])
    assert {f.ext for per in manifest.files.values() for f in per.values()} == {".mha"}


def test_a_trailing_dot_id_and_an_unmatched_file_are_named(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match=re.escape("bad case id 'P1.'")):
        scan(_dataset(tmp_path / "a", ["P1."], ["P1..mha"]))
    with pytest.raises(InvalidInput, match=re.escape("P9.mha has no row in labels.csv")):
        scan(_dataset(tmp_path / "b", ["P1"], ["P1.mha", "P9.mha"]))
