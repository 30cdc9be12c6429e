"""Ranking with DeLong ties and top-k ensembles."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from evaluation.leaderboard import (
    Entry,
    align_sections,
    delong_p_values,
    ensemble_top_k,
    rank_entries,
    rank_with_delong,
    score_section,
)
from evaluation.stats import delong_test

RNG = np.random.default_rng(3)


def _p(pairs: dict[tuple[int, int], float], k: int) -> np.ndarray:
    p = np.ones((k, k))
    for (a, b), v in pairs.items():
        p[a, b] = p[b, a] = v
    return p


def test_ties_join_the_group_leader_and_never_chain() -> None:
    entries = [Entry("a", 0.90), Entry("b", 0.89), Entry("c", 0.88), Entry("d", 0.80)]
    # b ~ a; c ~ b but c differs from a; d differs from everyone but c.
    p = _p({(0, 1): 0.4, (0, 2): 0.01, (1, 2): 0.5, (0, 3): 0.0, (1, 3): 0.0, (2, 3): 0.2}, 4)
    ranked = rank_entries(entries, p_values=p)
    assert [(r.key, r.rank, r.leader) for r in ranked] == [
        ("a", 1, "a"), ("b", 1, "a"), ("c", 3, "c"), ("d", 3, "c"),
    ]  # fmt: skip
    assert ranked[1].p_value == 0.4 and ranked[0].p_value is None


def test_order_follows_the_metric_direction_and_input_order_breaks_equal_values() -> None:
    entries = [Entry("late", 0.2), Entry("x", 0.1), Entry("early", 0.2)]
    ranked = rank_entries(entries, higher_is_better=False)
    assert [(r.key, r.position, r.rank) for r in ranked] == [
        ("x", 1, 1), ("late", 2, 2), ("early", 3, 2),
    ]  # fmt: skip


def test_entries_without_a_value_come_last_unranked() -> None:
    ranked = rank_entries([Entry("none", None), Entry("nan", math.nan), Entry("ok", 0.5)])
    assert [(r.key, r.rank) for r in ranked] == [("ok", 1), ("none", None), ("nan", None)]


def test_p_value_matrix_must_match_the_entries() -> None:
    with pytest.raises(ValueError, match="2 x 2"):
        rank_entries([Entry("a", 1.0), Entry("b", 0.5)], p_values=np.ones((3, 3)))


def _sections(n: int = 400) -> tuple[np.ndarray, dict[str, dict]]:
    y = RNG.integers(0, 2, n)
    base = RNG.random(n) + 0.6 * y
    noise = {"strong": 0.05, "twin": 0.05, "weak": 2.0}
    cases = [f"case{i}" for i in range(n)]
    sections = {}
    for key, sd in noise.items():
        s = 1 / (1 + np.exp(-(base + RNG.normal(0, sd, n))))
        order = RNG.permutation(n)  # each submission lists the cases in its own order
        sections[key] = {
            "cases": [cases[i] for i in order],
            "y_true": y[order].tolist(),
            "y_score": s[order].tolist(),
        }
    return y, sections


def test_rank_with_delong_aligns_cases_and_ties_indistinguishable_entries() -> None:
    _, sections = _sections()
    entries = [Entry(k, score_section("auc", sections[k])) for k in ("weak", "twin", "strong")]
    ranked = rank_with_delong(entries, [sections[e.key] for e in entries])
    by_key = {r.key: r for r in ranked}
    assert by_key["weak"].rank == 3
    assert by_key["twin"].rank == by_key["strong"].rank == 1
    p = delong_p_values([sections["strong"], sections["weak"]])
    cases, y, (s1, s2) = align_sections([sections["strong"], sections["weak"]])
    assert p[0, 1] == pytest.approx(delong_test(np.array(y), s1, s2).p)
    assert len(cases) == 400


def test_align_refuses_different_cases_or_labels() -> None:
    a = {"cases": ["1", "2"], "y_true": [0, 1], "y_score": [0.1, 0.9]}
    with pytest.raises(ValueError, match="different cases"):
        align_sections([a, {"cases": ["1", "3"], "y_true": [0, 1], "y_score": [0.1, 0.9]}])
    with pytest.raises(ValueError, match="label of 2"):
        align_sections([a, {"cases": ["2", "1"], "y_true": [0, 0], "y_score": [0.1, 0.9]}])


def _reference_align(sections: list[dict]) -> tuple[list, list, list[list]]:
    """align_sections written out case by case with dicts (the obvious, slow way)."""
    cases, y_true = list(sections[0]["cases"]), list(sections[0]["y_true"])
    if len(set(cases)) != len(cases):
        raise ValueError("duplicate cases")
    scores = []
    for sec in sections:
        by_case = dict(zip(sec["cases"], zip(sec["y_true"], sec["y_score"], strict=True),
                           strict=True))  # fmt: skip
        if len(sec["cases"]) != len(cases) or set(by_case) != set(cases):
            raise ValueError("different cases")
        if any(by_case[c][0] != y for c, y in zip(cases, y_true, strict=True)):
            raise ValueError("different labels")
        scores.append([by_case[c][1] for c in cases])
    return cases, y_true, scores


def _variants(base: dict) -> list[dict]:
    """The base section shuffled, and shuffled with a case missing, added, renamed,
    duplicated, or a label changed; and in the base's own order, with a label changed."""
    n = len(base["cases"])
    out = []
    for trial in range(9):
        order = np.arange(n) if trial >= 7 else RNG.permutation(n)
        sec = {k: [base[k][i] for i in order] for k in ("cases", "y_true", "y_score")}
        sec["y_score"] = [v + trial for v in sec["y_score"]]
        j = int(RNG.integers(0, n))
        if trial == 1:
            sec = {k: v[:j] + v[j + 1 :] for k, v in sec.items()}
        elif trial == 2:
            sec = {k: [*v, v[j]] for k, v in sec.items()}
            sec["cases"][-1] = "extra"
        elif trial == 3:
            sec["cases"][j] = "renamed"
        elif trial == 4:
            sec["cases"][j] = sec["cases"][(j + 1) % n]
        elif trial in (5, 8):
            sec["y_true"][j] = 1 - sec["y_true"][j]
        out.append(sec)
    return out


@pytest.mark.parametrize("n", [1, 2, 7, 300])
def test_align_agrees_with_a_case_by_case_reference_on_shuffled_and_missing_cases(
    n: int,
) -> None:
    base = {
        "cases": [f"c{i}" for i in RNG.permutation(n)],
        "y_true": RNG.integers(0, 2, n).tolist(),
        "y_score": RNG.random(n).tolist(),
    }
    variants = _variants(base)
    for i, other in enumerate(variants):
        for sections in ([base, other], [other, base], [base, variants[0], other]):
            try:
                expected = _reference_align(sections)
            except ValueError:
                with pytest.raises(ValueError):
                    align_sections(sections)
                continue
            assert align_sections(sections) == expected, i


def test_align_refuses_duplicate_cases_in_the_first_section() -> None:
    dup = {"cases": ["1", "1"], "y_true": [0, 0], "y_score": [0.1, 0.2]}
    with pytest.raises(ValueError, match="duplicate"):
        align_sections([dup, dup])


def test_ensemble_averages_the_top_k_case_by_case() -> None:
    _, sections = _sections()
    entries = [Entry(k, score_section("auc", sections[k])) for k in sections]
    ranked = rank_entries(entries)
    ens = ensemble_top_k(ranked, sections, 2, kind="auc")
    top2 = [r.key for r in ranked[:2]]
    assert ens.members == top2 and "weak" not in top2
    cases, y_true, scores = align_sections([sections[k] for k in top2])
    mean = np.mean(scores, axis=0)
    assert ens.section["cases"] == cases
    assert ens.section["y_score"] == pytest.approx(mean.tolist())
    assert ens.value == pytest.approx(roc_auc_score(y_true, mean))


def test_ensemble_of_labels_is_a_majority_vote_and_of_grades_a_rounded_mean() -> None:
    def sec(preds: list) -> dict:
        return {"cases": ["1", "2", "3"], "y_true": ["a", "b", "c"], "y_score": preds}

    sections = {"s1": sec(["a", "b", "x"]), "s2": sec(["a", "c", "c"]), "s3": sec(["b", "c", "c"])}
    ranked = rank_entries([Entry(k, v) for k, v in (("s1", 0.9), ("s2", 0.8), ("s3", 0.7))])
    ens = ensemble_top_k(ranked, sections, 3, kind="accuracy")
    assert ens.section["y_score"] == ["a", "c", "c"]
    assert ens.value == pytest.approx(2 / 3)
    # One vote each: the best-placed member's label wins.
    assert ensemble_top_k(ranked, sections, 2, kind="accuracy").section["y_score"] == [
        "a", "b", "x",
    ]  # fmt: skip

    grades = {
        "g1": {"cases": ["1", "2"], "y_true": [1, 3], "y_score": [1, 3]},
        "g2": {"cases": ["1", "2"], "y_true": [1, 3], "y_score": [2, 4]},
    }
    ranked = rank_entries([Entry("g1", 0.5), Entry("g2", 0.4)])
    ens = ensemble_top_k(ranked, grades, 2, kind="quadratic_kappa")
    assert ens.section["y_score"] == [1.5, 3.5]  # scored as grades 2 and 4
    assert ens.value == pytest.approx(score_section("quadratic_kappa", grades["g2"]))
