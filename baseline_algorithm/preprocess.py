"""Read, write and preprocess chest CT the way the STOIC2021 baseline does.

Pipeline: resample to isotropic spacing (1.6 mm) → centre crop/pad to a cube (240 voxels,
i.e. 384 mm) → clip to [-1100, 300] HU → scale to [0, 1]. Geometry (spacing, origin,
direction) is carried by SimpleITK images throughout, so a crop or pad moves the origin and
every voxel keeps its physical position.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

AIR_HU = -1000.0
# MetaImage header fields that grand-challenge serves for STOIC (finalists read them).
AGE_KEY = "PatientAge"
SEX_KEY = "PatientSex"
# Number of clinical features produced by PatientInfo.features().
N_CLINICAL_FEATURES = 4


@dataclass(frozen=True)
class PreprocessConfig:
    """How a CT becomes the network input. Stored next to the weights."""

    spacing_mm: float = 1.6
    cube: int = 240
    hu_min: float = -1100.0
    hu_max: float = 300.0
    # Padding outside the scan is air, which is what the scanner would have seen.
    pad_hu: float = AIR_HU

    def __post_init__(self) -> None:
        if self.spacing_mm <= 0:
            raise ValueError(f"spacing_mm must be positive, got {self.spacing_mm}")
        if self.cube < 1:
            raise ValueError(f"cube must be at least 1, got {self.cube}")
        if self.hu_max <= self.hu_min:
            raise ValueError(f"hu_max ({self.hu_max}) must exceed hu_min ({self.hu_min})")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PreprocessConfig:
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**known)


@dataclass(frozen=True)
class PatientInfo:
    """Age and sex from the MetaImage header (either may be missing)."""

    age_years: float | None = None
    sex: str | None = None  # "M", "F" or "O", as in DICOM

    def features(self) -> list[float]:
        """Fixed-length vector for the network; missing values are zero with a flag."""
        age_known = self.age_years is not None
        return [
            (self.age_years or 0.0) / 100.0,
            1.0 if age_known else 0.0,
            1.0 if self.sex == "M" else 0.0,
            1.0 if self.sex == "F" else 0.0,
        ]


_AGE_RE = re.compile(r"^\s*(\d{1,3})\s*([DWMY]?)\s*$", re.IGNORECASE)
_AGE_UNIT_YEARS = {"D": 1 / 365.25, "W": 7 / 365.25, "M": 1 / 12, "Y": 1.0, "": 1.0}


def parse_age(text: str | None) -> float | None:
    """DICOM age string (``055Y``, ``006M``, ``003W``, ``010D``, or a bare number) to years."""
    if text is None:
        return None
    match = _AGE_RE.match(str(text))
    if match is None:
        return None
    return int(match.group(1)) * _AGE_UNIT_YEARS[match.group(2).upper()]


def parse_sex(text: str | None) -> str | None:
    if text is None:
        return None
    value = str(text).strip().upper()[:1]
    return value if value in {"M", "F", "O"} else None


def read_patient_info(image: sitk.Image) -> PatientInfo:
    age = image.GetMetaData(AGE_KEY) if image.HasMetaDataKey(AGE_KEY) else None
    sex = image.GetMetaData(SEX_KEY) if image.HasMetaDataKey(SEX_KEY) else None
    return PatientInfo(age_years=parse_age(age), sex=parse_sex(sex))


def read_image(path: str | Path) -> sitk.Image:
    """Read a .mha (or any SimpleITK format); header fields become image metadata."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no image at {path}")
    return sitk.ReadImage(str(path))


def write_image(image: sitk.Image, path: str | Path, compress: bool = True) -> None:
    """Write an image; string metadata (PatientAge, PatientSex) go into the MetaImage header."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path), compress)


def resample_isotropic(
    image: sitk.Image, spacing_mm: float, default_hu: float = AIR_HU
) -> sitk.Image:
    """Linear resampling to ``spacing_mm`` in every axis; origin and direction are kept."""
    image = sitk.Cast(image, sitk.sitkFloat32)
    old_spacing = np.asarray(image.GetSpacing(), dtype=float)
    old_size = np.asarray(image.GetSize(), dtype=float)
    new_size = [max(1, round(s)) for s in old_size * old_spacing / spacing_mm]
    return sitk.Resample(
        image,
        new_size,
        sitk.Transform(),
        sitk.sitkLinear,
        image.GetOrigin(),
        (spacing_mm,) * image.GetDimension(),
        image.GetDirection(),
        default_hu,
        sitk.sitkFloat32,
    )


def center_crop_or_pad(image: sitk.Image, cube: int, pad_hu: float = AIR_HU) -> sitk.Image:
    """Crop or pad every axis around its centre to ``cube`` voxels.

    SimpleITK's Crop and ConstantPad move the origin, so physical positions are kept.
    """
    size = image.GetSize()
    pad_lo = [max(0, cube - s) // 2 for s in size]
    pad_hi = [max(0, cube - s) - lo for s, lo in zip(size, pad_lo, strict=True)]
    if any(pad_lo) or any(pad_hi):
        image = sitk.ConstantPad(image, pad_lo, pad_hi, pad_hu)
    size = image.GetSize()
    crop_lo = [max(0, s - cube) // 2 for s in size]
    crop_hi = [max(0, s - cube) - lo for s, lo in zip(size, crop_lo, strict=True)]
    if any(crop_lo) or any(crop_hi):
        image = sitk.Crop(image, crop_lo, crop_hi)
    return image


def clip_and_scale(array: np.ndarray, hu_min: float, hu_max: float) -> np.ndarray:
    """Clip to [hu_min, hu_max] and map linearly onto [0, 1] (float32)."""
    clipped = np.clip(array.astype(np.float32, copy=False), hu_min, hu_max)
    return ((clipped - hu_min) / (hu_max - hu_min)).astype(np.float32, copy=False)


def preprocess_image(image: sitk.Image, config: PreprocessConfig) -> sitk.Image:
    """Resample, crop/pad, clip and scale, keeping geometry (for inspection and tests)."""
    resampled = resample_isotropic(image, config.spacing_mm, config.pad_hu)
    cube = center_crop_or_pad(resampled, config.cube, config.pad_hu)
    scaled = sitk.GetImageFromArray(
        clip_and_scale(sitk.GetArrayViewFromImage(cube), config.hu_min, config.hu_max)
    )
    scaled.CopyInformation(cube)
    return scaled


def preprocess(image: sitk.Image, config: PreprocessConfig) -> np.ndarray:
    """Network input: float32 array of shape (cube, cube, cube) in z, y, x order, in [0, 1]."""
    return sitk.GetArrayFromImage(preprocess_image(image, config))


def read_patient_info_from_file(path: str | Path) -> PatientInfo:
    """Age and sex from the header alone, without reading the voxels."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    age = reader.GetMetaData(AGE_KEY) if reader.HasMetaDataKey(AGE_KEY) else None
    sex = reader.GetMetaData(SEX_KEY) if reader.HasMetaDataKey(SEX_KEY) else None
    return PatientInfo(age_years=parse_age(age), sex=parse_sex(sex))
