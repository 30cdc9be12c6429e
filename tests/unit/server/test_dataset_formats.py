"""Input formats at ingest: .mhd+raw, .nii/.nii.gz and DICOM series become one .mha each,
geometry and pixel type kept, the original file(s) kept in the store by digest; a bad image
or a case directory of several series refuses the whole ingest, naming the file."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import SimpleITK as sitk

from server.datasets import manifest as mf
from server.datasets.service import stored_files
from server.errors import InvalidInput
from server.storage import ArtifactStore
from tests.support.medical import (
    PATIENT_ID,
    assert_same_image,
    volume,
    write_dicom_series,
    write_nifti,
)

UID = "1.2.826.0.1.3680043.8.498.77"


def _labels(root: Path, cases: list[str]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "labels.csv").write_text("PatientID,probSevere\n" + "".join(f"{c},1\n" for c in cases))
    return root


def _store(tmp_path: Path) -> ArtifactStore:
    store = ArtifactStore(tmp_path / "store")
    (store.root / "tmp").mkdir(parents=True, exist_ok=True)
    return store


def _ingest(tmp_path: Path, root: Path) -> tuple[ArtifactStore, mf.Manifest, dict[str, Any]]:
    store = _store(tmp_path)
    manifest = mf.scan(root)
    return store, manifest, stored_files(store, manifest, "test")


def _read(store: ArtifactStore, record: dict[str, Any]) -> sitk.Image:
    assert record["ext"] == ".mha"
    assert store.path(record["digest"]).stat().st_size == record["size"]
    return sitk.ReadImage(str(store.path(record["digest"])), imageIO="MetaImageIO")


def _artifacts(store: ArtifactStore) -> list[Path]:
    return [p for p in store.root.rglob("*") if p.is_file() and "tmp" not in p.parts]


def test_nifti_images_and_masks_become_mha_keeping_geometry(tmp_path: Path) -> None:
    root = _labels(tmp_path / "ds", ["P1", "P2"])
    write_nifti(root / "images" / "ct" / "P1.nii.gz", volume(1))
    write_nifti(root / "images" / "ct" / "P2.nii", volume(2))
    mask = sitk.Cast(volume(3) > 50, sitk.sitkUInt8)
    for case in ("P1", "P2"):
        write_nifti(root / "ground-truth" / "lungs" / f"{case}.nii.gz", mask)
    store, _, records = _ingest(tmp_path, root)

    p1 = records["images/ct/P1.nii.gz"]
    assert_same_image(_read(store, p1), volume(1))
    assert_same_image(_read(store, records["images/ct/P2.nii"]), volume(2))
    assert_same_image(_read(store, records["ground-truth/lungs/P1.nii.gz"]), mask)
    # The original, byte for byte, by digest and name.
    [orig] = p1["originals"]
    assert orig["name"] == "P1.nii.gz"
    assert store.read_bytes(orig["digest"]) == (root / "images/ct/P1.nii.gz").read_bytes()
    assert orig["size"] == (root / "images/ct/P1.nii.gz").stat().st_size
    # Only geometry and pixel type travel: no NIfTI header fields in the .mha header.
    header = store.path(p1["digest"]).read_bytes().split(b"ElementDataFile")[0]
    assert b"qform" not in header and b"descrip" not in header


def test_a_dicom_series_directory_is_one_mha_without_its_tags(tmp_path: Path) -> None:
    root = _labels(tmp_path / "ds", [UID, "P2"])
    slices = write_dicom_series(root / "images" / "ct" / UID, volume(4), "1.2.3.4.5")
    write_nifti(root / "images" / "ct" / "P2.nii.gz", volume(5))
    store, manifest, records = _ingest(tmp_path, root)

    assert set(manifest.files) == {UID, "P2"}
    record = records[f"images/ct/{UID}"]
    assert_same_image(_read(store, record), volume(4))
    assert PATIENT_ID.encode() not in store.path(record["digest"]).read_bytes()
    names = sorted(o["name"] for o in record["originals"])
    assert names == sorted(f"{UID}/{p.name}" for p in slices)
    for o in record["originals"]:
        assert store.read_bytes(o["digest"]) == (root / "images" / "ct" / o["name"]).read_bytes()
    # Every slice is in the dataset's digest.
    before = manifest.digest
    slices[0].write_bytes(slices[0].read_bytes() + b"\0\0")
    assert mf.scan(root).digest != before


def test_an_mhd_pair_is_one_case_converted_with_its_header_fields(tmp_path: Path) -> None:
    root = _labels(tmp_path / "ds", ["P1"])
    img = volume(6)
    sitk.WriteImage(img, str(tmp_path / "x.mha"))
    raw = (tmp_path / "x.mha").read_bytes()
    head, data = raw.split(b"ElementDataFile = LOCAL\n")
    folder = root / "images" / "ct"
    folder.mkdir(parents=True)
    (folder / "P1.mhd").write_bytes(head + b"PatientAge = 042Y\nElementDataFile = P1.raw\n")
    (folder / "P1.raw").write_bytes(data)
    store, manifest, records = _ingest(tmp_path, root)
    record = records["images/ct/P1.mhd"]
    assert_same_image(_read(store, record), img)
    assert b"PatientAge = 042Y" in store.path(record["digest"]).read_bytes()
    assert sorted(o["name"] for o in record["originals"]) == ["P1.mhd", "P1.raw"]
    assert manifest.files["P1"]["ct"].ext == ".mhd"


def test_two_series_in_one_case_directory_are_refused_naming_it(tmp_path: Path) -> None:
    root = _labels(tmp_path / "ds", ["P1"])
    write_dicom_series(root / "images" / "ct" / "P1", volume(1), "1.2.3.1")
    for p in write_dicom_series(tmp_path / "other", volume(2), "1.2.3.2"):
        p.rename(root / "images" / "ct" / "P1" / f"b-{p.name}")
    store = _store(tmp_path)
    with pytest.raises(InvalidInput, match=re.escape("images/ct/P1: 2 DICOM series")):
        stored_files(store, mf.scan(root), "test")
    assert _artifacts(store) == []


@pytest.mark.parametrize("bad", ["P2.nii.gz", "P2.nii"])
def test_a_corrupt_image_refuses_the_whole_ingest_naming_it(tmp_path: Path, bad: str) -> None:
    root = _labels(tmp_path / "ds", ["P1", "P2"])
    write_nifti(root / "images" / "ct" / "P1.nii.gz", volume(1))
    (root / "images" / "ct" / bad).write_bytes(b"not an image at all")
    store = _store(tmp_path)
    with pytest.raises(InvalidInput, match=re.escape(f"images/ct/{bad} is not a readable")):
        stored_files(store, mf.scan(root), "test")
    assert _artifacts(store) == []  # nothing half-ingested, not even P1


def test_a_stray_file_in_a_series_directory_is_named(tmp_path: Path) -> None:
    root = _labels(tmp_path / "ds", ["P1"])
    write_dicom_series(root / "images" / "ct" / "P1", volume(1), "1.2.3.1")
    (root / "images" / "ct" / "P1" / "notes.txt").write_text("hello")
    with pytest.raises(InvalidInput, match=re.escape("images/ct/P1/notes.txt")):
        stored_files(_store(tmp_path), mf.scan(root), "test")


def test_a_case_directory_holding_a_folder_or_nothing_is_refused(tmp_path: Path) -> None:
    root = _labels(tmp_path / "ds", ["P1"])
    (root / "images" / "ct" / "P1" / "deeper").mkdir(parents=True)
    with pytest.raises(InvalidInput, match=re.escape("images/ct/P1/deeper")):
        mf.scan(root)
    (root / "images" / "ct" / "P1" / "deeper").rmdir()
    with pytest.raises(InvalidInput, match=re.escape("images/ct/P1 is empty")):
        mf.scan(root)


def test_mha_files_are_stored_as_given_and_digests_stay(tmp_path: Path) -> None:
    root = _labels(tmp_path / "ds", ["P1"])
    (root / "images" / "ct").mkdir(parents=True)
    (root / "images" / "ct" / "P1.mha").write_bytes(b"opaque bytes")
    store, _, records = _ingest(tmp_path, root)
    record = records["images/ct/P1.mha"]
    assert set(record) == {"digest", "ext", "size"}  # as before: no conversion, no originals
    assert store.read_bytes(record["digest"]) == b"opaque bytes"
    assert record["size"] == 12


def test_truncated_compressed_data_is_refused_naming_the_file(tmp_path: Path) -> None:
    """ITK reads a cut-off gzip or zlib stream without an error: ingest must not."""
    root = _labels(tmp_path / "ds", ["P1"])
    nii = write_nifti(root / "images" / "ct" / "P1.nii.gz", volume(1, (8, 16, 16)))
    nii.write_bytes(nii.read_bytes()[: nii.stat().st_size // 2])
    with pytest.raises(InvalidInput, match=re.escape("images/ct/P1.nii.gz is not a readable")):
        stored_files(_store(tmp_path), mf.scan(root), "test")

    root = _labels(tmp_path / "ds2", ["P1"])
    sitk.WriteImage(volume(1, (8, 16, 16)), str(tmp_path / "x.mhd"), useCompression=True)
    folder = root / "images" / "ct"
    folder.mkdir(parents=True)
    header = (tmp_path / "x.mhd").read_bytes().replace(b"x.zraw", b"P1.zraw")
    (folder / "P1.mhd").write_bytes(header)
    data = (tmp_path / "x.zraw").read_bytes()
    (folder / "P1.zraw").write_bytes(data[: len(data) // 2])
    with pytest.raises(InvalidInput, match=re.escape("images/ct/P1.zraw is not a readable")):
        stored_files(_store(tmp_path / "s2"), mf.scan(root), "test")
