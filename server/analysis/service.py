"""Challenge analysis for the organizers: per phase, the board's primary metric analysed by
`evaluation.analysis` (rank uncertainty, ranking schemes, significance map), and a consensus
ranking over the challenge's phases (tasks). Everything here is organizer-only: it holds
every team's numbers and the test set's class balance."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sqlalchemy.orm import Session

from evaluation import analysis as an
from evaluation.leaderboard import align_sections, section_arrays
from evaluation.metrics import MetricError
from server.challenges import repository as challenges_repo
from server.challenges.models import Challenge, Phase
from server.challenges.schemas import MetricSpec
from server.config import get_settings
from server.datasets.models import Dataset
from server.leaderboards import service as leaderboards
from server.leaderboards import split as case_split
from server.submissions import repository as submissions_repo
from server.submissions.states import SubmissionStatus

CONSENSUS_METHOD = (
    "mean rank across tasks (phases), ranked with competition ranks; a team absent from a "
    "task takes the rank after that task's last team; uncertainty: the same in each "
    "bootstrap resample (resample r of every task)"
)


@dataclass(frozen=True)
class TeamRow:
    team: str
    submission_id: int
    value: float | None
    ci: tuple[float | None, float | None]


@dataclass
class PhaseAnalysis:
    slug: str
    title: str
    metric: MetricSpec
    n_resamples: int
    seed: int
    level: float
    rows: list[TeamRow]  # teams analysed, in task order
    result: an.TaskAnalysis | None
    reason: str | None  # why there is no analysis, when there is none
    data: dict[str, Any] = field(default_factory=dict)
    roc: dict[str, dict[str, Any]] = field(default_factory=dict)  # team -> ROC with band
    failures: dict[str, int] = field(default_factory=dict)
    excluded: dict[str, str] = field(default_factory=dict)  # team -> why not analysed


@dataclass
class ChallengeAnalysis:
    slug: str
    title: str
    phases: list[PhaseAnalysis]
    consensus: an.Consensus | None
    consensus_reason: str | None


def _primary(phase: Phase) -> MetricSpec:
    cfg = phase.spec.board_metrics()
    return next(m for m in cfg.metrics if m.name == cfg.primary)


def _finite(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) and math.isfinite(v) else None


def _balance(y_true: list[Any]) -> dict[str, int] | None:
    """Label counts when the labels are categories (at most 20 distinct values)."""
    counts = Counter(str(v) for v in y_true)
    if len(counts) > 20:
        return None
    return dict(sorted(counts.items()))


def _data(session: Session, phase: Phase, section: dict[str, Any] | None) -> dict[str, Any]:
    splits: dict[str, Any] = {}
    for split, ds_id in (
        ("training", phase.training_dataset_id),
        ("canary", phase.canary_dataset_id),
        ("test", phase.test_dataset_id),
    ):
        ds = session.get(Dataset, ds_id) if ds_id is not None else None
        if ds is not None:
            splits[split] = {"dataset": ds.slug, "cases": ds.n_cases}
    scored: dict[str, Any] | None = None
    if section is not None:
        y_true = list(section.get("y_true", []))
        scored = {"cases": len(y_true), "labels": _balance(y_true)}
    return {"splits": splits, "scored": scored}


def _failures(session: Session, phase: Phase) -> dict[str, int]:
    codes = Counter(
        sub.failure_code or "unclassified"
        for sub in submissions_repo.list_for_phase(session, phase.id)
        if sub.status == SubmissionStatus.failed.value
    )
    return dict(sorted(codes.items()))


_NO_SECTIONS = {
    True: "no team has a current result on the primary metric",
    False: "scored by the organizers' evaluation image: no predictions to analyse",
}


def _phase_task(session: Session, phase: Phase) -> tuple[PhaseAnalysis, an.Task | None, list[str]]:
    """The phase's board as an analysis task (None, with the reason set, when there is
    none), and the scored cases' names in task order."""
    cfg = phase.spec.board_metrics()
    metric = _primary(phase)
    out = PhaseAnalysis(
        slug=phase.slug,
        title=phase.spec.title,
        metric=metric,
        n_resamples=cfg.bootstrap_resamples,
        seed=cfg.bootstrap_seed,
        level=cfg.ci_level,
        rows=[],
        result=None,
        reason=None,
        failures=_failures(session, phase),
    )
    sections: list[dict[str, Any]] = []
    for result, sub, team in leaderboards.current_rows(session, phase):
        section = leaderboards.predictions_section(result, metric.name)
        if result.primary_value is None or section is None:
            out.excluded[team.name] = "no value of the primary metric"
            continue
        agg = result.metrics.get("aggregates", {}).get(metric.name, {})
        ci = (_finite(agg.get("ci_lower")), _finite(agg.get("ci_upper")))
        out.rows.append(TeamRow(team.name, sub.id, result.primary_value, ci))
        sections.append(section)
        roc = result.metrics.get("roc", {}).get(metric.name)
        if isinstance(roc, dict):
            out.roc[team.name] = roc
    out.data = _data(session, phase, sections[0] if sections else None)
    if not sections:  # (an organizer's evaluation image gives no aligned predictions)
        out.reason = _NO_SECTIONS[phase.spec.evaluation is None]
        return out, None, []
    try:
        cases, y_true, scores = align_sections(sections)
    except (ValueError, KeyError, TypeError):
        out.reason = "the teams' predictions do not cover the same cases"
        return out, None, []
    first = sections[0]
    base = {"cases": cases, "y_true": y_true} | (
        {"classes": first["classes"]} if "classes" in first else {}
    )
    y_t, _ = section_arrays(metric.kind.value, base | {"y_score": scores[0]})
    preds = np.stack([section_arrays(metric.kind.value, base | {"y_score": s})[1] for s in scores])
    positions = first.get("positions")
    task = an.Task(
        name=phase.slug,
        kind=metric.kind.value,
        teams=[r.team for r in out.rows],
        y_true=y_t,
        y_pred=preds,
        higher_is_better=bool(metric.higher_is_better),
        # align_sections keeps the first section's case order, so its positions apply.
        n_cases=int(first["n_cases"]) if positions is not None else None,
        positions=[int(p) for p in positions] if positions is not None else None,
    )
    return out, task, cases


def analyse_phase(session: Session, phase: Phase) -> PhaseAnalysis:
    out, task, _ = _phase_task(session, phase)
    if task is None:
        return out
    try:
        out.result = an.analyse_task(
            task, n_resamples=out.n_resamples, seed=out.seed, level=out.level, alpha=an.ALPHA
        )
    except MetricError as e:
        out.reason = f"no analysis: {e} on this metric's cases"
    return out


def shake_up(
    session: Session, phase: Phase, public_fraction: float | None = None
) -> dict[str, Any]:
    """Organizers only, before any reveal: how likely is each team's rank to differ
    between the public and the private board? The phase's own split
    (PhaseSpec.private_fraction), or, given `public_fraction`, a what-if split of the same
    keyed hash at that fraction. Each part is bootstrapped on its own cases
    (`evaluation.analysis.shake_up`)."""
    base, task, cases = _phase_task(session, phase)
    private_fraction = phase.spec.private_fraction
    what_if = public_fraction is not None
    if public_fraction is not None:
        private_fraction = 1.0 - public_fraction
    out: dict[str, Any] = {
        "phase": phase.slug,
        "metric": base.metric.name,
        "public_fraction": None if private_fraction is None else 1.0 - private_fraction,
        "what_if": what_if,
        "split": "private: keyed hash (installation secret, phase, case name) below the "
        "private fraction; each part bootstrapped on its own cases",
        "bootstrap": {"resamples": base.n_resamples, "seed": base.seed},
        "reason": base.reason,
        "teams": [],
    }
    if private_fraction is None:
        out["reason"] = "the phase holds back no private part (private_fraction); pass "
        out["reason"] += "public_fraction for a what-if split"
        return out
    if task is None:
        return out
    secret = case_split.key(session.info.get("settings") or get_settings())
    public = ~case_split.private_mask(secret, phase.id, cases, private_fraction)
    out["cases"] = {"public": int(public.sum()), "private": int((~public).sum())}
    try:
        pub, priv = an.split_task(task, public)
        result = an.shake_up(pub, priv, n_resamples=base.n_resamples, seed=base.seed)
    except MetricError as e:
        out["reason"] = f"no shake-up: {e} on one part's cases"
        return out
    except ValueError as e:
        out["reason"] = f"no shake-up: {e}"
        return out
    out["kendall_tau_public_vs_private"] = _num(result.tau)
    out["teams"] = sorted(
        (
            {
                "team": team,
                "public_rank": int(result.public_rank[t]),
                "private_rank": int(result.private_rank[t]),
                "p_rank_changes": _num(result.p_change[t]),
            }
            for t, team in enumerate(result.teams)
        ),
        key=lambda e: (e["public_rank"], e["team"]),
    )
    return out


def analyse(session: Session, challenge: Challenge) -> ChallengeAnalysis:
    phases = [analyse_phase(session, p) for p in challenges_repo.list_phases(session, challenge.id)]
    done = [p.result for p in phases if p.result is not None]
    consensus: an.Consensus | None = None
    reason: str | None = None
    if len(done) < 2:
        reason = "a consensus needs at least two analysed tasks (phases)"
    else:
        try:
            consensus = an.consensus(done)
        except ValueError as e:
            reason = str(e)
    return ChallengeAnalysis(challenge.slug, challenge.title, phases, consensus, reason)


# --- JSON ------------------------------------------------------------------------------------


def _num(x: Any) -> float | None:
    f = float(x)
    return f if math.isfinite(f) else None


def _matrix(m: Any) -> list[list[float | None]]:
    return [[_num(v) for v in row] for row in np.asarray(m, dtype=np.float64)]


def phase_json(p: PhaseAnalysis) -> dict[str, Any]:
    # long: one flat mapping of the analysis to its JSON fields, read top to bottom.
    out: dict[str, Any] = {
        "phase": p.slug,
        "title": p.title,
        "metric": p.metric.name,
        "kind": p.metric.kind.value,
        "higher_is_better": p.metric.higher_is_better,
        "bootstrap": {"resamples": p.n_resamples, "seed": p.seed, "level": p.level},
        "reason": p.reason,
        "data": p.data,
        "failures": p.failures,
        "excluded": p.excluded,
    }
    a = p.result
    if a is None:
        return out
    u = a.uncertainty
    teams = []
    for t, row in enumerate(p.rows):
        teams.append(
            {
                "team": row.team,
                "submission_id": row.submission_id,
                "value": _num(u.values[t]),
                "ci": list(row.ci),
                "rank": int(u.official[t]),
                "median_rank": _num(u.median[t]),
                "rank_interval": [int(u.lower[t]), int(u.upper[t])],
                "p_first": _num(u.p_first[t]),
                "rank_distribution": [_num(v) for v in u.distribution[t]],
                "schemes": {
                    name: (int(r[t]) if r is not None else None) for name, r in a.schemes.items()
                },
                "mean_case_rank": _num(a.mean_case_rank[t])
                if a.mean_case_rank is not None
                else None,
                "significant_wins": int(a.wins[t]) if a.wins is not None else None,
            }
        )
    teams.sort(key=lambda e: (e["rank"], e["team"]))
    finite_tau = u.tau[np.isfinite(u.tau)]
    out["teams"] = teams
    out["ranking"] = {
        "official": "aggregate-then-rank (the metric on all test cases, competition ranks)",
        "schemes": {
            name: {
                "kendall_tau_vs_official": _num(a.scheme_tau[name])
                if name in a.scheme_tau
                else None,
                "reason": a.scheme_reasons.get(name),
            }
            for name in an.SCHEMES
        },
        "bootstrap_kendall_tau": {
            "median": _num(u.tau_median),
            "q025": _num(np.quantile(finite_tau, 0.025)) if finite_tau.size else None,
            "q975": _num(np.quantile(finite_tau, 0.975)) if finite_tau.size else None,
        },
    }
    tests = a.tests
    out["significance"] = (
        {
            "test": tests.test,
            "one_sided": "row better than column",
            "adjustment": "holm over all ordered pairs",
            "alpha": tests.alpha,
            "teams": a.teams,
            "p": _matrix(tests.p),
            "p_adjusted": _matrix(tests.p_adjusted),
            "significant": tests.significant.tolist(),
        }
        if tests is not None
        else {"reason": a.tests_reason}
    )
    return out


def consensus_json(c: an.Consensus) -> dict[str, Any]:
    rows = [
        {
            "team": team,
            "rank": int(c.rank[t]),
            "mean_rank": _num(c.mean_rank[t]),
            "task_ranks": {task: _num(c.task_ranks[i, t]) for i, task in enumerate(c.tasks)},
            "median_rank": _num(c.median[t]),
            "rank_interval": [int(c.lower[t]), int(c.upper[t])],
            "p_first": _num(c.p_first[t]),
            "rank_distribution": [_num(v) for v in c.distribution[t]],
        }
        for t, team in enumerate(c.teams)
    ]
    rows.sort(key=lambda e: (e["rank"], e["team"]))
    finite = c.tau[np.isfinite(c.tau)]
    return {
        "method": CONSENSUS_METHOD,
        "tasks": c.tasks,
        "teams": rows,
        "bootstrap_kendall_tau_median": _num(np.median(finite)) if finite.size else None,
    }


def as_json(ca: ChallengeAnalysis) -> dict[str, Any]:
    return {
        "challenge": ca.slug,
        "title": ca.title,
        "phases": [phase_json(p) for p in ca.phases],
        "consensus": consensus_json(ca.consensus) if ca.consensus is not None else None,
        "consensus_reason": ca.consensus_reason,
    }
