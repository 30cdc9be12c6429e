"""Leaderboard arithmetic the server calls: ranking with statistical ties, top-k ensembles.

Pure functions over plain data. The inputs are the `aggregates` values and `predictions`
sections of the evaluation container's metrics.json: a predictions section is
`{"cases": [...], "y_true": [...], "y_score": [...]}` (plus `"classes"` for multi-class
macro AUROC), holding exactly the cases the metric was computed on.

Ranking rule (competition ranking with DeLong ties):
  Entries are sorted best first on the primary metric (equal values keep their input order,
  so pass entries oldest first). Walking down the list, the first entry opens a group with
  rank 1. Each next entry joins the current group, taking its rank, when the two-sided
  DeLong p-value between it and the group's leader (the best entry of the group) is
  >= alpha; otherwise it opens a new group whose rank is its 1-based position (1, 1, 3).
  So every entry sharing a rank is not significantly different from the best entry holding
  that rank, and ties never chain: C can never share A's rank while differing from A
  significantly, however close it is to B in between. Without p-values (metrics other than
  AUC), only equal values tie. Entries without a value (null, NaN) come last, unranked.
  When DeLong cannot be computed on the metric's cases (fewer than two of a class), no
  entry is ranked and each carries the reason.

`board` puts ranking and ensemble together and never raises on the sections' contents:
whatever cannot be computed is reported as a reason instead (the texts are the platform's
own, never a case name or anything a submission chose).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from evaluation.metrics import MetricError, get_metric, round_grades
from evaluation.stats import BootstrapCI, bootstrap_ci, delong_matrix

FloatArray = npt.NDArray[np.float64]
Section = Mapping[str, Any]


@dataclass(frozen=True)
class Entry:
    key: str  # the submission's id
    value: float | None  # its primary metric value; None or NaN when it has none
    reason: str | None = None  # why it has no value, when it has none


@dataclass(frozen=True)
class RankedEntry:
    key: str
    value: float | None
    position: int  # 1-based place in the sorted order, unique
    rank: int | None  # shared rank (see the module docstring); None when unranked
    leader: str | None  # key of the best entry of its rank group (itself for a leader)
    p_value: float | None  # DeLong p against the leader; None for leaders or without tests
    reason: str | None = None  # why it is unranked, when it is


def _has_value(e: Entry) -> bool:
    return e.value is not None and math.isfinite(e.value)


def rank_entries(
    entries: Sequence[Entry],
    *,
    higher_is_better: bool = True,
    p_values: FloatArray | None = None,
    alpha: float = 0.05,
) -> list[RankedEntry]:
    """Rank entries, best first, by the rule in the module docstring.

    `p_values` is a k x k matrix aligned with `entries` (e.g. `delong_p_values`); entries
    without a value may have any p-values there, they are not consulted.
    """
    k = len(entries)
    if p_values is not None and np.shape(p_values) != (k, k):
        raise ValueError(f"p_values must be {k} x {k}, aligned with entries")
    sign = -1.0 if higher_is_better else 1.0
    scored = sorted(
        (i for i in range(k) if _has_value(entries[i])),
        key=lambda i: sign * float(entries[i].value),  # type: ignore[arg-type]
    )
    out: list[RankedEntry] = []
    leader = -1
    rank = 0
    for position, i in enumerate(scored, start=1):
        e = entries[i]
        if leader >= 0:
            lead = entries[leader]
            if p_values is not None:
                p = float(p_values[leader, i])
                joins = p >= alpha
            else:
                p = None
                joins = e.value == lead.value
            if joins:
                out.append(RankedEntry(e.key, e.value, position, rank, lead.key, p))
                continue
        leader, rank = i, position
        out.append(RankedEntry(e.key, e.value, position, rank, e.key, None))
    for i in range(k):
        if not _has_value(entries[i]):
            e = entries[i]
            why = e.reason or "the metric has no value for this submission"
            out.append(RankedEntry(e.key, None, len(out) + 1, None, None, None, why))
    return out


def unranked(
    entries: Sequence[Entry], reason: str, *, higher_is_better: bool = True
) -> list[RankedEntry]:
    """Every entry unranked with `reason`, still listed best value first."""
    placed = rank_entries(entries, higher_is_better=higher_is_better)
    by_key = {e.key: e for e in entries}
    return [
        RankedEntry(r.key, by_key[r.key].value if _has_value(by_key[r.key]) else None,
                    r.position, None, None, None, r.reason or reason)
        for r in placed
    ]  # fmt: skip


def align_sections(sections: Sequence[Section]) -> tuple[list[str], list[Any], list[list[Any]]]:
    """Put several submissions' predictions sections on one case order.

    Returns (cases, y_true, y_scores) with y_scores[i] aligned to `cases`. Refuses sections
    over different cases or disagreeing labels: comparing them would be meaningless.
    """
    if not sections:
        raise ValueError("no predictions to align")
    # Vectorized (no Python loop over cases): a board of 200 submissions on 100,000 cases.
    first = sections[0]
    cases = np.asarray(first["cases"]).astype(str)
    order = np.argsort(cases, kind="stable")
    sorted_cases = cases[order]
    if cases.size > 1 and (sorted_cases[1:] == sorted_cases[:-1]).any():
        raise ValueError("duplicate cases in a predictions section")
    y_true_list = list(first["y_true"])
    y_true = _objects(y_true_list)
    scores: list[list[Any]] = []
    for n, sec in enumerate(sections):
        perm = _case_permutation(cases, sorted_cases, order, sec["cases"] if n else None)
        if perm is None:
            raise ValueError(f"predictions section {n} covers different cases")
        labels = _objects(list(sec["y_true"]))
        if labels.shape != y_true.shape:
            raise ValueError(f"predictions section {n} disagrees on the label of {cases[perm[0]]}")
        differ = (labels != y_true[perm]).reshape(cases.size, -1).any(axis=1)
        if differ.any():
            j = int(perm[int(np.argmax(differ))])
            raise ValueError(f"predictions section {n} disagrees on the label of {cases[j]}")
        aligned = np.empty(cases.size, dtype=object)
        aligned[perm] = _objects(list(sec["y_score"]), flat=True)
        scores.append(aligned.tolist())
    return cases.tolist(), y_true_list, scores


def _case_permutation(
    cases: npt.NDArray[np.str_],
    sorted_cases: npt.NDArray[np.str_],
    order: npt.NDArray[np.intp],
    other: Sequence[Any] | None,
) -> npt.NDArray[np.intp] | None:
    """perm with other[j] == cases[perm[j]] for every j (None: `other` lists other cases).
    `other` None: the first section itself."""
    if other is None:
        return np.arange(cases.size)
    sec_cases = np.asarray(other).astype(str)
    if sec_cases.shape == cases.shape and (sec_cases == cases).all():
        # The usual board: every section lists the cases in the ground truth's order.
        return np.arange(cases.size)
    pos = np.searchsorted(sorted_cases, sec_cases)
    found = (sec_cases.size == cases.size) and bool(
        (pos < cases.size).all()
        and (sorted_cases[np.minimum(pos, cases.size - 1)] == sec_cases).all()
    )
    perm = order[pos] if found else None
    if perm is None or np.bincount(perm, minlength=cases.size).max(initial=0) > 1:
        return None
    return perm


def _objects(values: list[Any], *, flat: bool = False) -> npt.NDArray[np.object_]:
    """Values as an object array that keeps Python equality (1 == 1.0, "a" != 1); `flat`:
    one element per case even when a value is itself a list (per-class scores)."""
    out = np.empty(len(values), dtype=object)
    out[:] = (
        values
        if flat or not values or not isinstance(values[0], list)
        else list(map(tuple, values))
    )
    return out


def delong_p_values(sections: Sequence[Section]) -> FloatArray:
    """k x k DeLong p-values between submissions' predictions sections of one AUC metric."""
    _, y_true, scores = align_sections(sections)
    return delong_matrix(np.asarray(y_true), np.asarray(scores, dtype=np.float64))


def rank_with_delong(
    entries: Sequence[Entry],
    sections: Sequence[Section],
    *,
    higher_is_better: bool = True,
    alpha: float = 0.05,
) -> list[RankedEntry]:
    """`rank_entries` with DeLong p-values from the entries' predictions sections (aligned)."""
    if len(sections) != len(entries):
        raise ValueError("one predictions section per entry")
    scored = [i for i, e in enumerate(entries) if _has_value(e)]
    p = np.ones((len(entries), len(entries)))
    if len(scored) > 1:
        try:
            sub = delong_p_values([sections[i] for i in scored])
        except MetricError as e:
            reason = f"not ranked: {e} on this metric's cases"
            return unranked(entries, reason, higher_is_better=higher_is_better)
        p[np.ix_(scored, scored)] = sub
    return rank_entries(entries, higher_is_better=higher_is_better, p_values=p, alpha=alpha)


def section_arrays(kind: str, section: Section) -> tuple[Any, Any]:
    """The (y_true, y_pred) arrays a metric of `kind` takes, from a predictions section."""
    y_true = np.asarray(section["y_true"])
    if kind == "macro_auroc" and y_true.ndim == 1:
        classes = np.asarray(section["classes"]).astype(str)
        labels = y_true.astype(str)
        order = np.argsort(classes, kind="stable")
        pos = np.minimum(np.searchsorted(classes[order], labels), classes.size - 1)
        if classes.size == 0 or not (classes[order][pos] == labels).all():
            raise ValueError("a label is not one of the section's classes")
        y_true = order[pos]
    y_pred = np.asarray(section["y_score"])
    if kind == "accuracy":
        return y_true.astype(str), y_pred.astype(str)
    if kind in ("cohen_kappa", "quadratic_kappa"):
        # Sections keep the predictions as submitted; grades are what is scored.
        return y_true, round_grades(y_pred)
    return y_true, y_pred.astype(np.float64)


def score_section(kind: str, section: Section) -> float:
    """The metric of `kind` on a predictions section."""
    return get_metric(kind).point(*section_arrays(kind, section))


@dataclass(frozen=True)
class Ensemble:
    members: list[str]  # keys of the entries averaged, best first
    section: dict[str, Any]  # the ensemble's predictions section
    value: float | None  # the metric on it (when `kind` was given)


def ensemble_top_k(
    ranked: Sequence[RankedEntry],
    sections: Mapping[str, Section],
    k: int,
    *,
    kind: str | None = None,
) -> Ensemble:
    """Combine the k best-placed entries' predictions case by case.

    Scores, probabilities and grades are averaged (element-wise for per-class vectors;
    ordinal metrics round the mean to the nearest grade when scoring); labels (accuracy)
    take the majority vote, ties going to the best-placed member's label.
    """
    if k < 1:
        raise ValueError("k must be at least 1")
    members = [r.key for r in sorted(ranked, key=lambda r: r.position) if r.rank is not None][:k]
    if not members:
        raise ValueError("no ranked entry to ensemble")
    cases, y_true, scores = align_sections([sections[m] for m in members])
    if kind == "accuracy":
        # Majority vote per case, ties to the best-placed member: votes[i, j] is how many
        # members agree with member i on case j.
        as_str = np.asarray(scores, dtype=object).astype(str)
        votes = (as_str[:, None, :] == as_str[None, :, :]).sum(axis=1)
        pick = np.argmax(votes == votes.max(axis=0), axis=0)
        combined: list[Any] = np.asarray(scores, dtype=object)[pick, np.arange(len(cases))].tolist()
    else:
        combined = np.mean(np.asarray(scores, dtype=np.float64), axis=0).tolist()
    section: dict[str, Any] = {"cases": cases, "y_true": y_true, "y_score": combined}
    if "classes" in sections[members[0]]:
        section["classes"] = list(sections[members[0]]["classes"])
    value = score_section(kind, section) if kind is not None else None
    return Ensemble(members=members, section=section, value=value)


def section_interval(
    kind: str, section: Section, *, n_resamples: int, seed: int, level: float
) -> BootstrapCI:
    """`bootstrap_ci` of a predictions section, on the resamples its submission's own
    interval used: a subset section (with `n_cases` and `positions`) is spread back over all
    cases and bootstrapped with the subset mask, exactly as the evaluator did."""
    y_true, y_pred = section_arrays(kind, section)
    n_cases, positions = section.get("n_cases"), section.get("positions")
    if n_cases is None or positions is None:
        return bootstrap_ci(kind, y_true, y_pred, n_resamples, seed, level)
    idx = np.asarray(positions, dtype=np.intp)
    if idx.shape != (y_true.shape[0],) or int(n_cases) <= (idx.max() if idx.size else -1):
        raise ValueError("a predictions section's positions do not match its cases")
    full_true = np.zeros((int(n_cases), *y_true.shape[1:]), dtype=y_true.dtype)
    full_pred = np.zeros((int(n_cases), *y_pred.shape[1:]), dtype=y_pred.dtype)
    full_true[idx], full_pred[idx] = y_true, y_pred
    mask = np.zeros(int(n_cases), dtype=bool)
    mask[idx] = True
    return bootstrap_ci(kind, full_true, full_pred, n_resamples, seed, level, subset_mask=mask)


@dataclass(frozen=True)
class EnsembleRow:
    members: list[str]
    value: float | None
    lower: float | None
    upper: float | None
    reason: str | None  # why the value or the interval is missing, when one is


@dataclass(frozen=True)
class Board:
    ranked: list[RankedEntry]
    ensemble: EnsembleRow | None


def _finite_or_none(x: float | None) -> float | None:
    return float(x) if x is not None and math.isfinite(x) else None


def _ensemble_row(
    kind: str,
    ranked: Sequence[RankedEntry],
    sections: Mapping[str, Section],
    k: int,
    *,
    n_resamples: int,
    seed: int,
    level: float,
) -> EnsembleRow | None:
    usable = [r for r in ranked if r.rank is not None and r.key in sections]
    if len(usable) < 2:
        return None
    try:
        ens = ensemble_top_k(usable, sections, k, kind=kind)
    except MetricError as e:
        members = [r.key for r in sorted(usable, key=lambda r: r.position)][:k]
        return EnsembleRow(members, None, None, None, f"the ensemble's metric is undefined: {e}")
    except (ValueError, KeyError, TypeError):
        members = [r.key for r in sorted(usable, key=lambda r: r.position)][:k]
        reason = "the members' predictions do not cover the same cases and labels"
        return EnsembleRow(members, None, None, None, reason)
    section = dict(ens.section)
    first = sections[ens.members[0]]
    if "positions" in first and "n_cases" in first:
        # align_sections keeps the first member's case order, so its positions apply.
        section["n_cases"], section["positions"] = first["n_cases"], first["positions"]
    try:
        ci = section_interval(kind, section, n_resamples=n_resamples, seed=seed, level=level)
    except MetricError as e:
        return EnsembleRow(ens.members, _finite_or_none(ens.value), None, None, str(e))
    except (ValueError, KeyError, TypeError):
        reason = "the ensemble's interval cannot be computed from the stored predictions"
        return EnsembleRow(ens.members, _finite_or_none(ens.value), None, None, reason)
    return EnsembleRow(
        ens.members,
        _finite_or_none(ens.value),
        _finite_or_none(ci.lower),
        _finite_or_none(ci.upper),
        ci.reason,
    )


def board(
    kind: str,
    entries: Sequence[Entry],
    sections: Sequence[Section | None],
    *,
    higher_is_better: bool = True,
    alpha: float = 0.05,
    ensemble_k: int = 3,
    n_resamples: int = 1000,
    seed: int = 20211,
    level: float = 0.95,
) -> Board:
    """Rank `entries` (oldest submission first: equal values keep that order) and form the
    top-k ensemble row, with a reason wherever something cannot be computed."""
    if len(sections) != len(entries):
        raise ValueError("one predictions section (or None) per entry")
    present = [s for s in sections if s is not None]
    # `external`: a value an organizer's evaluation image computed, ranked on values alone.
    is_auc = kind != "external" and get_metric(kind).is_auc
    if is_auc and entries and len(present) == len(sections):
        try:
            ranked = rank_with_delong(
                entries, present, higher_is_better=higher_is_better, alpha=alpha
            )
        except (ValueError, KeyError, TypeError):
            ranked = unranked(
                entries,
                "not ranked: the submissions' predictions do not cover the same cases",
                higher_is_better=higher_is_better,
            )
    else:
        ranked = rank_entries(entries, higher_is_better=higher_is_better)
    by_key = {e.key: s for e, s in zip(entries, sections, strict=True) if s is not None}
    row = _ensemble_row(
        kind, ranked, by_key, ensemble_k, n_resamples=n_resamples, seed=seed, level=level
    )
    return Board(ranked=ranked, ensemble=row)
