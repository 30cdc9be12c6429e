"""Reading an organizer's metrics.json by JSON path, with bootstrap intervals of the
per-case mean (evaluation/external.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from evaluation.external import Column, ReportError, lookup, per_case_values, read_report

EVALUTILS = {
    # pandas' DataFrame.to_dict() (column -> {row: value}) and describe().to_dict()
    "case": {"dice": {"0": 0.9, "1": 0.7, "2": 0.8, "3": 0.6}, "name": {"0": "a", "1": "b"}},
    "aggregates": {"dice": {"mean": 0.75, "std": 0.13}, "hd95": {"mean": 4.0}},
    "results": [{"score": 3}],
}


def test_lookup_walks_keys_and_list_indices() -> None:
    assert lookup(EVALUTILS, "aggregates.dice.mean") == 0.75
    assert lookup(EVALUTILS, "results.0.score") == 3


@pytest.mark.parametrize("path", ["aggregates.dice.median", "results.1.score", "nothing"])
def test_a_missing_path_names_the_first_missing_step(path: str) -> None:
    with pytest.raises(ReportError, match=r"metrics\.json has no"):
        lookup(EVALUTILS, path)


@pytest.mark.parametrize("value", [math.nan, math.inf, "0.5", None, True])
def test_non_finite_or_non_numeric_scores_are_refused(value: object) -> None:
    doc = {"aggregates": {"dice": {"mean": value}}}
    with pytest.raises(ReportError, match=r"aggregates\.dice\.mean"):
        read_report(
            doc, [Column("dice", "aggregates.dice.mean", "dice")],
            per_case=None, n_resamples=100, seed=1, level=0.95,
        )  # fmt: skip


@pytest.mark.parametrize(
    "node",
    [
        {"dice": {"0": 0.9, "1": 0.7}},  # column -> {row: value}
        {"dice": [0.9, 0.7]},  # column -> [values]
        {"c1": {"dice": 0.9}, "c2": {"dice": 0.7}},  # row -> {column: value}
        [{"dice": 0.9}, {"dice": 0.7}],  # records
    ],
)
def test_per_case_values_in_every_orientation(node: object) -> None:
    assert per_case_values(node, "dice") == [0.9, 0.7]


def test_a_non_finite_per_case_value_is_refused() -> None:
    with pytest.raises(ReportError, match="per-case 'dice'"):
        per_case_values({"dice": {"0": 0.9, "1": math.nan}}, "dice")


def test_interval_is_the_percentile_bootstrap_of_the_mean() -> None:
    columns = [
        Column("dice", "aggregates.dice.mean", "dice"),
        Column("hd95", "aggregates.hd95.mean", "hd95"),
    ]
    report = read_report(EVALUTILS, columns, per_case="case", n_resamples=1000, seed=7, level=0.95)
    agg = report["aggregates"]
    assert agg["primary"] == "dice" and agg["dice"]["value"] == 0.75 and agg["dice"]["n"] == 4
    # An independent computation: numpy's own resampling with the same generator stream.
    x = np.array([0.9, 0.7, 0.8, 0.6])
    idx = np.random.default_rng(7).integers(0, 4, size=(1000, 4))
    lo, hi = np.quantile(x[idx].mean(axis=1), [0.025, 0.975])
    assert agg["dice"]["ci_lower"] == pytest.approx(lo)
    assert agg["dice"]["ci_upper"] == pytest.approx(hi)
    # No per-case values for hd95: a value without an interval, and why.
    assert agg["hd95"]["value"] == 4.0 and agg["hd95"]["ci_lower"] is None
    assert "no per-case values" in agg["hd95"]["ci_reason"]
    assert report["external"] is EVALUTILS
