"""The board computation (ranking and ensemble row) over every metric kind and subsets: it
never raises, and the ensemble is bootstrapped on exactly its members' resamples."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from evaluation.leaderboard import Entry, board, score_section, section_interval
from evaluation.metrics import METRICS
from evaluation.stats import bootstrap_ci

CLASSES = ["a", "b", "c"]
KINDS = [*sorted(METRICS), "macro_auroc_multilabel"]


def _labels_and_scores(kind: str, rng: np.random.Generator, n: int) -> tuple[list[Any], Any]:
    """Ground truth for `n` cases and a function drawing one submission's predictions."""
    if kind == "auc":
        return rng.integers(0, 2, n).tolist(), lambda: rng.random(n).round(2).tolist()
    if kind == "macro_auroc":
        return [
            CLASSES[i] for i in rng.integers(0, 3, n)
        ], lambda: rng.dirichlet(np.ones(3), n).round(3).tolist()
    if kind == "macro_auroc_multilabel":
        return rng.integers(0, 2, (n, 3)).tolist(), lambda: rng.random((n, 3)).round(2).tolist()
    if kind in ("cohen_kappa", "quadratic_kappa"):
        return rng.integers(0, 4, n).tolist(), lambda: (rng.random(n) * 3).round(1).tolist()
    if kind in ("mae", "pearson"):
        return rng.random(n).round(2).tolist(), lambda: rng.random(n).round(2).tolist()
    return [CLASSES[i] for i in rng.integers(0, 3, n)], lambda: [
        CLASSES[i] for i in rng.integers(0, 3, n)
    ]


def _sections(
    kind: str, seed: int, n_all: int, subset: list[bool] | None, teams: int
) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    y_true, draw = _labels_and_scores(kind, rng, n_all)
    positions = [i for i in range(n_all) if subset is None or subset[i]]
    out = []
    for _ in range(teams):
        scores = draw()
        sec: dict[str, Any] = {
            "cases": [f"C{i}" for i in positions],
            "y_true": [y_true[i] for i in positions],
            "y_score": [scores[i] for i in positions],
        }
        if kind.startswith("macro_auroc"):
            sec["classes"] = CLASSES
        if subset is not None:
            sec["n_cases"], sec["positions"] = n_all, positions
        out.append(sec)
    return out


def _value(kind: str, section: dict[str, Any]) -> float | None:
    try:
        v = score_section(kind, section)
    except ValueError:
        return None
    return v if math.isfinite(v) else None


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None
)
@given(
    kind=st.sampled_from(KINDS),
    seed=st.integers(0, 2**32 - 1),
    n_all=st.integers(2, 24),
    subset=st.one_of(st.none(), st.lists(st.booleans(), min_size=24, max_size=24)),
    teams=st.integers(1, 5),
    missing=st.integers(-1, 4),
)
def test_board_never_raises_for_any_metric_kind_and_subset(
    kind: str,
    seed: int,
    n_all: int,
    subset: list[bool] | None,
    teams: int,
    missing: int,
) -> None:
    mask = None if subset is None else subset[:n_all]
    if mask is not None and not any(mask):
        mask[0] = True
    metric = "macro_auroc" if kind == "macro_auroc_multilabel" else kind
    sections: list[dict[str, Any] | None] = list(_sections(kind, seed, n_all, mask, teams))
    entries = [Entry(str(i), _value(metric, s)) for i, s in enumerate(sections) if s is not None]
    if 0 <= missing < teams:
        sections[missing] = None  # an old result without a predictions section
    out = board(
        metric,
        entries,
        sections,
        higher_is_better=METRICS[metric].higher_is_better,
        n_resamples=100,
        seed=seed % 1000,
    )
    assert sorted(r.key for r in out.ranked) == sorted(e.key for e in entries)
    for r in out.ranked:
        assert r.rank is not None or r.reason
    if out.ensemble is not None:
        ens = out.ensemble
        assert 2 <= len(ens.members) <= 3
        if ens.lower is None or ens.upper is None:
            assert ens.reason
        else:
            assert ens.lower <= ens.upper


@pytest.mark.parametrize("kind", ["auc", "quadratic_kappa", "macro_auroc", "mae"])
def test_subset_ensemble_is_resampled_like_its_members(kind: str) -> None:
    # Three identical members: their ensemble is the member itself, so its interval must be
    # the member's own, computed by the evaluator over all cases with the subset mask.
    n_all = 40
    rng = np.random.default_rng(7)
    subset = (rng.random(n_all) < 0.5).tolist()
    subset[:4] = [True] * 4
    (member,) = _sections(kind, 11, n_all, subset, 1)
    if kind == "auc":
        member["y_true"][:4] = [0, 1, 0, 1]
    if kind == "macro_auroc":
        member["y_true"][:3] = CLASSES
    sections = [dict(member) for _ in range(3)]
    entries = [Entry(str(i), score_section(kind, s)) for i, s in enumerate(sections)]
    out = board(kind, entries, sections, n_resamples=300, seed=5, level=0.9)
    own = section_interval(kind, member, n_resamples=300, seed=5, level=0.9)
    assert out.ensemble is not None and out.ensemble.reason is None
    assert (out.ensemble.lower, out.ensemble.upper) == pytest.approx((own.lower, own.upper))
    # ...and the member's own is the evaluator's: all cases resampled, the subset scored.
    from evaluation.leaderboard import section_arrays

    y_t, y_p = section_arrays(kind, member)
    full_t = np.zeros((n_all, *y_t.shape[1:]), dtype=y_t.dtype)
    full_p = np.zeros((n_all, *y_p.shape[1:]), dtype=y_p.dtype)
    full_t[member["positions"]], full_p[member["positions"]] = y_t, y_p
    direct = bootstrap_ci(kind, full_t, full_p, 300, 5, 0.9, subset_mask=np.array(subset))
    assert (own.lower, own.upper) == (direct.lower, direct.upper)
    # Resampling only the subset (what the ensemble row did) gives another interval for
    # plain metrics (stratified draws within the subset coincide, by construction).
    only_subset = bootstrap_ci(kind, y_t, y_p, 300, 5, 0.9)
    if METRICS[kind].strata is None:
        assert (only_subset.lower, only_subset.upper) != pytest.approx((own.lower, own.upper))
