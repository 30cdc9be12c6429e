"""Uncertainty for challenge metrics: DeLong tests and intervals, bootstrap intervals, ROC bands.

DeLong follows Sun & Xu (2014), "Fast implementation of DeLong's algorithm for comparing the
areas under correlated receiver operating characteristic curves": AUCs and their structural
components come from three midrank computations (positives, negatives, all), so k
submissions cost O(k N log N) and their full k x k covariance matrix one matrix product.
Midranks give tied scores half credit, exactly as the Mann-Whitney AUC does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy.special import ndtr, ndtri
from scipy.stats import rankdata

from evaluation.metrics import Metric, MetricError, binary_labels, finite_values, get_metric
from evaluation.resampling import CaseCounts, cached_counts, cached_stratified_counts

Array = npt.NDArray[Any]
FloatArray = npt.NDArray[np.float64]

DEFAULT_SEED = 20211
# The covariance route to var(AUC_a - AUC_b) subtracts nearly equal numbers for nearly
# identical submissions; below this fraction of var_a + var_b the pair is recomputed from
# the differences of its structural components, which is exact for identical submissions.
_CANCELLATION_GUARD = 1e-8
# Placement values lie in [0, 1] on a grid of 1/(2 n); a variance below this is rounding.
_ZERO_VARIANCE = 1e-30


# --- DeLong ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class DelongComponents:
    """AUCs and structural components (placement values) of k score vectors."""

    aucs: FloatArray  # (k,)
    v_pos: FloatArray  # (k, m): per positive, the share of negatives it outscores
    v_neg: FloatArray  # (k, n): per negative, the share of positives that outscore it

    @property
    def covariance(self) -> FloatArray:
        """DeLong covariance matrix of the k AUCs: S_pos / m + S_neg / n."""
        m, n = self.v_pos.shape[1], self.v_neg.shape[1]
        cov = _cov(self.v_pos) / m + _cov(self.v_neg) / n
        symmetric: FloatArray = (cov + cov.T) / 2.0
        return symmetric  # exactly symmetric, whatever order BLAS summed in

    def variance_of_difference(self, a: int, b: int) -> float:
        """var(AUC_a - AUC_b) from the differences of the components (no cancellation)."""
        m, n = self.v_pos.shape[1], self.v_neg.shape[1]
        d_pos = self.v_pos[a] - self.v_pos[b]
        d_neg = self.v_neg[a] - self.v_neg[b]
        return float(np.var(d_pos, ddof=1) / m + np.var(d_neg, ddof=1) / n)


def _cov(v: FloatArray) -> FloatArray:
    d = v - v.mean(axis=1, keepdims=True)
    cov: FloatArray = (d @ d.T) / (v.shape[1] - 1)
    return cov


def delong_components(y_true: Array, scores: Array) -> DelongComponents:
    """Structural components of `scores` (k, N) or (N,) against binary `y_true` (N,)."""
    y = binary_labels(y_true)
    s = np.atleast_2d(finite_values(scores, what="scores"))
    if s.shape[1] != y.shape[0]:
        raise ValueError(f"scores have {s.shape[1]} cases, y_true has {y.shape[0]}")
    m, n = int(y.sum()), int((~y).sum())
    if m < 2 or n < 2:
        raise MetricError(
            f"DeLong needs at least two positive and two negative cases; there are {m} "
            f"positive and {n} negative"
        )
    x, z = s[:, y], s[:, ~y]
    tx = rankdata(x, axis=1)
    tz_neg = rankdata(z, axis=1)
    t_all = rankdata(np.concatenate([x, z], axis=1), axis=1)
    # A positive's rank among all minus its rank among positives counts the negatives below
    # it (ties: one half); likewise for negatives.
    v_pos = (t_all[:, :m] - tx) / n
    v_neg = 1.0 - (t_all[:, m:] - tz_neg) / m
    aucs = v_pos.mean(axis=1)
    return DelongComponents(aucs=aucs, v_pos=v_pos, v_neg=v_neg)


@dataclass(frozen=True)
class DelongResult:
    auc_a: float
    auc_b: float
    var_a: float
    var_b: float
    cov: float
    z: float
    p: float  # two-sided


def _z_and_p(diff: float, var_diff: float) -> tuple[float, float]:
    """z and two-sided p of a difference of AUCs.

    A zero variance of the difference (identical submissions, or both perfect) with equal
    AUCs means no evidence of a difference: z = 0, p = 1. Unequal AUCs with zero variance
    (one submission perfect, the other perfectly wrong) are as different as the data can
    show: z = +-inf, p = 0.
    """
    if var_diff <= _ZERO_VARIANCE:
        if abs(diff) <= 1e-12:
            return 0.0, 1.0
        return math.copysign(math.inf, diff), 0.0
    z = diff / math.sqrt(var_diff)
    return z, float(2.0 * ndtr(-abs(z)))


def delong_test(y_true: Array, scores_a: Array, scores_b: Array) -> DelongResult:
    """DeLong's paired test of AUC(a) == AUC(b) on the same cases."""
    comp = delong_components(y_true, np.stack([finite_values(scores_a), finite_values(scores_b)]))
    cov = comp.covariance
    diff = float(comp.aucs[0] - comp.aucs[1])
    z, p = _z_and_p(diff, comp.variance_of_difference(0, 1))
    return DelongResult(
        auc_a=float(comp.aucs[0]),
        auc_b=float(comp.aucs[1]),
        var_a=float(cov[0, 0]),
        var_b=float(cov[1, 1]),
        cov=float(cov[0, 1]),
        z=z,
        p=p,
    )


@dataclass(frozen=True)
class DelongPairs:
    aucs: FloatArray  # (k,)
    cov: FloatArray  # (k, k) DeLong covariance of the AUCs
    z: FloatArray  # (k, k): z[a, b] tests AUC_a - AUC_b
    p: FloatArray  # (k, k) two-sided p-values, symmetric, 1 on the diagonal


def delong_all_pairs(y_true: Array, scores: Array) -> DelongPairs:
    """DeLong tests between every pair of k submissions, `scores` (k, N), in one pass."""
    comp = delong_components(y_true, scores)
    cov = comp.covariance
    aucs = comp.aucs
    var = np.diag(cov)
    var_diff = var[:, None] + var[None, :] - 2.0 * cov
    diff = aucs[:, None] - aucs[None, :]
    k = aucs.size
    z = np.zeros((k, k))
    p = np.ones((k, k))
    with np.errstate(divide="ignore", invalid="ignore"):
        z_fast = diff / np.sqrt(var_diff)
    safe = var_diff > _CANCELLATION_GUARD * (var[:, None] + var[None, :])
    z[safe] = z_fast[safe]
    p[safe] = 2.0 * ndtr(-np.abs(z_fast[safe]))
    a_idx, b_idx = np.nonzero(~safe & np.triu(np.ones((k, k), dtype=bool), 1))
    for a, b in zip(a_idx.tolist(), b_idx.tolist(), strict=True):
        z[a, b], p[a, b] = _z_and_p(float(diff[a, b]), comp.variance_of_difference(a, b))
        z[b, a], p[b, a] = -z[a, b], p[a, b]
    np.fill_diagonal(z, 0.0)
    np.fill_diagonal(p, 1.0)
    return DelongPairs(aucs=aucs, cov=cov, z=z, p=p)


def delong_matrix(y_true: Array, scores: Array) -> FloatArray:
    """The k x k matrix of two-sided DeLong p-values between the rows of `scores` (k, N)."""
    return delong_all_pairs(y_true, scores).p


def auc_ci_delong(
    y_true: Array, scores: Array, level: float = 0.95
) -> tuple[float, float, float, float]:
    """AUC with DeLong's variance and a plain normal (Wald) interval clipped to [0, 1].

    Returns (auc, lower, upper, variance). This is the interval pROC's `ci.auc(method =
    "delong")` reports; an AUC of 0 or 1 has variance 0 and a zero-width interval.
    """
    comp = delong_components(y_true, scores)
    variance = float(comp.covariance[0, 0])
    auc = float(comp.aucs[0])
    half = float(ndtri(0.5 + level / 2.0)) * math.sqrt(max(variance, 0.0))
    return auc, max(0.0, auc - half), min(1.0, auc + half), variance


# --- bootstrap ------------------------------------------------------------------------------


@dataclass(frozen=True)
class BootstrapCI:
    value: float  # the metric on the cases themselves
    lower: float  # NaN when the interval is refused (see `reason`)
    upper: float
    n: int  # cases the metric was computed on
    n_resamples_used: int  # resamples the percentiles came from: all of them, or none
    n_resamples_dropped: int  # resamples where the metric was undefined
    seed: int
    level: float
    stratified: bool = False  # class counts fixed per resample (AUC-type metrics)
    reason: str | None = None  # why no interval is given, when none is


def _subset_index(n: int, subset_mask: Array | None) -> npt.NDArray[np.intp] | None:
    if subset_mask is None:
        return None
    mask = np.asarray(subset_mask, dtype=bool)
    if mask.shape != (n,):
        raise ValueError(f"subset_mask must have shape ({n},)")
    return np.flatnonzero(mask)


def resample_counts(
    n_cases: int, n_resamples: int, seed: int, subset: npt.NDArray[np.intp] | None = None
) -> CaseCounts:
    """The bootstrap resamples of all `n_cases`, restricted to `subset` if given.

    Resamples are drawn over all cases, the test set as it was sampled; a subset metric is
    computed on the drawn cases that fall in the subset, so the subset's size varies between
    resamples as it would between test sets.
    """
    counts = cached_counts(n_cases, n_resamples, seed)
    return counts if subset is None else counts.restrict(subset)


def metric_counts(
    metric: Metric,
    y_scored: Array,
    n_cases: int,
    n_resamples: int,
    seed: int,
    subset: npt.NDArray[np.intp] | None = None,
) -> CaseCounts:
    """The resamples a metric is bootstrapped on, over the scored cases `y_scored` (the
    subset's labels when `subset` is given, in subset order).

    AUC-type metrics: stratified, each class (within the subset) keeping its count in every
    resample, the cases outside the subset never drawn. Others: `resample_counts`. The draw
    depends only on (N, the scored cases' positions and strata, R, seed), so anything scored
    on the same cases (every member of a board, and their ensemble) gets the same resamples.
    """
    if metric.strata is None:
        return resample_counts(n_cases, n_resamples, seed, subset)
    strata = np.full(n_cases, -1, dtype=np.int64)
    strata[slice(None) if subset is None else subset] = metric.strata(y_scored)
    counts = cached_stratified_counts(strata, n_resamples, seed)
    return counts if subset is None else counts.restrict(subset)


_UNDEFINED_WHY = {
    "cohen_kappa": "labels and predictions all one grade, or no case of the subset drawn",
    "quadratic_kappa": "labels and predictions all one grade, or no case of the subset drawn",
    "pearson": "constant labels or predictions, or no case of the subset drawn",
    "mae": "no case of the subset drawn",
    "accuracy": "no case of the subset drawn",
}


def bootstrap_ci(
    metric_kind: str,
    y_true: Array,
    y_pred: Array,
    n_resamples: int = 1000,
    seed: int = DEFAULT_SEED,
    level: float = 0.95,
    subset_mask: Array | None = None,
) -> BootstrapCI:
    """Percentile bootstrap interval of a metric.

    The resamples are those of `metric_counts` (stratified for AUC-type metrics, where a
    resample is then always defined) and all R metric values are computed at once from the
    case counts. A metric undefined on any resample gets no interval and a `reason`: keeping
    only the resamples where it is defined would give an interval conditional on them, too
    narrow exactly when the cases are few.
    """
    if not 0.0 < level < 1.0:
        raise ValueError("level must lie strictly between 0 and 1")
    metric = get_metric(metric_kind)
    y_t, y_p = np.asarray(y_true), np.asarray(y_pred)
    n_all = y_t.shape[0]
    subset = _subset_index(n_all, subset_mask)
    if subset is not None:
        y_t, y_p = y_t[subset], y_p[subset]
    value = metric.point(y_t, y_p)
    counts = metric_counts(metric, y_t, n_all, n_resamples, seed, subset)
    with np.errstate(divide="ignore", invalid="ignore"):
        values = metric.resampled(counts, y_t, y_p)
    undefined = int(np.count_nonzero(~np.isfinite(values)))
    reason: str | None = None
    if not math.isfinite(value):
        reason = f"{metric_kind} is undefined on these cases, so it has no interval"
    elif undefined:
        why = _UNDEFINED_WHY.get(metric_kind, "a class absent")
        reason = (
            f"{metric_kind} is undefined on {undefined} of {values.size} bootstrap resamples "
            f"({why}); no interval is given rather than one conditional on the others"
        )
    if reason is None:
        alpha = (1.0 - level) / 2.0
        lower, upper = (float(q) for q in np.quantile(values, [alpha, 1.0 - alpha]))
    else:
        lower = upper = math.nan
    return BootstrapCI(
        value=value,
        lower=lower,
        upper=upper,
        n=int(y_t.shape[0]),
        n_resamples_used=0 if reason else int(values.size),
        n_resamples_dropped=undefined,
        seed=seed,
        level=level,
        stratified=metric.strata is not None,
        reason=reason,
    )


# --- ROC curve with a bootstrap band --------------------------------------------------------


@dataclass(frozen=True)
class RocBand:
    fpr: FloatArray  # the fixed grid
    tpr: FloatArray  # the ROC curve of the cases themselves, interpolated on the grid
    tpr_lower: FloatArray  # pointwise percentile band over the resamples
    tpr_upper: FloatArray
    n_resamples_used: int


def _tpr_on_grid(
    group_pos: npt.NDArray[np.int64], group_neg: npt.NDArray[np.int64], grid: FloatArray
) -> FloatArray:
    """TPR at each grid FPR, for rows of per-threshold-group counts (descending score).

    The ROC of a row joins (FPR, TPR) after each tie group, linearly between points, taking
    the highest TPR on a vertical segment (np.interp with the last of repeated FPRs).
    """
    rows, _ = group_pos.shape
    tp = np.zeros((rows, group_pos.shape[1] + 1))
    fp = np.zeros_like(tp)
    np.cumsum(group_pos, axis=1, out=tp[:, 1:])
    np.cumsum(group_neg, axis=1, out=fp[:, 1:])
    n_pos, n_neg = tp[:, -1:], fp[:, -1:]
    undefined = ((n_pos == 0) | (n_neg == 0))[:, 0]
    # Undefined rows get a dummy curve (a NaN would break the sorted order used below).
    tpr = tp / np.where(n_pos > 0, n_pos, 1.0)
    fpr = fp / np.where(n_neg > 0, n_neg, 1.0)
    # Row-wise searchsorted in one call: offset each row so the flattened FPRs stay sorted.
    width = tp.shape[1]
    offset = 2.0 * np.arange(rows)[:, None]
    flat = (fpr + offset).ravel()
    targets = grid[None, :] + offset
    j = np.searchsorted(flat, targets.ravel(), side="right").reshape(rows, -1) - 1
    j -= (np.arange(rows) * width)[:, None]
    j1 = np.minimum(j + 1, width - 1)
    take = np.take_along_axis
    f0, f1 = take(fpr, j, 1), take(fpr, j1, 1)
    t0, t1 = take(tpr, j, 1), take(tpr, j1, 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        frac = np.where(f1 > f0, (grid[None, :] - f0) / (f1 - f0), 0.0)
    out = t0 + frac * (t1 - t0)
    out[undefined] = np.nan
    return out


def roc_band(
    y_true: Array,
    y_score: Array,
    n_resamples: int = 1000,
    seed: int = DEFAULT_SEED,
    level: float = 0.95,
    grid_points: int = 101,
    subset_mask: Array | None = None,
) -> RocBand:
    """ROC curve on a fixed FPR grid with a pointwise percentile bootstrap band of TPR.

    Uses the same resamples as `bootstrap_ci` with the same seed.
    """
    y = binary_labels(y_true)
    s = finite_values(y_score, y.shape[0])
    n_all = y.shape[0]
    subset = _subset_index(n_all, subset_mask)
    if subset is not None:
        y, s = y[subset], s[subset]
    if y.all() or not y.any():
        raise ValueError("a ROC curve needs at least one positive and one negative case")
    grid = np.linspace(0.0, 1.0, grid_points)
    order = np.argsort(-s, kind="stable")
    sorted_s = s[order]
    starts = np.flatnonzero(np.r_[True, sorted_s[1:] != sorted_s[:-1]])
    pos_sorted = y[order]
    point = _tpr_on_grid(
        np.add.reduceat(pos_sorted.astype(np.int64), starts)[None, :],
        np.add.reduceat((~pos_sorted).astype(np.int64), starts)[None, :],
        grid,
    )[0]
    counts = metric_counts(get_metric("auc"), y, n_all, n_resamples, seed, subset).take(order)
    curves = []
    for r0 in range(0, counts.shape[0], 128):
        block = counts[r0 : r0 + 128].astype(np.int64)
        curves.append(
            _tpr_on_grid(
                np.add.reduceat(block * pos_sorted, starts, axis=1),
                np.add.reduceat(block * ~pos_sorted, starts, axis=1),
                grid,
            )
        )
    tprs = np.concatenate(curves)
    tprs = tprs[np.isfinite(tprs).all(axis=1)]
    alpha = (1.0 - level) / 2.0
    if tprs.shape[0]:
        lower, upper = np.quantile(tprs, [alpha, 1.0 - alpha], axis=0)
    else:
        lower = upper = np.full_like(grid, np.nan)
    return RocBand(
        fpr=grid,
        tpr=point,
        tpr_lower=lower,
        tpr_upper=upper,
        n_resamples_used=int(tprs.shape[0]),
    )
