"""Preprocessing on real .mha files: geometry and header kept, HU clipped and scaled."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from baseline_algorithm.preprocess import (
    AIR_HU,
    PatientInfo,
    PreprocessConfig,
    center_crop_or_pad,
    clip_and_scale,
    parse_age,
    preprocess,
    preprocess_image,
    read_image,
    read_patient_info,
    read_patient_info_from_file,
    resample_isotropic,
    write_image,
)

# A rotated (oblique) acquisition: direction cosines that are not the identity.
ROTATED = (0.0, -1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0)


def make_image(
    size_xyz: tuple[int, int, int] = (40, 30, 12),
    spacing: tuple[float, float, float] = (0.8, 0.8, 2.5),
    origin: tuple[float, float, float] = (-12.5, 30.25, -200.0),
    direction: tuple[float, ...] = ROTATED,
    seed: int = 0,
) -> sitk.Image:
    rng = np.random.default_rng(seed)
    hu = rng.integers(-1500, 2000, size=size_xyz[::-1]).astype(np.int16)
    image = sitk.GetImageFromArray(hu)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(direction)
    return image


def test_mha_round_trip_keeps_voxels_geometry_and_header(tmp_path: Path) -> None:
    image = make_image()
    image.SetMetaData("PatientAge", "055Y")
    image.SetMetaData("PatientSex", "F")
    path = tmp_path / "case.mha"
    write_image(image, path)
    # The header is plain text, as grand-challenge serves it.
    header = path.read_bytes().split(b"ElementDataFile")[0].decode()
    assert "PatientAge = 055Y" in header and "PatientSex = F" in header

    back = read_image(path)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(image))
    assert back.GetSpacing() == pytest.approx(image.GetSpacing())
    assert back.GetOrigin() == pytest.approx(image.GetOrigin())
    assert back.GetDirection() == pytest.approx(image.GetDirection())
    assert read_patient_info(back) == PatientInfo(age_years=55.0, sex="F")
    assert read_patient_info_from_file(path) == PatientInfo(age_years=55.0, sex="F")


def test_missing_header_fields_give_unknowns(tmp_path: Path) -> None:
    path = tmp_path / "anonymous.mha"
    write_image(make_image(), path)
    info = read_patient_info_from_file(path)
    assert info == PatientInfo(None, None)
    assert info.features() == [0.0, 0.0, 0.0, 0.0]
    assert PatientInfo(55.0, "M").features() == [0.55, 1.0, 1.0, 0.0]


def test_read_image_names_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nope\.mha"):
        read_image(tmp_path / "nope.mha")


@pytest.mark.parametrize(
    ("text", "years"),
    [
        ("055Y", 55.0),
        ("006M", 0.5),
        ("003W", 21 / 365.25),
        ("010D", 10 / 365.25),
        ("45", 45.0),
        (" 070Y ", 70.0),
        ("", None),
        ("unknown", None),
        (None, None),
    ],
)
def test_parse_age(text: str | None, years: float | None) -> None:
    assert parse_age(text) == (pytest.approx(years) if years is not None else None)


def test_resampling_changes_shape_and_keeps_geometry() -> None:
    image = make_image(size_xyz=(40, 30, 12), spacing=(0.8, 0.8, 2.5))
    out = resample_isotropic(image, 1.6)
    # 40*0.8/1.6 = 20, 30*0.8/1.6 = 15, 12*2.5/1.6 = 18.75 -> 19
    assert out.GetSize() == (20, 15, 19)
    assert out.GetSpacing() == pytest.approx((1.6, 1.6, 1.6))
    assert out.GetOrigin() == pytest.approx(image.GetOrigin())
    assert out.GetDirection() == pytest.approx(image.GetDirection())
    assert resample_isotropic(image, 0.8).GetSize() == (40, 30, 38)


def test_resampling_keeps_a_feature_at_its_physical_position() -> None:
    image = make_image(size_xyz=(60, 60, 20), spacing=(0.7, 0.7, 2.5))
    hu = np.full((20, 60, 60), -1000, dtype=np.int16)
    hu[9:12, 40:44, 14:18] = 1000  # a bright block off-centre
    bright = sitk.GetImageFromArray(hu)
    bright.CopyInformation(image)
    centre_index = (15.5, 41.5, 10.0)  # x, y, z
    expected = np.array(bright.TransformContinuousIndexToPhysicalPoint(centre_index))

    out = resample_isotropic(bright, 1.6)
    arr = sitk.GetArrayFromImage(out)
    z, y, x = (np.array(idx).mean() for idx in np.nonzero(arr > 0))
    found = np.array(out.TransformContinuousIndexToPhysicalPoint((float(x), float(y), float(z))))
    assert np.linalg.norm(found - expected) < 1.6


@pytest.mark.parametrize("size", [(10, 7, 3), (50, 41, 33), (20, 33, 12)])
def test_crop_or_pad_gives_the_cube_and_keeps_physical_positions(
    size: tuple[int, int, int],
) -> None:
    image = resample_isotropic(make_image(size_xyz=size, spacing=(1.6, 1.6, 1.6)), 1.6)
    out = center_crop_or_pad(image, 16, AIR_HU)
    assert out.GetSize() == (16, 16, 16)
    # A voxel that survives the crop/pad has the same value at the same physical point.
    src = sitk.GetArrayFromImage(image)
    dst = sitk.GetArrayFromImage(out)
    offsets = [max(0, s - 16) // 2 - max(0, 16 - s) // 2 for s in size]
    for ox, oy, oz in [(8, 8, 8), (0, 0, 0), (15, 15, 15)]:
        sx, sy, sz = ox + offsets[0], oy + offsets[1], oz + offsets[2]
        assert out.TransformIndexToPhysicalPoint((ox, oy, oz)) == pytest.approx(
            image.TransformIndexToPhysicalPoint((sx, sy, sz))
        )
        inside = all(0 <= v < s for v, s in zip((sx, sy, sz), size, strict=True))
        assert dst[oz, oy, ox] == (src[sz, sy, sx] if inside else AIR_HU)


def test_clip_and_scale() -> None:
    hu = np.array([-3000, -1100, -400, 300, 2500], dtype=np.int16)
    np.testing.assert_allclose(clip_and_scale(hu, -1100, 300), [0, 0, 0.5, 1, 1])
    assert clip_and_scale(hu, -1100, 300).dtype == np.float32


def test_preprocess_output_is_a_scaled_cube() -> None:
    image = make_image(size_xyz=(80, 70, 16), spacing=(0.8, 0.8, 2.5))
    config = PreprocessConfig(spacing_mm=1.6, cube=32)
    volume = preprocess(image, config)
    assert volume.shape == (32, 32, 32)
    assert volume.dtype == np.float32
    assert volume.min() >= 0 and volume.max() <= 1
    # Random HU in [-1500, 2000] clip at both ends somewhere; padding is air.
    assert volume.max() == 1.0
    air = (AIR_HU - config.hu_min) / (config.hu_max - config.hu_min)
    assert volume[0, 0, 0] == pytest.approx(air)  # z: 16*2.5/1.6 = 25 < 32, so padded


def test_preprocessed_image_written_as_mha_keeps_spacing_and_origin(tmp_path: Path) -> None:
    image = make_image(size_xyz=(30, 30, 8), spacing=(0.8, 0.8, 2.5))
    config = PreprocessConfig(spacing_mm=1.6, cube=20)
    out = preprocess_image(image, config)
    write_image(out, tmp_path / "pre.mha")
    back = read_image(tmp_path / "pre.mha")
    assert back.GetSize() == (20, 20, 20)
    assert back.GetSpacing() == pytest.approx((1.6, 1.6, 1.6))
    assert back.GetDirection() == pytest.approx(ROTATED)
    # Padding moves the origin back by the padding, along the (rotated) axes.
    resampled = resample_isotropic(image, 1.6)
    lo = [(20 - s) // 2 for s in resampled.GetSize()]
    expected = resampled.TransformContinuousIndexToPhysicalPoint([float(-v) for v in lo])
    assert back.GetOrigin() == pytest.approx(expected)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(out))


def test_config_round_trips_through_a_dict() -> None:
    config = PreprocessConfig(spacing_mm=2.0, cube=48)
    assert PreprocessConfig.from_dict({**config.to_dict(), "unknown": 1}) == config
    with pytest.raises(ValueError):
        PreprocessConfig(hu_min=300, hu_max=-1100)


def test_real_ct_slice_through_mha(tmp_path: Path) -> None:
    """Real CT voxels (pydicom's CT_small.dcm, HU rescale applied) survive .mha and preprocess."""
    pydicom_data = pytest.importorskip("pydicom.data")
    dicom = sitk.ReadImage(pydicom_data.get_testdata_file("CT_small.dcm"))
    slice_hu = sitk.GetArrayFromImage(dicom)[0].astype(np.int16)
    stack = sitk.GetImageFromArray(np.repeat(slice_hu[None], 6, axis=0))  # a 6-slice series
    stack.SetSpacing((*dicom.GetSpacing()[:2], 5.0))
    stack.SetOrigin(dicom.GetOrigin())
    stack.SetMetaData("PatientAge", "064Y")
    stack.SetMetaData("PatientSex", "M")
    path = tmp_path / "real.mha"
    write_image(stack, path)

    back = read_image(path)
    assert back.GetSpacing() == pytest.approx((0.661468, 0.661468, 5.0))
    assert back.GetOrigin() == pytest.approx((-158.135803, -179.035797, -75.699997))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back)[3], slice_hu)
    assert read_patient_info(back) == PatientInfo(64.0, "M")

    config = PreprocessConfig(spacing_mm=1.6, cube=48)
    volume = preprocess(back, config)
    assert volume.shape == (48, 48, 48)
    # 128 * 0.66 mm = 84.7 mm -> 53 voxels, centre-cropped to 48; 6 * 5 mm -> 19 slices.
    centre = volume[24]
    expected_centre = clip_and_scale(slice_hu, config.hu_min, config.hu_max)
    assert centre.min() >= 0 and centre.max() <= 1
    assert centre.mean() == pytest.approx(expected_centre.mean(), abs=0.03)
