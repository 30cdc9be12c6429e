"""Tiny real medical images written with SimpleITK: a NIfTI file and a DICOM series (one
file per slice, with the tags a scanner writes), for the ingest-conversion tests."""

from __future__ import annotations

import locale
from pathlib import Path

import numpy as np
import SimpleITK as sitk

SPACING = (0.7, 0.8, 2.5)
ORIGIN = (10.0, -5.0, 3.0)
DIRECTION = (0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, -1.0)
PATIENT_ID = "SECRET-PATIENT-42"


def volume(seed: int = 0, shape: tuple[int, int, int] = (4, 8, 8)) -> sitk.Image:
    """An int16 z, y, x volume with the module's geometry."""
    arr = ((np.arange(np.prod(shape)).reshape(shape) + seed * 7) % 300 - 100).astype(np.int16)
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(SPACING)
    img.SetOrigin(ORIGIN)
    img.SetDirection(DIRECTION)
    return img


def write_nifti(path: Path, img: sitk.Image) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(img, str(path))
    return path


def write_dicom_series(folder: Path, img: sitk.Image, series_uid: str) -> list[Path]:
    """One .dcm per slice carrying the position, orientation and spacing tags (and a
    patient id, which must never reach the converted image)."""
    # GDCM's writer sets the process locale to "C" and leaves it: every later text read
    # in this test process would then decode as ASCII. Put it back.
    saved = locale.setlocale(locale.LC_ALL)
    try:
        return _write_slices(folder, img, series_uid)
    finally:
        locale.setlocale(locale.LC_ALL, saved)


def _write_slices(folder: Path, img: sitk.Image, series_uid: str) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    d = img.GetDirection()
    orientation = "\\".join(str(v) for v in (d[0], d[3], d[6], d[1], d[4], d[7]))
    out = []
    for i in range(img.GetDepth()):
        piece = img[:, :, i]
        position = img.TransformIndexToPhysicalPoint((0, 0, i))
        tags = {
            "0008|0060": "CT",
            "0010|0020": PATIENT_ID,
            "0020|000d": series_uid + ".1",
            "0020|000e": series_uid,
            "0020|0013": str(i + 1),
            "0020|0032": "\\".join(str(v) for v in position),
            "0020|0037": orientation,
            "0028|0030": f"{img.GetSpacing()[1]}\\{img.GetSpacing()[0]}",
            "0018|0050": str(img.GetSpacing()[2]),
        }
        for key, value in tags.items():
            piece.SetMetaData(key, value)
        path = folder / f"slice{i:03d}.dcm"
        writer.SetFileName(str(path))
        writer.Execute(piece)
        out.append(path)
    return out


def assert_same_image(got: sitk.Image, want: sitk.Image, tol: float = 1e-4) -> None:
    assert got.GetSize() == want.GetSize()
    assert got.GetPixelID() == want.GetPixelID(), got.GetPixelIDTypeAsString()
    assert np.array_equal(sitk.GetArrayFromImage(got), sitk.GetArrayFromImage(want))
    assert np.allclose(got.GetSpacing(), want.GetSpacing(), atol=tol)
    assert np.allclose(got.GetOrigin(), want.GetOrigin(), atol=tol)
    assert np.allclose(got.GetDirection(), want.GetDirection(), atol=tol)
