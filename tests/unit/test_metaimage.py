"""An .mhd/.zraw (or .raw) pair made one .mha: SimpleITK reads the same voxels, geometry and
header fields from both; bad headers are refused naming the file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk  # a server dependency: missing, the test fails (never skips)

from server.datasets import metaimage


@pytest.mark.parametrize("compress", [True, False])
def test_pair_becomes_one_mha_with_everything_kept(tmp_path: Path, compress: bool) -> None:
    voxels = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6) - 60
    image = sitk.GetImageFromArray(voxels)
    image.SetSpacing((0.7, 0.8, 2.5))
    image.SetOrigin((-10.0, 4.0, 33.0))
    image.SetDirection((0, 1, 0, 1, 0, 0, 0, 0, -1))
    image.SetMetaData("PatientAge", "067Y")
    header = tmp_path / "1.2.840.113654.2.70.1.97.mhd"
    sitk.WriteImage(image, str(header), useCompression=compress)
    data = metaimage.data_file(header)
    assert data == "1.2.840.113654.2.70.1.97." + ("zraw" if compress else "raw")

    mha = metaimage.to_mha(header, tmp_path / "out" / "case.mha")
    back = sitk.ReadImage(str(mha))
    assert np.array_equal(sitk.GetArrayFromImage(back), voxels)
    assert back.GetSpacing() == pytest.approx(image.GetSpacing())
    assert back.GetOrigin() == pytest.approx(image.GetOrigin())
    assert back.GetDirection() == pytest.approx(image.GetDirection())
    assert back.GetMetaData("PatientAge") == "067Y"
    assert b"ElementDataFile = LOCAL\n" in mha.read_bytes()[:2000]


@pytest.mark.parametrize(
    ("field", "says"),
    [
        ("LOCAL", "name it .mha"),
        ("LIST", "several files"),
        ("slice%03d.raw 1 4 1", "several files"),
        ("../elsewhere.raw", "next to the header"),
        (None, "no ElementDataFile"),
    ],
)
def test_headers_that_are_not_one_pair_are_refused(
    tmp_path: Path, field: str | None, says: str
) -> None:
    header = tmp_path / "case.mhd"
    text = "ObjectType = Image\nNDims = 3\n"
    header.write_text(text + (f"ElementDataFile = {field}\n" if field else ""))
    with pytest.raises(metaimage.MetaImageError, match=r"case\.mhd") as info:
        metaimage.data_file(header)
    assert says in str(info.value)


def test_missing_data_file_is_named(tmp_path: Path) -> None:
    header = tmp_path / "case.mhd"
    header.write_text("NDims = 3\nElementDataFile = case.zraw\n")
    with pytest.raises(metaimage.MetaImageError, match=r"case\.zraw is missing"):
        metaimage.to_mha(header, tmp_path / "x.mha")
