"""Segmentation metrics against an independent computation: brute-force point-set
distances over surface voxels found by explicit neighbour checks, Dice counted by hand."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk  # a server dependency: missing, the test fails (never skips)

from evaluation.metrics import METRICS
from evaluation.segmentation import (
    Mask,
    MaskError,
    case_scores,
    label_scores,
    read_mask,
    worst_distance,
)
from evaluation.stats import bootstrap_ci

SPACING = (2.5, 0.7, 1.3)  # array axes (z, y, x)


def _brute_surface(mask: np.ndarray) -> list[tuple[int, ...]]:
    """Voxels with a face neighbour outside the mask or outside the volume, by loops."""
    out = []
    for idx in zip(*np.nonzero(mask), strict=True):
        for axis, step in itertools.product(range(mask.ndim), (-1, 1)):
            n = list(idx)
            n[axis] += step
            if not 0 <= n[axis] < mask.shape[axis] or not mask[tuple(n)]:
                out.append(tuple(int(i) for i in idx))
                break
    return out


def _brute(pred: np.ndarray, ref: np.ndarray, spacing: tuple[float, ...]) -> tuple[float, ...]:
    sp = np.array(_brute_surface(pred), dtype=float) * spacing
    sg = np.array(_brute_surface(ref), dtype=float) * spacing
    pair = np.sqrt(((sp[:, None, :] - sg[None, :, :]) ** 2).sum(axis=2))
    d_pg, d_gp = pair.min(axis=1), pair.min(axis=0)
    hd95 = max(np.percentile(d_pg, 95), np.percentile(d_gp, 95))
    assd = (d_pg.sum() + d_gp.sum()) / (len(d_pg) + len(d_gp))
    inter = sum(1 for i in np.ndindex(pred.shape) if pred[i] and ref[i])
    dice = 2 * inter / (pred.sum() + ref.sum())
    return float(dice), float(hd95), float(assd)


def _ball(
    shape: tuple[int, ...], centre: tuple[float, ...], radii: tuple[float, ...]
) -> np.ndarray:
    grid = np.indices(shape).astype(float)
    r = sum(((g - c) / a) ** 2 for g, c, a in zip(grid, centre, radii, strict=True))
    return np.asarray(r <= 1.0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_brute_force_with_anisotropic_spacing(seed: int) -> None:
    rng = np.random.default_rng(seed)
    shape = (9, 12, 11)
    ref = _ball(shape, (4, 6, 5), (3, 4.5, 3.5))
    pred = _ball(shape, tuple(rng.uniform(3.5, 6.5, 3)), tuple(rng.uniform(2, 4.5, 3)))
    pred[tuple(rng.integers(0, s) for s in shape)] = True  # a stray voxel far off
    got = label_scores(pred, ref, SPACING)
    dice, hd95, assd = _brute(pred, ref, SPACING)
    assert got.dice == pytest.approx(dice, rel=1e-12)
    assert got.hd95 == pytest.approx(hd95, rel=1e-9)
    assert got.assd == pytest.approx(assd, rel=1e-9)
    assert got.empty is None


def test_hand_computed_two_by_two() -> None:
    # Two voxels each, sharing one: Dice = 2*1/(2+2); shifted by one voxel along x (1.3 mm).
    ref = np.zeros((1, 1, 4), bool)
    pred = np.zeros((1, 1, 4), bool)
    ref[0, 0, 0:2] = True
    pred[0, 0, 1:3] = True
    got = label_scores(pred, ref, SPACING)
    assert got.dice == 0.5
    # Every voxel is surface; distances: pred {1: 0, 2: 1.3}, ref {0: 1.3, 1: 0}.
    assert got.assd == pytest.approx(1.3 / 2)
    assert got.hd95 == pytest.approx(np.percentile([0, 1.3], 95))


def test_empty_mask_conventions() -> None:
    shape = (4, 5, 6)
    empty = np.zeros(shape, bool)
    some = np.zeros(shape, bool)
    some[1:3, 1:3, 1:3] = True
    both = label_scores(empty, empty, SPACING)
    assert (both.dice, both.hd95, both.assd, both.empty) == (1.0, 0.0, 0.0, "both")
    worst = math.sqrt((3 * 2.5) ** 2 + (4 * 0.7) ** 2 + (5 * 1.3) ** 2)
    assert worst_distance(shape, SPACING) == pytest.approx(worst)
    for pred, ref, which in ((empty, some, "prediction"), (some, empty, "reference")):
        s = label_scores(pred, ref, SPACING)
        assert s.dice == 0.0 and s.empty == which
        assert s.hd95 == pytest.approx(worst) and s.assd == pytest.approx(worst)


def _write(path: Path, labels: np.ndarray, spacing_xyz: tuple[float, ...]) -> Path:
    image = sitk.GetImageFromArray(labels.astype(np.uint8))
    image.SetSpacing(spacing_xyz)
    sitk.WriteImage(image, str(path), True)
    return path


def test_reads_mha_honouring_spacing(tmp_path: Path) -> None:
    ref = np.zeros((6, 7, 8), np.uint8)
    ref[1:4, 1:5, 2:6] = 1
    ref[4:6, 5:7, 6:8] = 2
    pred = np.roll(ref, 1, axis=2)
    spacing_xyz = tuple(reversed(SPACING))
    r = read_mask(_write(tmp_path / "r.mha", ref, spacing_xyz))
    p = read_mask(_write(tmp_path / "p.mha", pred, spacing_xyz))
    assert r.spacing == pytest.approx(SPACING)
    scores = case_scores(p, r, [1, 2])
    for label in (1, 2):
        want = _brute(pred == label, ref == label, SPACING)
        got = scores[label]
        assert (got.dice, got.hd95, got.assd) == pytest.approx(want)


def test_mismatched_masks_are_refused(tmp_path: Path) -> None:
    ref = Mask(np.zeros((3, 4, 5), np.uint8), SPACING)
    with pytest.raises(MaskError, match="voxels"):
        case_scores(Mask(np.zeros((3, 4, 6), np.uint8), SPACING), ref, [1])
    with pytest.raises(MaskError, match="spacing"):
        case_scores(Mask(np.zeros((3, 4, 5), np.uint8), (1.0, 1.0, 1.0)), ref, [1])
    (tmp_path / "junk.mha").write_bytes(b"not an image")
    with pytest.raises(MaskError):
        read_mask(tmp_path / "junk.mha")


def test_registry_means_and_bootstrap_interval() -> None:
    values = np.array([0.9, 0.8, 0.7, 0.95, 0.6, 0.85])
    assert METRICS["dice"].higher_is_better and not METRICS["hd95"].higher_is_better
    ci = bootstrap_ci("dice", np.zeros(6), values, n_resamples=1000, seed=7)
    assert ci.value == pytest.approx(values.mean())
    assert ci.lower < ci.value < ci.upper
    # An independent percentile bootstrap of the mean, drawing the same indices
    # (heldout's resampling draws exactly rng.integers(0, N, size=(R, N))).
    idx = np.random.default_rng(7).integers(0, 6, size=(1000, 6))
    means = values[idx].mean(axis=1)
    lo, hi = np.quantile(means, [0.025, 0.975])
    assert (ci.lower, ci.upper) == pytest.approx((lo, hi), abs=1e-9)


def test_evaluation_program_scores_image_outputs(tmp_path: Path) -> None:
    """predictions.json in grand-challenge's form with image outputs under
    /input/<pk>/output/images/<slug>/<name>, reference masks beside labels.csv."""
    import json

    from evaluation.evaluate import main

    gt, inp = tmp_path / "gt", tmp_path / "input"
    (gt / "lungs").mkdir(parents=True)
    (gt / "labels.csv").write_text("case,split\nc1,test\nc2,test\nc3,test\n")
    jobs = []
    spacing_xyz = (1.0, 1.5, 2.0)
    for n, case in enumerate(("c1", "c2", "c3")):
        ref = np.zeros((8, 8, 8), np.uint8)
        ref[2:5, 1:4, 1:4] = 1
        ref[2:5, 4:7, 4:7] = 2
        pred = ref.copy()
        pred[2, 1, 1] = 0 if n else 1  # small, case-dependent error
        pred[6, 6, 6] = 2 if n == 2 else 0
        _write(gt / "lungs" / f"{case}.mha", ref, spacing_xyz)
        out = inp / str(n) / "output" / "images" / "lung-mask"
        out.mkdir(parents=True)
        _write(out / f"{n}-uuid.mha", pred, spacing_xyz)
        jobs.append(
            {
                "pk": n,
                "inputs": [{"interface": {"slug": "ct"}, "image": {"name": f"{case}.mha"}}],
                "outputs": [
                    {
                        "interface": {"slug": "lung-mask", "relative_path": "images/lung-mask"},
                        "image": {"name": f"{n}-uuid.mha"},
                    }
                ],
            }
        )
    (inp / "predictions.json").write_text(json.dumps(jobs))
    config = {
        "primary": "hd95",
        "metrics": [
            {"name": "dice", "kind": "dice", "output": "lung-mask", "label": "lungs",
             "classes": [1, 2]},
            {"name": "hd95", "kind": "hd95", "output": "lung-mask", "label": "lungs",
             "classes": [1, 2]},
            {"name": "assd-left", "kind": "assd", "output": "lung-mask", "label": "lungs",
             "classes": [1]},
        ],
    }  # fmt: skip
    (gt / "metrics.json").write_text(json.dumps(config))
    result_path = tmp_path / "metrics.json"
    code = main(
        ["--predictions", str(inp / "predictions.json"), "--ground-truth",
         str(gt / "labels.csv"), "--config", str(gt / "metrics.json"),
         "--output", str(result_path)]
    )  # fmt: skip
    result = json.loads(result_path.read_text())
    assert code == 0, result
    agg = result["aggregates"]
    assert agg["dice"]["higher_is_better"] and not agg["hd95"]["higher_is_better"]
    assert set(agg["dice"]["per_label"]) == {"1", "2"}
    assert agg["dice"]["per_label"]["2"]["value"] == pytest.approx((2 + 54 / 55) / 3)
    per_case = result["case"]["c1"]["lung-mask"]
    assert per_case["1"]["dice"] == 1.0 and per_case["2"]["hd95"] == 0.0
    assert agg["dice"]["ci_lower"] <= agg["dice"]["value"] <= agg["dice"]["ci_upper"]
    assert agg["dice"]["n_resamples"] == 1000

    # A mask of the wrong size is the participant's to fix: exit 1 naming the case.
    _write(inp / "1" / "output" / "images" / "lung-mask" / "1-uuid.mha",
           np.zeros((4, 4, 4), np.uint8), spacing_xyz)  # fmt: skip
    code = main(
        ["--predictions", str(inp / "predictions.json"), "--ground-truth",
         str(gt / "labels.csv"), "--config", str(gt / "metrics.json"),
         "--output", str(result_path)]
    )  # fmt: skip
    error = json.loads(result_path.read_text())["error"]
    assert code == 1 and error["kind"] == "invalid_predictions" and error["cases"] == ["c2"]
