"""Segmentation metrics per label: Dice, 95th-percentile Hausdorff distance (HD95) and
average symmetric surface distance (ASSD), in the physical units of the image spacing.

Definitions (P: the predicted voxels of a label, G: the reference voxels of it):

- Dice = 2 |P ∩ G| / (|P| + |G|).
- Surfaces: the voxels of a mask with at least one face neighbour (6-connectivity in 3-D)
  outside it; a voxel at the volume's border counts as surface. d(p, S) is the Euclidean
  distance, in millimetres (the spacing), from voxel centre p to the nearest voxel centre
  of surface S: the exact Euclidean distance transform (`scipy.ndimage`) with `sampling`
  the spacing.
- HD95 = max(q95 {d(p, ∂G) : p ∈ ∂P}, q95 {d(g, ∂P) : g ∈ ∂G}): the larger of the two
  directed 95th percentiles (linear interpolation), as MONAI and DeepMind's
  surface-distance compute the robust Hausdorff distance.
- ASSD = (Σ_{p∈∂P} d(p, ∂G) + Σ_{g∈∂G} d(g, ∂P)) / (|∂P| + |∂G|): the mean over both
  surfaces' points together.

Empty masks (no voxel of the label):
- both empty: Dice 1, HD95 0, ASSD 0 (the label is correctly absent);
- one empty: Dice 0, and HD95 = ASSD = the diagonal of the image's physical extent, the
  largest distance two voxels of the image can have. A finite worst value, not NaN, so a
  mean over cases never drops a case and an empty prediction is never rewarded by
  ranking; `empty` in the per-case record says which mask was empty.

A case's value of a metric over several labels is the mean over its labels; the phase's
value is the mean over cases, with a percentile bootstrap interval over cases
(`evaluation.stats.bootstrap_ci`, the same resamples as every other metric). The metric
registry entries (`mean_score`, `resampled_mean_score`) treat `y_pred` as these per-case
values, so the server's statistics (private split, analysis) work on them unchanged.

Masks are read with SimpleITK (`.mha`, `.nii.gz`, `.nrrd`, ...): the array is (z, y, x),
the spacing (x, y, z), so it is reversed for the array's axes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from evaluation.resampling import CaseCounts

SEGMENTATION_KINDS = ("dice", "hd95", "assd")
# Relative tolerance on the spacing of a prediction against its reference.
SPACING_RTOL = 1e-3

BoolArray = npt.NDArray[np.bool_]
FloatArray = npt.NDArray[np.float64]


class MaskError(ValueError):
    """A mask cannot be read or does not match its reference (size, spacing, values)."""


@dataclass(frozen=True)
class Mask:
    labels: npt.NDArray[np.integer[Any]]  # array axes (z, y, x) for 3-D
    spacing: tuple[float, ...]  # per array axis


@dataclass(frozen=True)
class LabelScores:
    dice: float
    hd95: float
    assd: float
    empty: str | None  # None, "prediction", "reference" or "both"

    def get(self, kind: str) -> float:
        return float(getattr(self, kind))


# --- reading --------------------------------------------------------------------------------


def read_mask(path: Path) -> Mask:
    """A label image as integers, with its spacing in array-axis order."""
    # Only the evaluator reads masks; the server imports this module for the registry.
    import SimpleITK as sitk  # type: ignore[import-untyped,unused-ignore]

    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError:
        raise MaskError("the file is not an image SimpleITK can read") from None
    if image.GetNumberOfComponentsPerPixel() != 1:  # type: ignore[no-untyped-call]
        raise MaskError("a mask must have one component per voxel")
    array = sitk.GetArrayFromImage(image)
    if array.dtype.kind == "f":
        if not np.isfinite(array).all() or not np.array_equal(array, np.round(array)):
            raise MaskError("a mask's voxel values must be integer labels")
        array = array.astype(np.int64)
    elif array.dtype.kind not in "iub":
        raise MaskError(f"a mask's voxels must be integers, not {array.dtype}")
    spacing = tuple(float(s) for s in reversed(image.GetSpacing()))  # type: ignore[no-untyped-call]
    return Mask(np.asarray(array), spacing)


def check_pair(prediction: Mask, reference: Mask) -> None:
    if prediction.labels.shape != reference.labels.shape:
        raise MaskError(
            f"the mask is {_size(prediction)} voxels, the reference image {_size(reference)}"
        )
    if not np.allclose(prediction.spacing, reference.spacing, rtol=SPACING_RTOL, atol=0):
        raise MaskError(
            f"the mask's spacing {_spacing(prediction)} differs from the reference's "
            f"{_spacing(reference)}"
        )


def _size(m: Mask) -> str:
    return "x".join(str(n) for n in reversed(m.labels.shape))


def _spacing(m: Mask) -> str:
    return "x".join(f"{s:g}" for s in reversed(m.spacing))


# --- one label ------------------------------------------------------------------------------


def surface(mask: BoolArray) -> BoolArray:
    """Voxels of `mask` with a face neighbour outside it (the volume's border is outside)."""
    if not mask.any():
        return mask.copy()
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    inner = ndimage.binary_erosion(mask, structure=structure, border_value=0)
    out: BoolArray = mask & ~inner
    return out


def directed_distances(
    from_surface: BoolArray, to_surface: BoolArray, spacing: Sequence[float]
) -> FloatArray:
    """d(p, to_surface) for every voxel p of from_surface, in spacing units."""
    field = ndimage.distance_transform_edt(~to_surface, sampling=spacing)
    return np.asarray(field[from_surface], dtype=np.float64)


def worst_distance(shape: Sequence[int], spacing: Sequence[float]) -> float:
    """The diagonal between the centres of the image's two opposite corner voxels."""
    return math.sqrt(sum(((n - 1) * s) ** 2 for n, s in zip(shape, spacing, strict=True)))


def label_scores(
    prediction: BoolArray, reference: BoolArray, spacing: Sequence[float]
) -> LabelScores:
    n_p, n_g = int(prediction.sum()), int(reference.sum())
    if n_p == 0 and n_g == 0:
        return LabelScores(1.0, 0.0, 0.0, "both")
    if n_p == 0 or n_g == 0:
        worst = worst_distance(prediction.shape, spacing)
        return LabelScores(0.0, worst, worst, "prediction" if n_p == 0 else "reference")
    dice = 2.0 * int(np.count_nonzero(prediction & reference)) / (n_p + n_g)
    s_p, s_g = surface(prediction), surface(reference)
    d_pg = directed_distances(s_p, s_g, spacing)
    d_gp = directed_distances(s_g, s_p, spacing)
    hd95 = max(float(np.percentile(d_pg, 95)), float(np.percentile(d_gp, 95)))
    assd = (float(d_pg.sum()) + float(d_gp.sum())) / (d_pg.size + d_gp.size)
    return LabelScores(dice, hd95, assd, None)


def case_scores(prediction: Mask, reference: Mask, labels: Sequence[int]) -> dict[int, LabelScores]:
    """Scores of each label of one case; the masks must match in size and spacing."""
    check_pair(prediction, reference)
    return {
        label: label_scores(
            prediction.labels == label, reference.labels == label, reference.spacing
        )
        for label in labels
    }


# --- registry forms: the mean of per-case values ------------------------------------------


def mean_score(y_true: Any, y_pred: Any) -> float:
    """The mean of the per-case values `y_pred` (`y_true` is unused: the reference is in
    the values already)."""
    values = np.asarray(y_pred, dtype=np.float64)
    if values.ndim != 1 or values.size == 0 or not np.isfinite(values).all():
        raise ValueError("per-case segmentation values must be a non-empty finite 1-D array")
    return float(values.mean())


def resampled_mean_score(counts: CaseCounts, y_true: Any, y_pred: Any) -> FloatArray:
    values = np.asarray(y_pred, dtype=np.float64)
    if values.shape != (counts.n_cases,) or not np.isfinite(values).all():
        raise ValueError("per-case segmentation values must be finite, one per case")
    weights = counts.matrix.astype(np.float64)
    out: FloatArray = (weights @ values) / weights.sum(axis=1)
    return out
