"""DeLong against the textbook O(N^2) estimator, bootstrap against explicit resampling."""

from __future__ import annotations

import math
import shutil
import subprocess
import tracemalloc
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import norm
from sklearn.metrics import roc_auc_score, roc_curve

from evaluation import stats as S
from evaluation.metrics import get_metric
from evaluation.resampling import draw_counts, draw_stratified_counts

RNG = np.random.default_rng(2021)


def slow_delong(y: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DeLong, DeLong & Clarke-Pearson (1988) as printed: the Mann-Whitney kernel psi over
    all positive-negative pairs, placement values V10 / V01, their covariances."""
    pos, neg = scores[:, y == 1], scores[:, y == 0]
    m, n = pos.shape[1], neg.shape[1]
    psi = (pos[:, :, None] > neg[:, None, :]) + 0.5 * (pos[:, :, None] == neg[:, None, :])
    v10 = psi.mean(axis=2)  # per positive
    v01 = psi.mean(axis=1)  # per negative
    aucs = v10.mean(axis=1)
    cov = np.cov(v10) / m + np.cov(v01) / n
    return aucs, np.atleast_2d(cov)


def _pair(n: int = 200, ties: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    y = RNG.integers(0, 2, n)
    a = RNG.random(n) + 0.5 * y
    b = a + RNG.normal(0, 0.3, n)
    if ties:
        a, b = np.round(a, 1), np.round(b, 1)
    return y, a, b


@pytest.mark.parametrize("ties", [False, True])
def test_delong_matches_textbook_and_sklearn(ties: bool) -> None:
    y, a, b = _pair(ties=ties)
    res = S.delong_test(y, a, b)
    aucs, cov = slow_delong(y, np.stack([a, b]))
    assert aucs[0] == pytest.approx(res.auc_a, abs=1e-12)
    assert res.auc_a == pytest.approx(roc_auc_score(y, a), abs=1e-12)
    assert res.auc_b == pytest.approx(roc_auc_score(y, b), abs=1e-12)
    assert [res.var_a, res.var_b, res.cov] == pytest.approx(
        [cov[0, 0], cov[1, 1], cov[0, 1]], rel=1e-10
    )
    z = (aucs[0] - aucs[1]) / math.sqrt(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    assert res.z == pytest.approx(z, rel=1e-9)
    assert res.p == pytest.approx(2 * norm.sf(abs(z)), rel=1e-9)


def test_delong_matrix_equals_pairwise_tests_and_textbook_covariance() -> None:
    y = RNG.integers(0, 2, 300)
    base = RNG.random(300) + 0.6 * y
    scores = np.stack([base + RNG.normal(0, s, 300) for s in (0.1, 0.3, 0.3, 0.6, 1.0)])
    scores[2] = scores[1]  # an identical pair inside the matrix
    pairs = S.delong_all_pairs(y, scores)
    _, cov = slow_delong(y, scores)
    np.testing.assert_allclose(pairs.cov, cov, rtol=1e-10, atol=1e-15)
    for a in range(5):
        for b in range(5):
            if a == b:
                assert pairs.p[a, b] == 1.0
                continue
            one = S.delong_test(y, scores[a], scores[b])
            assert pairs.p[a, b] == pytest.approx(one.p, rel=1e-7, abs=1e-12)
            assert pairs.z[a, b] == pytest.approx(one.z, rel=1e-7, abs=1e-12)
    assert pairs.p[1, 2] == 1.0 and pairs.z[1, 2] == 0.0
    np.testing.assert_array_equal(S.delong_matrix(y, scores), pairs.p)


def test_near_identical_submissions_are_not_lost_to_cancellation() -> None:
    y = RNG.integers(0, 2, 2000)
    a = RNG.random(2000) + 0.3 * y
    b = a.copy()
    b[np.flatnonzero(y == 1)[0]] += 0.01  # one case moves a little
    one = S.delong_test(y, a, b)
    assert one.auc_a != one.auc_b and 0.0 < one.p < 1.0
    p = S.delong_matrix(y, np.stack([a, b]))
    assert p[0, 1] == pytest.approx(one.p, rel=1e-6)


def test_perfect_and_reversed_submissions() -> None:
    y = np.array([0, 0, 0, 1, 1, 1])
    perfect = np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        same = S.delong_test(y, perfect, perfect)
        assert (same.auc_a, same.z, same.p) == (1.0, 0.0, 1.0)
        rev = S.delong_test(y, perfect, 1 - perfect)
        assert rev.auc_b == 0.0 and rev.p == 0.0 and rev.z == math.inf
        p = S.delong_matrix(y, np.stack([perfect, perfect, 1 - perfect]))
    assert p.tolist() == [[1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 1.0]]


def test_delong_needs_two_cases_of_each_class() -> None:
    with pytest.raises(ValueError, match="two positive and two negative"):
        S.delong_test([0, 1, 1], [0.1, 0.2, 0.3], [0.3, 0.2, 0.1])


labels = st.lists(st.integers(0, 1), min_size=4, max_size=40).filter(
    lambda v: 2 <= sum(v) <= len(v) - 2
)


@st.composite
def labelled_pair(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    y = np.array(draw(labels))
    # Few distinct values: ties within and across classes are the common case.
    values = st.sampled_from([0.0, 0.25, 0.5, 0.75, 1.0]) | st.floats(0, 1)
    a = np.array(draw(st.lists(values, min_size=y.size, max_size=y.size)))
    b = np.array(draw(st.lists(values, min_size=y.size, max_size=y.size)))
    return y, a, b


@settings(max_examples=150, deadline=None)
@given(labelled_pair())
def test_delong_properties(data: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    y, a, b = data
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no division-by-zero or invalid-value warnings
        ab, ba, aa = S.delong_test(y, a, b), S.delong_test(y, b, a), S.delong_test(y, a, a)
        matrix = S.delong_matrix(y, np.stack([a, b]))
    assert ab.auc_a == pytest.approx(roc_auc_score(y, a), abs=1e-12)
    assert ab.p == ba.p and ab.z == -ba.z
    assert 0.0 <= ab.p <= 1.0
    assert (aa.z, aa.p) == (0.0, 1.0)
    assert matrix[0, 1] == matrix[1, 0] == pytest.approx(ab.p, rel=1e-6, abs=1e-9)
    aucs, cov = slow_delong(y, np.stack([a, b]))
    assert aucs[0] == pytest.approx(ab.auc_a, abs=1e-12)
    assert [ab.var_a, ab.var_b, ab.cov] == pytest.approx(
        [cov[0, 0], cov[1, 1], cov[0, 1]], rel=1e-9, abs=1e-15
    )


def test_constant_scores_have_auc_one_half() -> None:
    y = np.array([0, 1, 0, 1, 1, 0])
    res = S.delong_test(y, np.full(6, 0.3), np.full(6, 0.7))
    assert res.auc_a == res.auc_b == 0.5 and res.p == 1.0


def test_auc_ci_delong_is_a_clipped_normal_interval() -> None:
    y, a, _ = _pair()
    auc, lo, hi, var = S.auc_ci_delong(y, a)
    _, cov = slow_delong(y, a[None, :])
    assert var == pytest.approx(cov[0, 0], rel=1e-10)
    half = norm.ppf(0.975) * math.sqrt(var)
    assert (lo, hi) == pytest.approx((auc - half, min(1.0, auc + half)))
    y2 = np.array([0, 0, 1, 1])
    assert S.auc_ci_delong(y2, [0.1, 0.2, 0.8, 0.9]) == (1.0, 1.0, 1.0, 0.0)


# --- bootstrap ------------------------------------------------------------------------------


def test_counts_are_those_of_one_index_matrix_from_the_seed() -> None:
    n, r, seed = 97, 150, 5
    idx = np.random.default_rng(seed).integers(0, n, size=(r, n))
    expected = np.stack([np.bincount(row, minlength=n) for row in idx])
    np.testing.assert_array_equal(draw_counts(n, r, seed).matrix, expected)


def _extra_peak_bytes(fn: Callable[[], object], kept: int) -> int:
    """Peak bytes `fn` allocates beyond the `kept` bytes its result holds (tracemalloc sees
    numpy's buffers)."""
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1] - kept
    finally:
        tracemalloc.stop()


def test_draws_work_on_blocks_that_stay_small_whatever_the_number_of_cases() -> None:
    # The draw once held a 64-row int64 index block and its bincount (~24 x 64 N bytes: 30 MB
    # here), out of the CPU caches at 100,000 cases: the draw then scaled far worse than N.
    n, r = 20_000, 200
    assert _extra_peak_bytes(lambda: draw_counts(n, r, 1), r * n) < 4 * 2**20
    strata = np.arange(n) % 3 - 1  # -1: outside the subset
    # The stratified draw holds only the strata's blocks (R x 2N/3 bytes here), the (R, N)
    # matrix being assembled when first asked for.
    drawn = _extra_peak_bytes(lambda: draw_stratified_counts(strata, r, 1), r * n * 2 // 3)
    assert drawn < 4 * 2**20
    counts = draw_stratified_counts(strata, r, 1)
    blocks = [counts.take(np.flatnonzero(strata == code)) for code in (0, 1)]
    matrix = counts.matrix
    assert (matrix[:, strata < 0] == 0).all()
    for code, block in enumerate(blocks):
        np.testing.assert_array_equal(matrix[:, strata == code], block)


def test_stratified_counts_are_those_of_the_documented_index_matrices() -> None:
    strata = RNG.integers(-1, 3, 301)
    r, seed = 150, 8  # more resamples than one block of rows
    idx = _stratified_indices(strata, r, seed)
    expected = np.stack([np.bincount(row, minlength=strata.size) for row in idx])
    np.testing.assert_array_equal(draw_stratified_counts(strata, r, seed).matrix, expected)


def test_resampled_auc_works_on_blocks_that_stay_small_at_100k_cases() -> None:
    n, r = 100_000, 100
    y = RNG.random(n) < 0.3
    s = np.round(RNG.random(n) + 0.5 * y, 3)  # ties: both prefix reads
    counts = draw_counts(n, r, 2)
    counts.take(np.flatnonzero(y)), counts.take(np.flatnonzero(~y))  # cached: R N bytes
    got = _extra_peak_bytes(lambda: get_metric("auc").resampled(counts, y, s), 0)
    assert got < 24 * 2**20  # 64 rows of 70,000 negatives took ~60 MB
    values = [roc_auc_score(y[i], s[i]) for i in _indices(n, r, 2)[:3]]
    np.testing.assert_allclose(get_metric("auc").resampled(counts, y, s)[:3], values, atol=1e-12)


def _indices(n: int, r: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n, size=(r, n))


def _stratified_indices(strata: np.ndarray, r: int, seed: int) -> np.ndarray:
    """The documented stratified draw, written out: per stratum in ascending order, an
    (R, n_s) index matrix into its cases from one generator."""
    rng = np.random.default_rng(seed)
    blocks = []
    for code in np.unique(strata[strata >= 0]):
        members = np.flatnonzero(strata == code)
        blocks.append(members[rng.integers(0, members.size, size=(r, members.size))])
    return np.concatenate(blocks, axis=1)


def test_bootstrap_auc_equals_a_plain_stratified_sklearn_loop() -> None:
    y, a, _ = _pair(150, ties=True)
    ci = S.bootstrap_ci("auc", y, a, n_resamples=300, seed=9, level=0.9)
    values = [roc_auc_score(y[idx], a[idx]) for idx in _stratified_indices(y.astype(int), 300, 9)]
    lo, hi = np.quantile(values, [0.05, 0.95])
    assert (ci.lower, ci.upper) == pytest.approx((lo, hi), abs=1e-12)
    assert ci.value == pytest.approx(roc_auc_score(y, a))
    assert (ci.n, ci.n_resamples_used, ci.n_resamples_dropped, ci.seed) == (150, 300, 0, 9)
    assert ci.stratified and ci.reason is None


def test_bootstrap_is_reproducible_and_contains_the_estimate() -> None:
    y, a, _ = _pair(500)
    one = S.bootstrap_ci("auc", y, a, n_resamples=1000, seed=20211)
    two = S.bootstrap_ci("auc", y, a, n_resamples=1000, seed=20211)
    other = S.bootstrap_ci("auc", y, a, n_resamples=1000, seed=20212)
    assert one == two
    assert (other.lower, other.upper) != (one.lower, one.upper)
    assert one.lower < one.value < one.upper
    for kind, t, p in (
        ("mae", a, a + RNG.normal(0, 0.2, 500)),
        ("pearson", a, a + RNG.normal(0, 0.2, 500)),
        ("accuracy", y, (a > 0.75).astype(int)),
        (
            "quadratic_kappa",
            np.round(a * 4),
            np.round(np.clip(a + RNG.normal(0, 0.2, 500), 0, 1) * 4),
        ),
    ):
        ci = S.bootstrap_ci(kind, t, p, n_resamples=500, seed=1)
        assert ci.lower <= ci.value <= ci.upper, kind


def test_auc_bootstrap_keeps_class_counts_fixed_per_resample() -> None:
    # Two positives among twenty: a plain bootstrap misses them in ~1 resample in 8 and,
    # dropping those, reports an interval conditional on the rest (pROC stratifies).
    y = np.array([1, 1] + [0] * 18)
    s = RNG.random(20)
    counts = S.metric_counts(get_metric("auc"), y, 20, 400, 4)
    m = counts.matrix.astype(np.int64)
    assert (m[:, y == 1].sum(axis=1) == 2).all() and (m[:, y == 0].sum(axis=1) == 18).all()
    ci = S.bootstrap_ci("auc", y, s, n_resamples=400, seed=4)
    assert (ci.n_resamples_used, ci.n_resamples_dropped, ci.reason) == (400, 0, None)
    values = [roc_auc_score(y[idx], s[idx]) for idx in _stratified_indices(y, 400, 4)]
    assert (ci.lower, ci.upper) == pytest.approx(tuple(np.quantile(values, [0.025, 0.975])))


def test_macro_auroc_bootstrap_keeps_every_class_count_fixed() -> None:
    y = np.array([0] * 10 + [1] * 3 + [2] * 2)
    p = RNG.dirichlet(np.ones(3), size=15)
    counts = S.metric_counts(get_metric("macro_auroc"), y, 15, 300, 2).matrix.astype(np.int64)
    for k, size in enumerate((10, 3, 2)):
        assert (counts[:, y == k].sum(axis=1) == size).all()
    ci = S.bootstrap_ci("macro_auroc", y, p, n_resamples=300, seed=2)
    assert ci.reason is None and ci.lower <= ci.value <= ci.upper


def test_subset_auc_bootstrap_stratifies_within_the_subset() -> None:
    n = 60
    covid = RNG.integers(0, 2, n).astype(bool)
    severe = covid & (RNG.random(n) < 0.3)
    s = RNG.random(n) + 0.3 * severe
    ci = S.bootstrap_ci("auc", severe, s, n_resamples=300, seed=3, subset_mask=covid)
    strata = np.where(covid, severe.astype(int), -1)
    values = [roc_auc_score(severe[i], s[i]) for i in _stratified_indices(strata, 300, 3)]
    assert ci.n == covid.sum() and ci.n_resamples_dropped == 0
    assert ci.value == pytest.approx(roc_auc_score(severe[covid], s[covid]))
    assert (ci.lower, ci.upper) == pytest.approx(tuple(np.quantile(values, [0.025, 0.975])))


def test_a_metric_undefined_on_a_resample_gets_no_interval_and_a_reason() -> None:
    # Kappa of four cases, three of one grade: some resamples are all one grade.
    t = np.array([1, 1, 1, 2])
    ci = S.bootstrap_ci("cohen_kappa", t, t, n_resamples=200, seed=1)
    assert math.isnan(ci.lower) and math.isnan(ci.upper) and ci.n_resamples_used == 0
    assert ci.n_resamples_dropped > 0
    assert ci.reason is not None and "undefined on" in ci.reason and "resamples" in ci.reason


def test_bootstrap_subset_resamples_all_cases_for_plain_metrics() -> None:
    n = 120
    covid = RNG.integers(0, 2, n).astype(bool)
    err = RNG.random(n)
    ci = S.bootstrap_ci("mae", err, np.zeros(n), n_resamples=200, seed=3, subset_mask=covid)
    values = []
    for idx in np.random.default_rng(3).integers(0, n, size=(200, n)):
        kept = idx[covid[idx]]
        values.append(np.mean(err[kept]))
    assert ci.n == covid.sum() and not ci.stratified
    assert (ci.lower, ci.upper) == pytest.approx(tuple(np.quantile(values, [0.025, 0.975])))


def _reference_tpr(y: np.ndarray, s: np.ndarray, grid: np.ndarray) -> np.ndarray:
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    out = []
    for g in grid:
        j = np.flatnonzero(fpr <= g + 1e-15)[-1]  # top of a vertical segment
        if j + 1 < fpr.size and fpr[j + 1] > fpr[j]:
            out.append(tpr[j] + (g - fpr[j]) / (fpr[j + 1] - fpr[j]) * (tpr[j + 1] - tpr[j]))
        else:
            out.append(tpr[j])
    return np.array(out)


def test_roc_band_curve_matches_sklearn_roc_and_brackets_it() -> None:
    y, a, _ = _pair(300, ties=True)
    band = S.roc_band(y, a, n_resamples=300, seed=2, grid_points=51)
    np.testing.assert_allclose(band.tpr, _reference_tpr(y, a, band.fpr), atol=1e-12)
    assert band.fpr[0] == 0.0 and band.fpr[-1] == 1.0 and band.tpr[-1] == 1.0
    assert (band.tpr_lower <= band.tpr_upper).all()
    assert ((band.tpr_lower >= 0) & (band.tpr_upper <= 1)).all()
    inside = (band.tpr_lower <= band.tpr + 1e-12) & (band.tpr <= band.tpr_upper + 1e-12)
    assert inside.mean() > 0.9
    # The resampled curves are those of explicit resamples (stratified, as bootstrap_ci's).
    idx = _stratified_indices(y.astype(int), 300, 2)
    curves = np.stack([_reference_tpr(y[i], a[i], band.fpr) for i in idx])
    lo, hi = np.quantile(curves, [0.025, 0.975], axis=0)
    np.testing.assert_allclose(band.tpr_lower, lo, atol=1e-12)
    np.testing.assert_allclose(band.tpr_upper, hi, atol=1e-12)


def _proc_available() -> bool:
    if not shutil.which("Rscript"):
        return False
    done = subprocess.run(["Rscript", "-e", "library(pROC)"], capture_output=True, check=False)
    return done.returncode == 0


@pytest.mark.skipif(not _proc_available(), reason="R package pROC not installed")
def test_delong_agrees_with_proc(tmp_path: Path) -> None:
    y, a, b = _pair(300, ties=True)
    csv = tmp_path / "d.csv"
    np.savetxt(csv, np.column_stack([y, a, b]), delimiter=",", header="y,a,b", comments="")
    script = (
        "suppressMessages(library(pROC)); d <- read.csv(commandArgs(TRUE)[1]);"
        "ra <- roc(d$y, d$a, levels=c(0,1), direction='<', quiet=TRUE);"
        "rb <- roc(d$y, d$b, levels=c(0,1), direction='<', quiet=TRUE);"
        "t <- roc.test(ra, rb, method='delong');"
        "cat(sprintf('%.17g', c(t$p.value, t$statistic, as.numeric(ci.auc(ra, method='delong')))))"
    )
    out = subprocess.run(
        ["Rscript", "-e", script, str(csv)], capture_output=True, text=True, check=True
    ).stdout.split()
    p, z, lo, auc, hi = map(float, out)
    res = S.delong_test(y, a, b)
    assert res.p == pytest.approx(p, rel=1e-9)
    assert res.z == pytest.approx(z, rel=1e-9)
    assert S.auc_ci_delong(y, a)[:3] == pytest.approx((auc, lo, hi), rel=1e-12)


@pytest.mark.skipif(not _proc_available(), reason="R package pROC not installed")
def test_stratified_bootstrap_interval_agrees_with_proc(tmp_path: Path) -> None:
    # Few positives, where stratifying matters. The generators differ, so the percentiles
    # agree up to Monte Carlo error (about 0.01 here with 4000 resamples each).
    rng = np.random.default_rng(12)
    y = np.array([1] * 5 + [0] * 35)
    s = np.round(rng.random(40) + 0.4 * y, 3)
    csv = tmp_path / "d.csv"
    np.savetxt(csv, np.column_stack([y, s]), delimiter=",", header="y,s", comments="")
    script = (
        "suppressMessages(library(pROC)); set.seed(1); d <- read.csv(commandArgs(TRUE)[1]);"
        "r <- roc(d$y, d$s, levels=c(0,1), direction='<', quiet=TRUE);"
        "ci <- ci.auc(r, method='bootstrap', boot.n=4000, boot.stratified=TRUE, progress='none');"
        "cat(sprintf('%.17g', as.numeric(ci)))"
    )
    out = subprocess.run(
        ["Rscript", "-e", script, str(csv)], capture_output=True, text=True, check=True
    ).stdout.split()
    lo, _, hi = map(float, out)  # (lower, bootstrap median, upper)
    ci = S.bootstrap_ci("auc", y, s, n_resamples=4000, seed=7)
    assert (ci.lower, ci.upper) == pytest.approx((lo, hi), abs=0.025)
