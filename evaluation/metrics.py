"""Challenge metrics over numpy arrays, each with a resampled form for the bootstrap.

Every metric has two forms:

- `point(y_true, y_pred) -> float`: the metric on the cases given;
- `resampled(counts, y_true, y_pred) -> (R,) array`: the metric on each of R bootstrap
  resamples described by a `CaseCounts` matrix (how often each case was drawn), NaN where a
  resample leaves it undefined (say, no positive case). The resampled forms work on blocks
  of resamples with array operations, never one resample at a time; with unit counts they
  equal the point form (the tests check it).

Array conventions, per kind:

- auc: y_true (N,) binary (0/1 or bool), y_pred (N,) finite scores.
- macro_auroc: y_pred (N, K) scores; y_true either (N,) class indices 0..K-1 (multi-class,
  one-vs-rest) or (N, K) binary columns (multi-label). Macro = unweighted mean over classes.
- cohen_kappa, quadratic_kappa: integer grades (N,) for both; the categories are every
  integer between the smallest and largest grade seen, so quadratic weights are (i - j)^2
  in grade units (scikit-learn's `cohen_kappa_score(labels=range(lo, hi + 1))`).
- mae, pearson: finite numbers (N,).
- accuracy: (N,) values of any comparable type; a case is right when y_pred == y_true.
- dice, hd95, assd: y_pred (N,) per-case values (evaluation/segmentation.py), y_true unused.

Metrics that are undefined because of the ground truth (AUC with one class) raise
`MetricError`; metrics that are undefined because of the predictions (Pearson r of constant
predictions, kappa when labels and predictions are all one grade) return NaN.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy.stats import rankdata

from evaluation.resampling import CaseCounts
from evaluation.segmentation import mean_score, resampled_mean_score

Array = npt.NDArray[Any]
FloatArray = npt.NDArray[np.float64]

# Resamples processed at a time: a (chunk x N) int32 block stays within the CPU caches.
_CHUNK = 64
# ... but at most this many (resample x case) cells per block (~4 MB of int32, the size of
# one core's share of the caches): 64 rows of 70,000 negatives (100,000 cases) spilled to
# memory, and the bootstrap AUC then cost 16x rather than 11x that of 10,000 cases.
_BLOCK_CELLS = 1 << 20


def _block_rows(width: int) -> int:
    """Resamples per block for rows of `width` cases (at least one)."""
    return max(1, min(_CHUNK, _BLOCK_CELLS // max(width, 1)))


class MetricError(ValueError):
    """The metric cannot be computed on these labels."""


# --- input checks -------------------------------------------------------------------------


def binary_labels(y: Array, what: str = "y_true") -> npt.NDArray[np.bool_]:
    """`y` as booleans; anything but 0/1 (or booleans) is a ValueError naming `what`."""
    a = np.asarray(y)
    if a.dtype == np.bool_:
        return a
    if a.dtype.kind not in "iuf" or not np.isin(a, (0, 1)).all():
        raise ValueError(f"{what} must be binary (0/1)")
    return a.astype(bool)


def finite_values(x: Array, n: int | None = None, what: str = "y_pred") -> FloatArray:
    """`x` as float64, checked finite and (when `n` is given) of `n` cases."""
    a = np.asarray(x, dtype=np.float64)
    if n is not None and a.shape[0] != n:
        raise ValueError(f"{what} has {a.shape[0]} cases, y_true has {n}")
    if not np.isfinite(a).all():
        raise ValueError(f"{what} must be finite")
    return a


def _grades(x: Array, what: str) -> npt.NDArray[np.int64]:
    a = finite_values(x, what=what)
    if a.ndim != 1 or not np.array_equal(a, np.round(a)):
        raise ValueError(f"{what} must be a 1-D array of integer grades")
    return a.astype(np.int64)


def round_grades(x: Array) -> npt.NDArray[np.int64]:
    """Round predictions to the nearest grade, halves up (2.5 -> 3), as ordinal metrics need."""
    return np.floor(finite_values(x) + 0.5).astype(np.int64)


def canonical_label(value: Any) -> str:
    """A comparison key under which 1, 1.0, "1", "1.0", True and "true" are all equal.

    Ground truth comes from CSV (strings) and predictions from JSON (numbers, booleans,
    strings), so label equality (subset selection, accuracy) compares these keys.
    """
    if isinstance(value, bool | np.bool_):
        return "1" if value else "0"
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, float | np.floating):
        f = float(value)
        return str(int(f)) if math.isfinite(f) and f == int(f) else repr(f)
    if isinstance(value, str):
        s = value.strip()
        if s.lower() in ("true", "false"):
            return "1" if s.lower() == "true" else "0"
        try:
            return canonical_label(int(s))
        except ValueError:
            pass
        try:
            return canonical_label(float(s))
        except ValueError:
            return s
    return repr(value)


def canonical_labels(column: Array | Sequence[Any]) -> npt.NDArray[np.str_]:
    """`canonical_label` of every value of `column`, as a string array. The key is computed
    once per distinct value (a label column holds a handful among thousands of cases), and
    spread back to the cases by array indexing, not case by case in Python."""
    if isinstance(column, np.ndarray) and column.ndim == 1 and column.dtype.kind in "biufU":
        distinct, inverse = np.unique(column, return_inverse=True)
        keys = [canonical_label(v) for v in distinct.tolist()]
        return np.asarray(keys, dtype=np.str_)[inverse]
    values = list(column)
    try:
        # Values equal in Python (1, 1.0, True) share a key anyway; NaNs stay apart (each is
        # found again by identity), and get the same key.
        lookup = {v: canonical_label(v) for v in dict.fromkeys(values)}
    except TypeError:  # unhashable values: one key each
        return np.asarray([canonical_label(v) for v in values], dtype=np.str_)
    return np.asarray(list(map(lookup.__getitem__, values)), dtype=np.str_)


def subset_mask(column: Array | Sequence[Any], value: Any) -> npt.NDArray[np.bool_]:
    """Cases whose `column` value equals `value` under `canonical_label`."""
    key = canonical_label(value)
    if len(column) == 0:
        return np.zeros(0, dtype=bool)
    mask: npt.NDArray[np.bool_] = canonical_labels(column) == key
    return mask


# --- point metrics ------------------------------------------------------------------------


def roc_auc(y_true: Array, y_score: Array) -> float:
    """Area under the ROC curve (Mann-Whitney U with midranks: ties count one half)."""
    y = binary_labels(y_true)
    s = finite_values(y_score, y.shape[0])
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        raise MetricError("AUC needs at least one positive and one negative case")
    ranks = rankdata(s)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _class_columns(y_true: Array, y_score: Array) -> tuple[list[npt.NDArray[np.bool_]], FloatArray]:
    s = finite_values(y_score)
    if s.ndim != 2:
        raise ValueError("macro AUROC needs an (N, K) score matrix")
    y = np.asarray(y_true)
    if y.shape[0] != s.shape[0]:
        raise ValueError(f"y_pred has {s.shape[0]} cases, y_true has {y.shape[0]}")
    if y.ndim == 2:  # multi-label: one binary column per label
        if y.shape != s.shape:
            raise ValueError(f"labels {y.shape} and scores {s.shape} differ in shape")
        return [binary_labels(y[:, k], f"label column {k}") for k in range(y.shape[1])], s
    codes = _grades(y, "class indices")
    if codes.size and (codes.min() < 0 or codes.max() >= s.shape[1]):
        raise ValueError(f"class indices must lie in 0..{s.shape[1] - 1}")
    return [codes == k for k in range(s.shape[1])], s


def macro_auroc(y_true: Array, y_score: Array) -> float:
    """Unweighted mean of the one-vs-rest AUCs (multi-class) or per-label AUCs (multi-label)."""
    columns, s = _class_columns(y_true, y_score)
    aucs = []
    for k, yk in enumerate(columns):
        try:
            aucs.append(roc_auc(yk, s[:, k]))
        except MetricError as e:
            raise MetricError(f"class {k}: {e}") from None
    return float(np.mean(aucs))


def _confusion_setup(y_true: Array, y_pred: Array) -> tuple[npt.NDArray[np.int64], int]:
    t = _grades(y_true, "y_true")
    p = _grades(y_pred, "y_pred")
    if t.shape != p.shape or t.size == 0:
        raise ValueError("y_true and y_pred must be non-empty and of equal length")
    lo = int(min(t.min(), p.min()))
    k = int(max(t.max(), p.max())) - lo + 1
    return (t - lo) * k + (p - lo), k


def _kappa(confusion: FloatArray, weights: FloatArray) -> FloatArray:
    """Weighted kappa of (..., K, K) confusion counts; NaN where chance disagreement is 0."""
    n = confusion.sum(axis=(-2, -1))
    rows = confusion.sum(axis=-1)
    cols = confusion.sum(axis=-2)
    observed = (confusion * weights).sum(axis=(-2, -1))
    with np.errstate(divide="ignore", invalid="ignore"):
        expected = np.einsum("...i,...j,ij->...", rows, cols, weights) / n
        return np.where(expected > 0, 1.0 - observed / expected, np.nan)


def _kappa_weights(k: int, quadratic: bool) -> FloatArray:
    i = np.arange(k, dtype=np.float64)
    if quadratic:
        return (i[:, None] - i[None, :]) ** 2
    return 1.0 - np.eye(k)


def _point_kappa(y_true: Array, y_pred: Array, quadratic: bool) -> float:
    cells, k = _confusion_setup(y_true, y_pred)
    confusion = np.bincount(cells, minlength=k * k).reshape(k, k).astype(np.float64)
    return float(_kappa(confusion, _kappa_weights(k, quadratic)))


def cohen_kappa(y_true: Array, y_pred: Array) -> float:
    """Cohen's kappa of integer grades."""
    return _point_kappa(y_true, y_pred, quadratic=False)


def quadratic_kappa(y_true: Array, y_pred: Array) -> float:
    """Quadratic weighted kappa of integer grades (weights (i - j)^2)."""
    return _point_kappa(y_true, y_pred, quadratic=True)


def mae(y_true: Array, y_pred: Array) -> float:
    """Mean absolute error."""
    t = finite_values(y_true, what="y_true")
    return float(np.mean(np.abs(finite_values(y_pred, t.shape[0]) - t)))


def pearson(y_true: Array, y_pred: Array) -> float:
    """Pearson's r; NaN when either side is constant."""
    t = finite_values(y_true, what="y_true")
    p = finite_values(y_pred, t.shape[0])
    dt, dp = t - t.mean(), p - p.mean()
    denom = math.sqrt(float(dt @ dt) * float(dp @ dp))
    if denom == 0.0:
        return math.nan
    return float(np.clip((dt @ dp) / denom, -1.0, 1.0))


def accuracy(y_true: Array, y_pred: Array) -> float:
    """Fraction of cases whose prediction equals the label."""
    t, p = np.asarray(y_true), np.asarray(y_pred)
    if t.shape != p.shape or t.size == 0:
        raise ValueError("y_true and y_pred must be non-empty and of equal length")
    return float(np.mean(t == p))


# --- resampled metrics --------------------------------------------------------------------


def _row_totals(counts: CaseCounts) -> npt.NDArray[np.int64]:
    totals: npt.NDArray[np.int64] = counts.matrix.sum(axis=1, dtype=np.int64)
    return totals


def _weighted_sums(counts: CaseCounts, columns: FloatArray) -> FloatArray:
    """counts (R, N) @ columns (N, k), in float64 chunks (BLAS, no (R, N) float copy)."""
    m = counts.matrix
    out = np.empty((m.shape[0], columns.shape[1]))
    for r0 in range(0, m.shape[0], _CHUNK):
        out[r0 : r0 + _CHUNK] = m[r0 : r0 + _CHUNK].astype(np.float64) @ columns
    return out


def _resampled_binary_auc(
    counts: CaseCounts, y: npt.NDArray[np.bool_], s: FloatArray
) -> FloatArray:
    """AUC of every resample from the count matrix, O(R N) after one O(N log N) sort.

    For a resample with counts c, U = sum over positives i of c_i * (negative draws scoring
    below s_i + half the negative draws tied with s_i). Sorting the negatives once by score,
    the negative draws scoring below (at most) s_i are a prefix sum of their counts, read at
    the position `searchsorted` gives for s_i on the left (right). So 2U = sum_i c_i *
    (below_i + at_most_i), kept in integers: the result is exact.
    """
    r_total = counts.n_resamples
    pos, neg = np.flatnonzero(y), np.flatnonzero(~y)
    if pos.size == 0 or neg.size == 0:
        return np.full(r_total, np.nan)
    cp, cn = counts.take(pos), counts.take(neg)
    order = np.argsort(s[neg], kind="stable")
    sorted_neg = s[neg][order]
    below = np.searchsorted(sorted_neg, s[pos], side="left")
    at_most = np.searchsorted(sorted_neg, s[pos], side="right")
    ties = bool((at_most > below).any())
    # Products count * prefix count stay below N * max count: int32 unless N is huge.
    acc = np.int32 if neg.size * 255 < np.iinfo(np.int32).max else np.int64
    u2 = np.empty(r_total, dtype=np.int64)
    rows = _block_rows(neg.size)  # each resample's sums are exact integers: any block size
    for r0 in range(0, r_total, rows):
        r1 = min(r0 + rows, r_total)
        prefix = np.zeros((r1 - r0, neg.size + 1), dtype=acc)
        np.cumsum(np.take(cn[r0:r1], order, axis=1), axis=1, dtype=acc, out=prefix[:, 1:])
        twice = np.take(prefix, below, axis=1)
        if ties:
            twice += np.take(prefix, at_most, axis=1)
        else:
            twice *= 2
        twice *= cp[r0:r1]
        u2[r0:r1] = twice.sum(axis=1, dtype=np.int64)
    n_pos = cp.sum(axis=1, dtype=np.int64)
    n_neg = cn.sum(axis=1, dtype=np.int64)
    pairs = n_pos * n_neg
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(pairs > 0, u2 / (2.0 * pairs), np.nan)


def resampled_auc(counts: CaseCounts, y_true: Array, y_score: Array) -> FloatArray:
    y = binary_labels(y_true)
    return _resampled_binary_auc(counts, y, finite_values(y_score, y.shape[0]))


def resampled_macro_auroc(counts: CaseCounts, y_true: Array, y_score: Array) -> FloatArray:
    columns, s = _class_columns(y_true, y_score)
    per_class = [_resampled_binary_auc(counts, yk, s[:, k]) for k, yk in enumerate(columns)]
    # A resample missing any class's positives or negatives is undefined (NaN propagates).
    mean: FloatArray = np.mean(per_class, axis=0)
    return mean


def _resampled_kappa(
    counts: CaseCounts, y_true: Array, y_pred: Array, quadratic: bool
) -> FloatArray:
    cells, k = _confusion_setup(y_true, y_pred)
    # Group the cases by confusion cell; each resample's confusion counts are then sums of
    # contiguous column blocks of the reordered count matrix (np.add.reduceat).
    order = np.argsort(cells, kind="stable")
    sorted_cells = cells[order]
    starts = np.flatnonzero(np.r_[True, sorted_cells[1:] != sorted_cells[:-1]])
    grouped = np.add.reduceat(counts.take(order), starts, axis=1, dtype=np.int64)
    confusion = np.zeros((counts.n_resamples, k * k))
    confusion[:, sorted_cells[starts]] = grouped
    return _kappa(confusion.reshape(-1, k, k), _kappa_weights(k, quadratic))


def resampled_cohen_kappa(counts: CaseCounts, y_true: Array, y_pred: Array) -> FloatArray:
    return _resampled_kappa(counts, y_true, y_pred, quadratic=False)


def resampled_quadratic_kappa(counts: CaseCounts, y_true: Array, y_pred: Array) -> FloatArray:
    return _resampled_kappa(counts, y_true, y_pred, quadratic=True)


def resampled_mae(counts: CaseCounts, y_true: Array, y_pred: Array) -> FloatArray:
    t = finite_values(y_true, what="y_true")
    err = np.abs(finite_values(y_pred, t.shape[0]) - t)
    return _weighted_sums(counts, err[:, None])[:, 0] / _row_totals(counts)


def resampled_pearson(counts: CaseCounts, y_true: Array, y_pred: Array) -> FloatArray:
    t = finite_values(y_true, what="y_true")
    p = finite_values(y_pred, t.shape[0])
    # Centre on the full-sample means first so the moment sums do not cancel catastrophically.
    dt, dp = t - t.mean(), p - p.mean()
    sums = _weighted_sums(counts, np.stack([dt, dp, dt * dt, dp * dp, dt * dp], axis=1))
    n = _row_totals(counts).astype(np.float64)
    mt, mp = sums[:, 0] / n, sums[:, 1] / n
    var_t = sums[:, 2] / n - mt * mt
    var_p = sums[:, 3] / n - mp * mp
    cov = sums[:, 4] / n - mt * mp
    # A resample whose values are all equal has variance 0 up to rounding: call it undefined.
    floor_t = 1e-12 * float(dt @ dt) / t.size
    floor_p = 1e-12 * float(dp @ dp) / t.size
    ok = (var_t > floor_t) & (var_p > floor_p)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.clip(cov / np.sqrt(var_t * var_p), -1.0, 1.0)
    return np.where(ok, r, np.nan)


def resampled_accuracy(counts: CaseCounts, y_true: Array, y_pred: Array) -> FloatArray:
    t, p = np.asarray(y_true), np.asarray(y_pred)
    if t.shape != p.shape:
        raise ValueError("y_true and y_pred must be of equal length")
    right = counts.take(np.flatnonzero(t == p)).sum(axis=1, dtype=np.int64)
    share: FloatArray = right / _row_totals(counts)
    return share


# --- bootstrap strata ---------------------------------------------------------------------


def auc_strata(y_true: Array) -> npt.NDArray[np.int64]:
    """Bootstrap strata of a binary AUC: negatives 0, positives 1."""
    return binary_labels(y_true).astype(np.int64)


def macro_auroc_strata(y_true: Array) -> npt.NDArray[np.int64]:
    """Bootstrap strata of macro AUROC: the class (multi-class) or the label combination
    (multi-label), so every class keeps its positives and negatives in every resample."""
    y = np.asarray(y_true)
    if y.ndim == 2:
        rows = np.stack([binary_labels(y[:, k], f"label column {k}") for k in range(y.shape[1])], 1)
        _, inverse = np.unique(rows.astype(np.int64), axis=0, return_inverse=True)
        return np.asarray(inverse, dtype=np.int64).reshape(-1)
    return _grades(y, "class indices")


# --- registry -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Metric:
    kind: str
    point: Callable[[Array, Array], float]
    resampled: Callable[[CaseCounts, Array, Array], FloatArray]
    higher_is_better: bool = True
    # Metrics over ranked scores: DeLong tests and ROC curves apply.
    is_auc: bool = False
    # AUC-type metrics are bootstrapped stratified (class counts fixed per resample, as
    # pROC does): the strata of the scored cases' labels. None: plain resampling.
    strata: Callable[[Array], npt.NDArray[np.int64]] | None = None


METRICS: Mapping[str, Metric] = MappingProxyType(
    {
        "auc": Metric("auc", roc_auc, resampled_auc, is_auc=True, strata=auc_strata),
        "macro_auroc": Metric(
            "macro_auroc", macro_auroc, resampled_macro_auroc, strata=macro_auroc_strata
        ),
        "cohen_kappa": Metric("cohen_kappa", cohen_kappa, resampled_cohen_kappa),
        "quadratic_kappa": Metric("quadratic_kappa", quadratic_kappa, resampled_quadratic_kappa),
        "mae": Metric("mae", mae, resampled_mae, higher_is_better=False),
        "pearson": Metric("pearson", pearson, resampled_pearson),
        "accuracy": Metric("accuracy", accuracy, resampled_accuracy),
        # Segmentation (evaluation/segmentation.py): y_pred holds per-case values.
        "dice": Metric("dice", mean_score, resampled_mean_score),
        "hd95": Metric("hd95", mean_score, resampled_mean_score, higher_is_better=False),
        "assd": Metric("assd", mean_score, resampled_mean_score, higher_is_better=False),
    }
)


def get_metric(kind: str) -> Metric:
    try:
        return METRICS[kind]
    except KeyError:
        raise KeyError(f"unknown metric kind {kind!r}; known: {sorted(METRICS)}") from None
