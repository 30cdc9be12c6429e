"""Challenge analysis against independent computations: slow loops over resamples and teams,
scipy.stats.kendalltau / wilcoxon, Holm by hand, and a toy challenge ranked by construction."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import scipy.stats as ss
from sklearn.metrics import roc_auc_score

from evaluation import analysis as an
from evaluation.metrics import get_metric
from evaluation.stats import bootstrap_ci, delong_test, metric_counts

SEED = 7


def _auc_task(k: int, n: int, seed: int, *, identical: bool = False) -> an.Task:
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.4).astype(np.int64)
    y[:2], y[2:4] = 1, 0
    scores = np.stack([np.round(y * (0.3 + 0.1 * t) + rng.random(n), 2) for t in range(k)])
    if identical:
        scores[1] = scores[0]
    return an.Task("t", "auc", [f"team{t}" for t in range(k)], y, scores)


def _slow_ranks(values: list[float], higher: bool = True) -> list[int]:
    """1 + the number of teams strictly better, one team at a time."""
    out = []
    for v in values:
        better = 0
        for w in values:
            if (w > v) if higher else (w < v):
                better += 1
        out.append(1 + better)
    return out


def _slow_rank_uncertainty(task: an.Task, r: int, seed: int) -> dict[str, Any]:
    y = np.asarray(task.y_true)
    counts = metric_counts(get_metric("auc"), y, y.size, r, seed).matrix
    ranks = []
    for row in counts:  # one resample at a time, cases expanded by their counts
        idx = np.repeat(np.arange(y.size), row)
        # Equal to 12 decimals is a tie (floating-point routes differ in the last bits).
        vals = [round(float(roc_auc_score(y[idx], s[idx])), 12) for s in np.asarray(task.y_pred)]
        ranks.append(_slow_ranks(vals))
    k = len(task.teams)
    dist = [[sum(1 for rr in ranks if rr[t] == q) / r for q in range(1, k + 1)] for t in range(k)]
    lower, upper, median = [], [], []
    for t in range(k):
        col = sorted(rr[t] for rr in ranks)
        lower.append(col[math.ceil(0.025 * r) - 1])
        upper.append(col[math.ceil(0.975 * r) - 1])
        median.append(float(np.median(col)))
    return {"ranks": ranks, "dist": dist, "lower": lower, "upper": upper, "median": median}


@pytest.mark.parametrize("identical", [False, True])
def test_rank_distribution_matches_a_slow_loop(identical: bool) -> None:
    task = _auc_task(5, 60, 1, identical=identical)
    got = an.rank_uncertainty(task, n_resamples=200, seed=SEED)
    want = _slow_rank_uncertainty(task, 200, SEED)
    assert got.boot_ranks.tolist() == want["ranks"]
    np.testing.assert_allclose(got.distribution, want["dist"])
    assert got.lower.tolist() == want["lower"]
    assert got.upper.tolist() == want["upper"]
    assert got.median.tolist() == want["median"]
    np.testing.assert_allclose(got.p_first, [d[0] for d in want["dist"]])
    np.testing.assert_allclose(got.distribution.sum(axis=1), 1.0)
    if identical:  # identical teams share every rank in every resample
        assert (got.boot_ranks[:, 0] == got.boot_ranks[:, 1]).all()


def test_rank_bootstrap_uses_the_resamples_of_the_cis() -> None:
    task = _auc_task(3, 80, 2)
    got = an.rank_uncertainty(task, n_resamples=300, seed=SEED)
    for t in range(3):
        ci = bootstrap_ci("auc", task.y_true, task.y_pred[t], n_resamples=300, seed=SEED)
        lo, hi = np.quantile(got.boot_values[:, t], [0.025, 0.975])
        assert (ci.lower, ci.upper) == (lo, hi)
        assert got.values[t] == ci.value


def test_one_dominant_team_is_always_first() -> None:
    rng = np.random.default_rng(3)
    y = np.r_[np.ones(30), np.zeros(30)].astype(int)
    scores = np.stack([y + 0.1 * rng.random(60)] + [rng.random(60) for _ in range(3)])
    got = an.rank_uncertainty(an.Task("t", "auc", list("abcd"), y, scores), 200, SEED)
    assert got.p_first.tolist()[0] == 1.0
    assert (got.lower[0], got.upper[0], got.median[0]) == (1, 1, 1.0)
    assert got.official[0] == 1


def test_kendall_tau_matches_scipy_with_ties() -> None:
    rng = np.random.default_rng(4)
    x = rng.integers(1, 5, size=12)
    ys = rng.integers(1, 6, size=(50, 12))
    got = an.kendall_tau(x, ys)
    want = [ss.kendalltau(x, y).statistic for y in ys]
    np.testing.assert_allclose(got, want, rtol=1e-12)
    assert np.isnan(an.kendall_tau(x, np.ones(12))[0])  # all ties: undefined, as scipy says
    assert np.isnan(ss.kendalltau(x, np.ones(12)).statistic)
    assert an.kendall_tau(x, x)[0] == pytest.approx(1.0)


@pytest.mark.parametrize("n", [12, 40, 51, 300])
def test_wilcoxon_matches_scipy(n: int) -> None:
    rng = np.random.default_rng(n)
    d = np.round(rng.normal(0.1, 1.0, size=(30, n)), 1)  # ties and zeros
    d[2] = rng.normal(0.3, 1.0, size=n)  # no ties, no zeros: exact for small n
    d[0] = 0.0  # identical teams
    d[1, : n // 2] = 0.0
    greater, less = an.wilcoxon_one_sided(d)
    for i, row in enumerate(d):
        if not row.any():
            assert greater[i] == less[i] == 1.0
            continue
        a = np.sort(np.abs(row))
        exact = n <= 50 and a[0] > 0 and bool((a[1:] != a[:-1]).all())
        method = "exact" if exact else "approx"
        for alt, got in (("greater", greater[i]), ("less", less[i])):
            want = ss.wilcoxon(row, alternative=alt, method=method).pvalue
            assert got == pytest.approx(want, rel=1e-10)
            if n > 50:  # scipy's own default agrees
                assert got == pytest.approx(ss.wilcoxon(row, alternative=alt).pvalue, rel=1e-10)


def test_holm_by_hand() -> None:
    rng = np.random.default_rng(5)
    p = rng.random(17) ** 3
    p[3] = p[4]  # a tie
    m = p.size
    order = sorted(range(m), key=lambda i: p[i])
    want = [0.0] * m
    running = 0.0
    for j, i in enumerate(order):
        running = max(running, min(1.0, (m - j) * p[i]))
        want[i] = running
    np.testing.assert_allclose(an.holm(p), want)
    with_nan = np.r_[p, np.nan]
    assert np.isnan(an.holm(with_nan)[-1])
    np.testing.assert_allclose(an.holm(with_nan)[:-1], want)


def test_delong_one_sided_pairs_and_holm() -> None:
    task = _auc_task(4, 120, 6, identical=True)
    tests = an.pairwise_tests(task)
    assert tests.test == "delong"
    k = 4
    flat = []
    for a in range(k):
        for b in range(k):
            if a == b:
                assert np.isnan(tests.p[a, b])
                continue
            r = delong_test(task.y_true, task.y_pred[a], task.y_pred[b])
            want = 0.5 * math.erfc(r.z / math.sqrt(2.0))  # P(Z > z): a better than b
            assert tests.p[a, b] == pytest.approx(want, abs=1e-12)
            flat.append(tests.p[a, b])
    adjusted = an.holm(np.array(flat))
    np.testing.assert_allclose(tests.p_adjusted[~np.eye(k, dtype=bool)], adjusted)
    assert tests.p[0, 1] == tests.p[1, 0] == 0.5  # identical teams
    assert not tests.significant[0, 1] and not tests.significant[1, 0]


def test_rank_then_aggregate_by_hand() -> None:
    rng = np.random.default_rng(8)
    y = rng.normal(size=30)
    pred = np.round(y + rng.normal(0, 1, size=(4, 30)), 0)
    task = an.Task("t", "mae", list("abcd"), y, pred, higher_is_better=False)
    got = an.rank_then_aggregate(task)
    assert got is not None
    mean, ranks = got
    errors = np.abs(pred - y)
    want = [0.0] * 4
    for c in range(30):
        case_ranks = _slow_ranks(list(errors[:, c]), higher=False)
        for t in range(4):
            want[t] += case_ranks[t] / 30
    np.testing.assert_allclose(mean, want)
    assert ranks.tolist() == _slow_ranks(list(mean), higher=False)


# --- the toy challenge: 5 teams, 2 tasks, rankings known by construction -----------------------

TEAMS = ["T1", "T2", "T3", "T4", "T5"]


def _toy_mae() -> an.Task:
    """60 cases, target 0. T2 is best on 54 cases but fails badly on 6: worst-but-two by mean
    error, best by mean per-case rank and by significant wins. T5 equals T4 except on 3
    cases (slightly worse): the mean orders them, no test separates them."""
    n = 60
    err = np.empty((5, n))
    err[0] = 0.10
    err[1] = 0.05
    err[1, :6] = 2.0
    err[2] = 0.20
    err[3] = 0.30
    err[4] = 0.30
    err[4, :3] = 0.31
    return an.Task("mae-task", "mae", TEAMS, np.zeros(n), err, higher_is_better=False)


def _toy_auc() -> an.Task:
    """200 cases: T1 perfect, T2 and T3 identical and good, T4 uninformative, T5 inverted."""
    rng = np.random.default_rng(11)
    y = np.r_[np.ones(100), np.zeros(100)].astype(int)
    good = y + rng.normal(0, 0.5, 200)
    scores = np.stack([y + 0.01 * rng.random(200), good, good, rng.random(200), -y + 0.0])
    return an.Task("auc-task", "auc", TEAMS, y, scores)


def test_toy_challenge_rankings_under_the_three_schemes() -> None:
    mae = an.analyse_task(_toy_mae(), n_resamples=200, seed=SEED)
    assert mae.schemes["aggregate-then-rank"].tolist() == [1, 3, 2, 4, 5]  # type: ignore[union-attr]
    assert mae.schemes["rank-then-aggregate"].tolist() == [2, 1, 3, 4, 5]  # type: ignore[union-attr]
    assert mae.schemes["test-then-rank"].tolist() == [2, 1, 3, 4, 4]  # type: ignore[union-attr]
    assert mae.tests is not None and mae.tests.test == "wilcoxon"
    assert mae.wins is not None and mae.wins.tolist() == [3, 4, 2, 0, 0]
    want_tau = ss.kendalltau([1, 3, 2, 4, 5], [2, 1, 3, 4, 5]).statistic
    assert mae.scheme_tau["rank-then-aggregate"] == pytest.approx(want_tau)
    assert mae.scheme_tau["aggregate-then-rank"] == pytest.approx(1.0)

    auc = an.analyse_task(_toy_auc(), n_resamples=200, seed=SEED)
    assert auc.schemes["aggregate-then-rank"].tolist() == [1, 2, 2, 4, 5]  # type: ignore[union-attr]
    assert auc.schemes["rank-then-aggregate"] is None
    assert "no per-case scores" in auc.scheme_reasons["rank-then-aggregate"]
    assert auc.schemes["test-then-rank"].tolist() == [1, 2, 2, 4, 5]  # type: ignore[union-attr]
    assert auc.tests is not None and auc.tests.test == "delong"
    assert auc.uncertainty.p_first.tolist() == [1.0, 0.0, 0.0, 0.0, 0.0]

    both = an.consensus([mae, auc])
    assert both.teams == TEAMS
    assert both.mean_rank.tolist() == [1.0, 2.5, 2.0, 4.0, 5.0]
    assert both.rank.tolist() == [1, 3, 2, 4, 5]
    np.testing.assert_allclose(both.distribution.sum(axis=1), 1.0)
    # Resample r of the consensus is the mean of resample r of each task, ranked.
    slow = [
        _slow_ranks([(mae.uncertainty.boot_ranks[r, t] + auc.uncertainty.boot_ranks[r, t]) / 2
                     for t in range(5)], higher=False)
        for r in range(200)
    ]  # fmt: skip
    assert both.boot_ranks.tolist() == slow


def test_consensus_places_absent_teams_after_the_last() -> None:
    a = an.analyse_task(_toy_auc(), n_resamples=50, seed=SEED)
    short = _toy_auc()
    b_task = an.Task("b", "auc", TEAMS[:3], short.y_true, np.asarray(short.y_pred)[:3])
    b = an.analyse_task(b_task, n_resamples=50, seed=SEED)
    both = an.consensus([a, b])
    # T4, T5 absent from b: rank 4 there (after b's 3 teams).
    assert both.task_ranks[1].tolist() == [1.0, 2.0, 2.0, 4.0, 4.0]


def test_shake_up_probabilities() -> None:
    full = _toy_auc()
    y, s = np.asarray(full.y_true), np.asarray(full.y_pred)
    pub_idx = np.r_[0:50, 100:150]
    priv_idx = np.r_[50:100, 150:200]
    pub = an.Task("pub", "auc", TEAMS, y[pub_idx], s[:, pub_idx])
    priv = an.Task("priv", "auc", TEAMS, y[priv_idx], s[:, priv_idx])
    got = an.shake_up(pub, priv, n_resamples=200, seed=SEED)
    pu = an.rank_uncertainty(pub, 200, SEED)
    pr = an.rank_uncertainty(priv, 200, SEED + 1)
    want = [sum(int(pu.boot_ranks[r, t] != pr.boot_ranks[r, t]) for r in range(200)) / 200
            for t in range(5)]  # fmt: skip
    np.testing.assert_allclose(got.p_change, want)
    assert got.p_change[0] == 0.0  # the perfect team is first on every resample of both
    assert got.public_rank.tolist()[0] == got.private_rank.tolist()[0] == 1


def test_same_inputs_same_numbers_bytes() -> None:
    one = an.analyse_task(_toy_mae(), n_resamples=100, seed=SEED)
    two = an.analyse_task(_toy_mae(), n_resamples=100, seed=SEED)
    assert one.uncertainty.boot_ranks.tobytes() == two.uncertainty.boot_ranks.tobytes()
    assert one.uncertainty.distribution.tobytes() == two.uncertainty.distribution.tobytes()
    assert one.tests is not None and two.tests is not None
    assert one.tests.p_adjusted.tobytes() == two.tests.p_adjusted.tobytes()


def test_bad_input_is_named() -> None:
    with pytest.raises(ValueError, match="duplicate team"):
        an.Task("t", "auc", ["a", "a"], np.zeros(3), np.zeros((2, 3)))
    with pytest.raises(ValueError, match="y_pred must be"):
        an.Task("t", "auc", ["a", "b"], np.zeros(3), np.zeros((2, 4)))


def test_per_case_bootstrap_equals_the_metric_resampled() -> None:
    task = _toy_mae()
    rng = np.random.default_rng(9)
    task = an.Task("m", "mae", TEAMS, rng.normal(size=60), rng.normal(size=(5, 60)), False)
    values, boot = an.bootstrap_values(task, 100, SEED)
    for t in range(5):
        ci = bootstrap_ci("mae", task.y_true, task.y_pred[t], n_resamples=100, seed=SEED)
        assert values[t] == pytest.approx(ci.value, rel=1e-12)
        lo, hi = np.quantile(boot[:, t], [0.025, 0.975])
        assert (lo, hi) == (pytest.approx(ci.lower, rel=1e-12), pytest.approx(ci.upper, rel=1e-12))


def test_public_split_is_keyed_deterministic_and_order_free() -> None:
    cases = [f"P{i:04d}" for i in range(4000)]
    a = an.public_split(cases, 0.3, "phase-1")
    assert abs(a.mean() - 0.3) < 0.03
    assert (an.public_split(cases[::-1], 0.3, "phase-1")[::-1] == a).all()
    assert (an.public_split(cases, 0.3, "phase-2") != a).any()
    with pytest.raises(ValueError, match="strictly between"):
        an.public_split(cases, 1.0, "x")
    task = _toy_auc()
    mask = an.public_split([f"c{i}" for i in range(200)], 0.4, "s")
    pub, priv = an.split_task(task, mask)
    assert (
        np.asarray(pub.y_true).size == mask.sum() and np.asarray(priv.y_true).size == (~mask).sum()
    )
    with pytest.raises(ValueError, match="one part empty"):
        an.split_task(task, np.ones(200, dtype=bool))


@pytest.mark.parametrize("case", ["random", "ties", "dominant"])
def test_per_case_rank_distribution_matches_a_slow_loop(case: str) -> None:
    rng = np.random.default_rng(12)
    n = 40
    y = rng.normal(size=n)
    pred = y + rng.normal(0, 1, size=(4, n))
    if case == "ties":
        pred = np.round(pred, 0)
        pred[2] = pred[1]
    if case == "dominant":
        pred[3] = y  # no error at all
    task = an.Task("m", "mae", list("abcd"), y, pred, higher_is_better=False)
    got = an.rank_uncertainty(task, n_resamples=150, seed=SEED)
    counts = metric_counts(get_metric("mae"), y, n, 150, SEED).matrix
    ranks = []
    for row in counts:
        idx = np.repeat(np.arange(n), row)
        maes = [round(float(np.mean(np.abs(p[idx] - y[idx]))), 12) for p in pred]
        ranks.append(_slow_ranks(maes, higher=False))
    assert got.boot_ranks.tolist() == ranks
    if case == "dominant":
        assert got.p_first[3] == 1.0 and (got.lower[3], got.upper[3]) == (1, 1)
    if case == "ties":
        assert (got.boot_ranks[:, 1] == got.boot_ranks[:, 2]).all()
