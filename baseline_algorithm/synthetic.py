"""Synthetic chest CT with COVID-19-like lesions, for tests and demos (no real data needed).

Each case is an axial stack with anisotropic voxels (default 0.8 x 0.8 x 2.5 mm) in HU:
air outside an elliptic body (fat rim, soft tissue ~ +40 HU, a spine), two lungs
(~ -850 HU) with vessels, sometimes a dependent atelectasis band (a realistic look-alike
with GGO-range density), and for COVID-19 positives ground-glass lesions (-650 to -350 HU)
inside the lungs. Severe cases have more and larger lesions, some consolidating, and are
older on average. Shapes are defined relative to the field of view, so the task is the
same at any size; the signal is learnable but not trivial.

Layout written by ``generate_dataset`` (and the CLI)::

    OUT/labels.csv                     PatientID,probCOVID,probSevere,age,sex
    OUT/images/ct/<PatientID>.mha      PatientAge / PatientSex in the MetaImage header

    python -m baseline_algorithm.synthetic OUT --cases 40 --size 64 --seed 0 --split train
"""

from __future__ import annotations

import argparse
import csv
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import SimpleITK as sitk

from baseline_algorithm.preprocess import AGE_KEY, SEX_KEY, write_image

Split = Literal["train", "test"]
Vector = Sequence[float] | np.ndarray
SPLIT_CODE: dict[str, int] = {"train": 0, "test": 1}
# PatientIDs of the two splits never collide (STOIC IDs are integers too).
SPLIT_ID_OFFSET: dict[str, int] = {"train": 10_000, "test": 60_000}
MAX_CASES = 50_000
LABEL_COLUMNS = ("PatientID", "probCOVID", "probSevere", "age", "sex")
DEFAULT_SPACING = (0.8, 0.8, 2.5)  # x, y, z in mm


@dataclass(frozen=True)
class SyntheticCase:
    patient_id: str
    covid: int
    severe: int
    age: int
    sex: str

    def row(self) -> dict[str, str | int]:
        return {
            "PatientID": self.patient_id,
            "probCOVID": self.covid,
            "probSevere": self.severe,
            "age": self.age,
            "sex": self.sex,
        }


class _Canvas:
    """A volume (z, y, x) plus normalised voxel-centre coordinates in [-1, 1] per axis."""

    def __init__(self, shape: tuple[int, int, int], fill: float) -> None:
        self.hu = np.full(shape, fill, dtype=np.float32)
        self.axes = [((np.arange(n, dtype=np.float32) + 0.5) / n) * 2 - 1 for n in shape]

    def _box(self, center: Vector, reach: Vector) -> tuple[slice, ...]:
        box = []
        for axis, c, r in zip(self.axes, center, reach, strict=True):
            n = len(axis)
            lo = int(np.floor(((c - r) + 1) / 2 * n))
            hi = int(np.ceil(((c + r) + 1) / 2 * n))
            box.append(slice(max(0, lo), min(n, hi)))
        return tuple(box)

    def ellipsoid_alpha(
        self, center: Vector, radii: Vector, edge: float
    ) -> tuple[tuple[slice, ...], np.ndarray]:
        """Coverage in [0, 1] inside a bounding box; ``edge`` > 0 gives a soft border."""
        margin = 1 + 4 * edge
        box = self._box(center, [r * margin for r in radii])
        grids = np.meshgrid(
            *[
                (axis[s] - c) / r
                for axis, s, c, r in zip(self.axes, box, center, radii, strict=True)
            ],
            indexing="ij",
        )
        dist = np.sqrt(sum(g * g for g in grids))
        if edge <= 0:
            return box, (dist <= 1).astype(np.float32)
        return box, (1 / (1 + np.exp((dist - 1) / edge))).astype(np.float32)

    def paint(
        self,
        center: Vector,
        radii: Vector,
        value: float,
        edge: float = 0.0,
        within: np.ndarray | None = None,
    ) -> tuple[tuple[slice, ...], np.ndarray]:
        box, alpha = self.ellipsoid_alpha(center, radii, edge)
        if within is not None:
            alpha = alpha * within[box]
        region = self.hu[box]
        region += alpha * (value - region)
        return box, alpha


def _lung_point(rng: np.random.Generator, center: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """A random point well inside an ellipsoid (uniform direction, radius <= 0.7)."""
    direction = rng.normal(size=3)
    direction /= np.linalg.norm(direction) + 1e-9
    return center + direction * radii * 0.7 * rng.uniform(0, 1) ** (1 / 3)


def synthesize_volume(
    rng: np.random.Generator,
    shape: tuple[int, int, int],
    covid: bool,
    severe: bool,
    aspect: Sequence[float] = (1.0, 1.0, 1.0),
) -> np.ndarray:
    """HU volume (z, y, x), int16. ``aspect``: half-extent of each axis over that of x, so
    that lesions are round in millimetres even when the z extent differs."""
    canvas = _Canvas(shape, -1000.0)
    az, ay, _ = aspect

    # Body: elliptic cylinder with a fat rim; +y is posterior as in DICOM (LPS).
    a, b = rng.uniform(0.78, 0.9), rng.uniform(0.58, 0.7)
    u0, v0 = rng.uniform(-0.03, 0.03, size=2)
    v, u = np.meshgrid(canvas.axes[1], canvas.axes[2], indexing="ij")
    outer = ((u - u0) / a) ** 2 + ((v - v0) / b) ** 2 <= 1
    inner = ((u - u0) / (0.92 * a)) ** 2 + ((v - v0) / (0.92 * b)) ** 2 <= 1
    canvas.hu[:, outer] = rng.uniform(-120, -80)
    canvas.hu[:, inner] = rng.uniform(30, 55)
    spine = ((u - u0) / 0.09) ** 2 + ((v - (v0 + 0.75 * b)) / (0.09 / ay)) ** 2 <= 1
    canvas.hu[:, spine] = rng.uniform(400, 700)

    # Lungs: two ellipsoids either side of the mediastinum.
    lung_mask = np.zeros(shape, dtype=np.float32)
    lungs: list[tuple[np.ndarray, np.ndarray]] = []
    w0 = rng.uniform(-0.05, 0.05)
    lung_hu = rng.uniform(-880, -820)
    for side in (-1, 1):
        center = np.array([w0, v0 - 0.05, u0 + side * 0.43 * a])
        radii = np.array([rng.uniform(0.75, 0.88), 0.66 * b * rng.uniform(0.93, 1.07), 0.31 * a])
        box, alpha = canvas.paint(center, radii, lung_hu, edge=0.0)
        lung_mask[box] = np.maximum(lung_mask[box], alpha)
        lungs.append((center, radii))

    # Vessels (every case): thin, bright, elongated along z.
    for center, radii in lungs:
        for _ in range(int(rng.integers(6, 13))):
            vessel_center = _lung_point(rng, center, radii)
            r = rng.uniform(0.018, 0.035)
            vessel_radii = [rng.uniform(0.08, 0.2), r / ay, r]
            canvas.paint(vessel_center, vessel_radii, rng.uniform(0, 60), 0.2, lung_mask)

    # Dependent atelectasis (any case): a thin posterior band of GGO-like density.
    if rng.uniform() < 0.3:
        center, radii = lungs[int(rng.integers(2))]
        band_center = center + np.array([rng.uniform(-0.2, 0.2), 0.8 * radii[1], 0.0])
        band_radii = radii * np.array([0.5, 0.14, 0.6])
        canvas.paint(band_center, band_radii, rng.uniform(-550, -350), 0.15, lung_mask)

    if covid:
        # Severity (an outcome, as in STOIC) only loosely follows extent: the ranges
        # overlap and some severe cases look mild.
        if severe and rng.uniform() > 0.15:
            n_lesions, r_lo, r_hi = int(rng.integers(2, 8)), 0.10, 0.21
        else:
            n_lesions, r_lo, r_hi = int(rng.integers(1, 5)), 0.08, 0.18
        for _ in range(n_lesions):
            center, radii = lungs[int(rng.integers(2))]
            lesion_center = _lung_point(rng, center, radii)
            r = rng.uniform(r_lo, r_hi)
            stretch = rng.uniform(0.7, 1.3, size=3)
            lesion_radii = [r * stretch[0] / az, r * stretch[1] / ay, r * stretch[2]]
            consolidating = severe and rng.uniform() < 0.35
            value = rng.uniform(-300, -100) if consolidating else rng.uniform(-650, -350)
            canvas.paint(lesion_center, lesion_radii, value, 0.12, lung_mask)

    canvas.hu += rng.normal(0, rng.uniform(12, 30), size=shape).astype(np.float32)
    return np.clip(np.rint(canvas.hu), -1024, 3071).astype(np.int16)


def _labels(
    n: int, rng: np.random.Generator, prevalence: float, severe_fraction: float
) -> list[tuple[int, int]]:
    """Stratified labels: exact class counts, shuffled, so small splits have both classes."""
    n_pos = round(n * prevalence)
    n_severe = round(n_pos * severe_fraction)
    if n >= 2:
        n_pos = min(max(n_pos, 1), n - 1)
    if n_pos >= 2:
        n_severe = min(max(n_severe, 1), n_pos - 1)
    labels = [(1, 1)] * n_severe + [(1, 0)] * (n_pos - n_severe) + [(0, 0)] * (n - n_pos)
    order = rng.permutation(n)
    return [labels[i] for i in order]


def make_case_image(
    case: SyntheticCase,
    rng: np.random.Generator,
    size: int,
    spacing: Sequence[float] = DEFAULT_SPACING,
) -> sitk.Image:
    """One case as a SimpleITK image with geometry and PatientAge/PatientSex metadata."""
    sx, sy, sz = spacing
    nx = ny = size
    # z covers about the same length as x, as a chest scan does.
    nz = max(4, round(size * sx / sz))
    aspect = ((nz * sz) / (nx * sx), (ny * sy) / (nx * sx), 1.0)
    hu = synthesize_volume(rng, (nz, ny, nx), bool(case.covid), bool(case.severe), aspect)
    image = sitk.GetImageFromArray(hu)
    image.SetSpacing((sx, sy, sz))
    image.SetOrigin(tuple(-(n - 1) / 2 * s for n, s in zip((nx, ny, nz), spacing, strict=True)))
    image.SetMetaData(AGE_KEY, f"{case.age:03d}Y")
    image.SetMetaData(SEX_KEY, case.sex)
    return image


def generate_dataset(
    out: str | Path,
    cases: int,
    size: int = 64,
    seed: int = 0,
    split: Split = "train",
    spacing: Sequence[float] = DEFAULT_SPACING,
    prevalence: float = 0.5,
    severe_fraction: float = 0.4,
) -> list[SyntheticCase]:
    """Write ``cases`` synthetic CTs and labels.csv under ``out``; deterministic in
    (seed, split), and the two splits never share a PatientID."""
    if split not in SPLIT_CODE:
        raise ValueError(f"split must be train or test, got {split!r}")
    if not 1 <= cases <= MAX_CASES:
        raise ValueError(f"cases must be in [1, {MAX_CASES}], got {cases}")
    if size < 8:
        raise ValueError(f"size must be at least 8 voxels, got {size}")
    out = Path(out)
    image_dir = out / "images" / "ct"
    image_dir.mkdir(parents=True, exist_ok=True)
    code = SPLIT_CODE[split]
    labels = _labels(cases, np.random.default_rng([seed, code]), prevalence, severe_fraction)
    written: list[SyntheticCase] = []
    for i, (covid, severe) in enumerate(labels):
        rng = np.random.default_rng([seed, code, i])
        age = int(np.clip(rng.normal(60 if severe else 52, 14), 18, 90))
        sex = "M" if rng.uniform() < (0.6 if severe else 0.5) else "F"
        case = SyntheticCase(str(SPLIT_ID_OFFSET[split] + i), covid, severe, age, sex)
        write_image(make_case_image(case, rng, size, spacing), image_dir / f"{case.patient_id}.mha")
        written.append(case)
    with (out / "labels.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=LABEL_COLUMNS)
        writer.writeheader()
        writer.writerows(case.row() for case in written)
    return written


def read_labels(dataset: str | Path) -> list[SyntheticCase]:
    with (Path(dataset) / "labels.csv").open(newline="") as handle:
        return [
            SyntheticCase(
                row["PatientID"],
                int(float(row["probCOVID"])),
                int(float(row["probSevere"])),
                int(row["age"]),
                row["sex"],
            )
            for row in csv.DictReader(handle)
        ]


def to_training_layout(dataset: str | Path, dest: str | Path) -> Path:
    """Arrange a dataset as the T3 training container sees /input:
    ``dest/data/mha/<PatientID>.mha`` and ``dest/metadata/reference.csv``."""
    dataset, dest = Path(dataset), Path(dest)
    mha_dir = dest / "data" / "mha"
    mha_dir.mkdir(parents=True, exist_ok=True)
    (dest / "metadata").mkdir(parents=True, exist_ok=True)
    for case in read_labels(dataset):
        shutil.copyfile(
            dataset / "images" / "ct" / f"{case.patient_id}.mha", mha_dir / f"{case.patient_id}.mha"
        )
    shutil.copyfile(dataset / "labels.csv", dest / "metadata" / "reference.csv")
    return dest


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m baseline_algorithm.synthetic", description=__doc__.split("\n")[0]
    )
    parser.add_argument("out", type=Path, help="dataset directory to write")
    parser.add_argument("--cases", type=int, default=20)
    parser.add_argument("--size", type=int, default=64, help="in-plane voxels (x and y)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--split", choices=sorted(SPLIT_CODE), default="train")
    parser.add_argument(
        "--spacing", type=float, nargs=3, default=list(DEFAULT_SPACING), metavar=("X", "Y", "Z")
    )
    parser.add_argument("--prevalence", type=float, default=0.5)
    parser.add_argument("--severe-fraction", type=float, default=0.4)
    args = parser.parse_args(argv)
    cases = generate_dataset(
        args.out,
        args.cases,
        args.size,
        args.seed,
        args.split,
        args.spacing,
        args.prevalence,
        args.severe_fraction,
    )
    positives = sum(c.covid for c in cases)
    severe = sum(c.severe for c in cases)
    print(f"wrote {len(cases)} cases to {args.out} ({positives} COVID-19, {severe} severe)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
