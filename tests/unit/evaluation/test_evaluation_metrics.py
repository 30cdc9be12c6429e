"""Metrics against scikit-learn, and their resampled forms against explicit resampling."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    cohen_kappa_score,
    mean_absolute_error,
    roc_auc_score,
)

from evaluation import metrics as M
from evaluation.resampling import CaseCounts, draw_counts

RNG = np.random.default_rng(7)


def _binary_data(n: int = 300, ties: bool = True) -> tuple[np.ndarray, np.ndarray]:
    y = RNG.integers(0, 2, n)
    s = RNG.random(n) + 0.4 * y
    return y, (np.round(s, 1) if ties else s)


def _explicit_indices(n: int, r: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n, size=(r, n))


def _unit_counts(n: int) -> CaseCounts:
    return CaseCounts(np.ones((1, n), dtype=np.uint8))


@pytest.mark.parametrize("ties", [False, True])
def test_auc_matches_sklearn(ties: bool) -> None:
    y, s = _binary_data(ties=ties)
    assert M.roc_auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)


def test_auc_extremes_and_constant_scores() -> None:
    y = np.array([0, 0, 1, 1])
    assert M.roc_auc(y, [0.1, 0.2, 0.8, 0.9]) == 1.0
    assert M.roc_auc(y, [0.9, 0.8, 0.2, 0.1]) == 0.0
    assert M.roc_auc(y, [0.5, 0.5, 0.5, 0.5]) == 0.5


def test_auc_needs_both_classes_and_finite_scores() -> None:
    with pytest.raises(M.MetricError):
        M.roc_auc([1, 1, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="finite"):
        M.roc_auc([0, 1], [0.1, math.nan])
    with pytest.raises(ValueError, match="binary"):
        M.roc_auc([0, 2], [0.1, 0.2])


def test_subset_auc_is_the_auc_of_the_selected_cases() -> None:
    y, s = _binary_data()
    covid = RNG.integers(0, 2, y.size)
    sel = covid == 1
    expected = roc_auc_score(y[sel], s[sel])
    # Ground truth arrives as CSV strings; "1" must select the same cases as 1.
    as_text, as_float = M.subset_mask(covid.astype(str), 1), M.subset_mask(covid, "1.0")
    assert M.roc_auc(y[as_text], s[as_text]) == pytest.approx(expected)
    assert M.roc_auc(y[as_float], s[as_float]) == pytest.approx(expected)


def test_macro_auroc_multiclass_matches_sklearn() -> None:
    n, k = 400, 4
    y = RNG.integers(0, k, n)
    p = RNG.dirichlet(np.ones(k), n) + 0.3 * np.eye(k)[y]
    p /= p.sum(axis=1, keepdims=True)
    expected = roc_auc_score(y, p, multi_class="ovr", average="macro")
    assert M.macro_auroc(y, p) == pytest.approx(expected, abs=1e-12)


def test_macro_auroc_multilabel_matches_sklearn() -> None:
    n, k = 300, 3
    y = RNG.integers(0, 2, (n, k))
    p = np.clip(0.3 * y + RNG.random((n, k)), 0, 1)
    expected = roc_auc_score(y, p, average="macro")
    assert M.macro_auroc(y, p) == pytest.approx(expected, abs=1e-12)


def test_macro_auroc_names_the_class_without_positives() -> None:
    y = np.array([0, 1, 0, 1])
    with pytest.raises(M.MetricError, match="class 2"):
        M.macro_auroc(y, RNG.random((4, 3)))


@pytest.mark.parametrize("weights", [None, "quadratic"])
def test_kappa_matches_sklearn_over_the_grade_range(weights: str | None) -> None:
    t = RNG.integers(1, 6, 500)
    p = np.clip(t + RNG.integers(-2, 3, 500), 1, 5)
    fn = M.quadratic_kappa if weights else M.cohen_kappa
    expected = cohen_kappa_score(t, p, weights=weights, labels=range(1, 6))
    assert fn(t, p) == pytest.approx(expected, abs=1e-12)


def test_quadratic_kappa_uses_grade_distances_when_a_grade_is_unused() -> None:
    # No case has grade 3: weights must still count 2 -> 4 as two grades apart.
    t = np.array([1, 2, 4, 5, 2, 4])
    p = np.array([1, 4, 2, 5, 2, 4])
    expected = cohen_kappa_score(t, p, weights="quadratic", labels=range(1, 6))
    assert M.quadratic_kappa(t, p) == pytest.approx(expected)
    assert M.quadratic_kappa(t, p) != pytest.approx(cohen_kappa_score(t, p, weights="quadratic"))


def test_kappa_rejects_fractional_grades_and_is_nan_without_chance_disagreement() -> None:
    with pytest.raises(ValueError, match="integer grades"):
        M.cohen_kappa([1, 2], [1.5, 2])
    assert math.isnan(M.cohen_kappa([3, 3, 3], [3, 3, 3]))


def test_round_grades_rounds_halves_up() -> None:
    assert M.round_grades([0.49, 0.5, 1.5, 2.5, 4.6]).tolist() == [0, 1, 2, 3, 5]


def test_mae_pearson_accuracy_match_references() -> None:
    x = RNG.normal(size=200)
    z = x + RNG.normal(size=200)
    assert M.mae(x, z) == pytest.approx(mean_absolute_error(x, z))
    assert M.pearson(x, z) == pytest.approx(np.corrcoef(x, z)[0, 1])
    assert math.isnan(M.pearson(x, np.ones_like(x)))
    a = RNG.integers(0, 3, 200)
    b = RNG.integers(0, 3, 200)
    assert M.accuracy(a, b) == pytest.approx(accuracy_score(a, b))


def test_canonical_label_equates_csv_and_json_spellings() -> None:
    keys = {M.canonical_label(v) for v in (1, 1.0, "1", " 1.0 ", True, "true", np.int64(1))}
    assert keys == {"1"}
    assert M.canonical_label("severe") == "severe"
    assert M.canonical_label(0.25) == M.canonical_label("0.25")
    assert M.canonical_label(0) != M.canonical_label(0.5)


def test_registry_covers_the_schema_kinds() -> None:
    assert set(M.METRICS) == {
        "auc", "macro_auroc", "cohen_kappa", "quadratic_kappa", "mae", "pearson", "accuracy",
        "dice", "hd95", "assd",
    }  # fmt: skip
    assert M.get_metric("mae").higher_is_better is False
    assert M.get_metric("auc").is_auc
    with pytest.raises(KeyError, match="unknown metric kind"):
        M.get_metric("jaccard")


# --- resampled forms --------------------------------------------------------------------------


def _cases() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    n = 250
    y, s = _binary_data(n)
    grades = RNG.integers(1, 6, n)
    pred_grades = np.clip(grades + RNG.integers(-1, 2, n), 1, 5)
    x = RNG.normal(size=n)
    k = 3
    yc = RNG.integers(0, k, n)
    pc = RNG.dirichlet(np.ones(k), n) + 0.2 * np.eye(k)[yc]
    ym = RNG.integers(0, 2, (n, k))
    return {
        "auc": (y, s),
        "macro_auroc": (yc, pc / pc.sum(axis=1, keepdims=True)),
        "cohen_kappa": (grades, pred_grades),
        "quadratic_kappa": (grades, pred_grades),
        "mae": (x, x + RNG.normal(size=n)),
        "pearson": (x, x + RNG.normal(size=n)),
        "accuracy": (grades, pred_grades),
        "multilabel": (ym, np.clip(0.3 * ym + RNG.random((n, k)), 0, 1)),
    }


REFERENCE = {
    "auc": roc_auc_score,
    "macro_auroc": lambda t, p: roc_auc_score(t, p, multi_class="ovr", average="macro"),
    "cohen_kappa": lambda t, p: cohen_kappa_score(t, p, labels=range(1, 6)),
    "quadratic_kappa": lambda t, p: cohen_kappa_score(
        t, p, weights="quadratic", labels=range(1, 6)
    ),
    "mae": mean_absolute_error,
    "pearson": lambda t, p: np.corrcoef(t, p)[0, 1],
    "accuracy": accuracy_score,
    "multilabel": lambda t, p: roc_auc_score(t, p, average="macro"),
}


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_resampled_equals_reference_on_each_explicit_resample(name: str) -> None:
    y_true, y_pred = _cases()[name]
    kind = "macro_auroc" if name == "multilabel" else name
    metric = M.get_metric(kind)
    n, r, seed = y_true.shape[0], 60, 11
    got = metric.resampled(draw_counts(n, r, seed), y_true, y_pred)
    expected = []
    for idx in _explicit_indices(n, r, seed):
        expected.append(REFERENCE[name](y_true[idx], y_pred[idx]))
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)
    # With every case drawn once, the resampled form is the point metric.
    unit = metric.resampled(_unit_counts(n), y_true, y_pred)[0]
    assert unit == pytest.approx(metric.point(y_true, y_pred), abs=1e-12)


def test_resampled_auc_is_nan_where_a_class_is_absent() -> None:
    y = np.array([1, 0, 0, 0, 0, 0])
    s = np.linspace(0, 1, 6)
    counts = np.ones((3, 6), dtype=np.uint8)
    counts[1, 0] = 0  # resample 1 never draws the only positive
    counts[1, 1] = 2
    got = M.resampled_auc(CaseCounts(counts), y, s)
    assert np.isfinite(got[[0, 2]]).all()
    assert math.isnan(got[1])


def test_resampled_auc_handles_scores_tied_across_classes() -> None:
    y = np.array([0, 1, 0, 1, 1, 0, 1, 0])
    s = np.array([0.2, 0.2, 0.5, 0.5, 0.5, 0.9, 0.9, 0.1])
    counts = draw_counts(8, 200, 3)
    got = M.resampled_auc(counts, y, s)
    ok = np.isfinite(got)
    for r, idx in enumerate(_explicit_indices(8, 200, 3)):
        if ok[r]:
            assert got[r] == pytest.approx(roc_auc_score(y[idx], s[idx]), abs=1e-12)
        else:
            assert len(set(y[idx])) == 1


@pytest.mark.parametrize(
    "column",
    [
        ["1", "1.0", "true", " 0 ", "false", "x", "", "2.5", "nan", "1e3"],
        [1, 1.0, True, "1", 0, False, 2.5, float("nan"), float("nan"), None, "a", np.int64(3)],
        np.array([0, 1, 1, 2, 0]),
        np.array([0.0, 1.0, np.nan, 2.5, np.nan]),
        np.array([True, False, True]),
        np.array(["1", "1.0", "b", "True"]),
        [[1, 2], [1, 2], "x"],  # unhashable values
        [],
    ],
)
def test_canonical_labels_are_canonical_label_of_each_case(column: object) -> None:
    values = list(column)  # type: ignore[call-overload]
    assert M.canonical_labels(column).tolist() == [M.canonical_label(v) for v in values]  # type: ignore[arg-type]
    for value in ("1", 0, "x", float("nan")):
        expected = [M.canonical_label(v) == M.canonical_label(value) for v in values]
        assert M.subset_mask(column, value).tolist() == expected  # type: ignore[arg-type]


def test_stratified_counts_hand_out_each_strata_columns_as_drawn() -> None:
    from evaluation.resampling import draw_stratified_counts

    strata = np.array([1, 0, 0, 1, 1, 0, 0, 0, 1, 0])
    counts = draw_stratified_counts(strata, 50, seed=7)
    for code in (0, 1):
        members = np.flatnonzero(strata == code)
        np.testing.assert_array_equal(counts.take(members), counts.matrix[:, members])
        assert (counts.take(members).sum(axis=1) == members.size).all()
    assert counts.restrict(np.arange(strata.size)) is counts
    np.testing.assert_array_equal(counts.restrict([2, 5]).matrix, counts.matrix[:, [2, 5]])
