"""Leaderboards: the current results of a phase, ranked on its primary metric with DeLong
ties, each value with its CI; a top-k ensemble row; a statistics view (all-pairs DeLong
p-values, ROC points with CI bands); and re-evaluation when metrics or ground truth change.

A result is current when it was computed under the phase's present metric config
(metrics_version) and test ground truth (dataset digest); anything else is stale and is
neither shown nor ranked."""

from __future__ import annotations

import math
from typing import Any

from sqlalchemy.orm import Session

from evaluation.leaderboard import Entry, ensemble_top_k, rank_entries, rank_with_delong
from evaluation.stats import bootstrap_ci
from server.challenges.models import Phase
from server.challenges.schemas import MetricKind, MetricSpec
from server.datasets.models import Dataset
from server.jobs import repository as jobs_repo
from server.jobs import service as jobs
from server.jobs.states import FINAL as JOB_FINAL
from server.jobs.states import JobKind, JobStatus
from server.leaderboards import repository
from server.leaderboards.models import Result
from server.submissions import repository as submissions_repo
from server.submissions import service as submissions
from server.submissions.models import Submission
from server.submissions.states import SubmissionStatus
from server.teams.models import Team

ENSEMBLE_K = 3
ALPHA = 0.05


def ground_truth_digest(session: Session, phase: Phase) -> str | None:
    if phase.test_dataset_id is None:
        return None
    dataset = session.get(Dataset, phase.test_dataset_id)
    return dataset.digest if dataset else None


def record(
    session: Session,
    submission: Submission,
    phase: Phase,
    evaluator_version: str,
    ground_truth: str,
    metrics: dict[str, Any],
    *,
    metrics_version: int | None = None,
) -> Result:
    """Store a result under its key; a re-run with the same key replaces nothing.

    `metrics_version` is the metric config the evaluation actually ran with (read when its
    job was claimed); a result computed under an older config is stored under that older
    version, so it is stale, never shown as current."""
    version = phase.metrics_version if metrics_version is None else metrics_version
    existing = repository.find(session, submission.id, evaluator_version, version, ground_truth)
    if existing is not None:
        return existing
    primary = str(metrics.get("aggregates", {}).get("primary") or phase.spec.metrics.primary)
    value = metrics.get("aggregates", {}).get(primary, {}).get("value")
    result = Result(
        submission_id=submission.id,
        phase_id=phase.id,
        evaluator_version=evaluator_version,
        metrics_version=version,
        ground_truth_digest=ground_truth,
        primary_metric=primary,
        primary_value=_finite(value),
        metrics=metrics,
    )
    session.add(result)
    session.flush()
    return result


def _finite(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


def _primary(phase: Phase) -> MetricSpec:
    cfg = phase.spec.metrics
    return next(m for m in cfg.metrics if m.name == cfg.primary)


def _team_best(session: Session, phase: Phase) -> list[tuple[Result, Submission, Team]]:
    """Each team's best current result, oldest first among equals."""
    gt = ground_truth_digest(session, phase)
    if gt is None:
        return []
    sign = 1 if _primary(phase).higher_is_better else -1
    best: dict[int, tuple[Result, Submission, Team]] = {}
    for result in repository.current_results(session, phase.id, phase.metrics_version, gt):
        sub = session.get(Submission, result.submission_id)
        if sub is None or sub.status != SubmissionStatus.succeeded.value:
            continue
        team = session.get(Team, sub.team_id)
        assert team is not None
        cur = best.get(team.id)
        if result.primary_value is None:
            if cur is None:
                best[team.id] = (result, sub, team)
            continue
        if (
            cur is None
            or cur[0].primary_value is None
            or (sign * result.primary_value > sign * cur[0].primary_value)
        ):
            best[team.id] = (result, sub, team)
    return sorted(best.values(), key=lambda t: t[0].id)


def _section(result: Result, metric: str) -> dict[str, Any] | None:
    section = result.metrics.get("predictions", {}).get(metric)
    return section if isinstance(section, dict) else None


def _ranked(
    session: Session, phase: Phase
) -> tuple[list[Any], dict[str, tuple[Result, Submission, Team]]]:
    rows = _team_best(session, phase)
    primary = _primary(phase)
    by_key = {str(r.submission_id): (r, s, t) for r, s, t in rows}
    entries = [Entry(str(r.submission_id), r.primary_value) for r, _, _ in rows]
    sections = [_section(r, primary.name) for r, _, _ in rows]
    present = [s for s in sections if s is not None]
    if primary.kind is MetricKind.auc and rows and len(present) == len(sections):
        ranked = rank_with_delong(
            entries, present, higher_is_better=bool(primary.higher_is_better), alpha=ALPHA
        )
    else:
        ranked = rank_entries(entries, higher_is_better=bool(primary.higher_is_better))
    return ranked, by_key


def leaderboard(session: Session, phase: Phase) -> dict[str, Any]:
    cfg = phase.spec.metrics
    primary = _primary(phase)
    ranked, by_key = _ranked(session, phase)
    entries = []
    for r in ranked:
        result, sub, team = by_key[r.key]
        entries.append(
            _row(result, sub, team)
            | {
                "rank": r.rank,
                "position": r.position,
                "tied_with_leader": r.leader != r.key and r.rank is not None,
                "p_vs_rank_leader": r.p_value,
            }
        )
    return {
        "phase": phase.slug,
        "primary_metric": cfg.primary,
        "higher_is_better": primary.higher_is_better,
        "ranking": "ties share a rank when the DeLong test against the rank's leader is not "
        f"significant (p >= {ALPHA})"
        if primary.kind is MetricKind.auc
        else "ties share a rank only on equal values",
        "metrics": [
            {"name": m.name, "kind": m.kind.value, "primary": m.name == cfg.primary}
            for m in cfg.metrics
        ],
        "metrics_version": phase.metrics_version,
        "entries": entries,
        "ensemble": _ensemble(phase, ranked, by_key),
    }


def _ensemble(phase: Phase, ranked: list[Any], by_key: dict[str, Any]) -> dict[str, Any] | None:
    """The top-k submissions' predictions averaged case by case (STOIC Table 4.1)."""
    primary = _primary(phase)
    sections = {k: _section(v[0], primary.name) for k, v in by_key.items()}
    usable = [r for r in ranked if r.rank is not None and sections.get(r.key)]
    if len(usable) < 2:
        return None
    ens = ensemble_top_k(
        usable, {k: v for k, v in sections.items() if v}, ENSEMBLE_K, kind=primary.kind.value
    )
    cfg = phase.spec.metrics
    ci = bootstrap_ci(
        primary.kind.value,
        ens.section["y_true"],
        ens.section["y_score"],
        n_resamples=cfg.bootstrap_resamples,
        seed=cfg.bootstrap_seed,
        level=cfg.ci_level,
    )
    return {
        "members": [int(m) for m in ens.members],
        "teams": [by_key[m][2].name for m in ens.members],
        "value": _finite(ens.value),
        "ci": [_finite(ci.lower), _finite(ci.upper)],
    }


def statistics(session: Session, phase: Phase) -> dict[str, Any]:
    """All-pairs DeLong p-values on the primary metric and ROC points with CI bands.
    Only aggregates leave the server: no per-case labels or predictions."""
    from evaluation.leaderboard import delong_p_values

    primary = _primary(phase)
    ranked, by_key = _ranked(session, phase)
    keys = [r.key for r in ranked if r.rank is not None]
    out: dict[str, Any] = {
        "metric": primary.name,
        "submissions": [int(k) for k in keys],
        "teams": [by_key[k][2].name for k in keys],
        "p_values": None,
        "roc": {},
    }
    sections = [_section(by_key[k][0], primary.name) for k in keys]
    present = [s for s in sections if s is not None]
    if primary.kind is MetricKind.auc and len(keys) > 1 and len(present) == len(sections):
        p_values = delong_p_values(present).tolist()
        out["p_values"] = [[_finite(v) for v in row] for row in p_values]
    for k in keys:
        roc = by_key[k][0].metrics.get("roc", {}).get(primary.name)
        if roc:
            out["roc"][k] = roc
    return out


def _row(result: Result, submission: Submission, team: Team) -> dict[str, Any]:
    aggregates = result.metrics.get("aggregates", {})
    primary = aggregates.get(result.primary_metric, {})
    return {
        "submission_id": submission.id,
        "team": team.name,
        "value": result.primary_value,
        "ci": [_finite(primary.get("ci_lower")), _finite(primary.get("ci_upper"))],
        "metrics": {
            name: {
                k: (_finite(v) if k != "n" else v)
                for k, v in agg.items()
                if k in ("value", "ci_lower", "ci_upper", "n")
            }
            for name, agg in aggregates.items()
            if isinstance(agg, dict)
        },
        "bootstrap": {"resamples": primary.get("n_resamples"), "seed": primary.get("seed")},
        "evaluator_version": result.evaluator_version,
        "created_at": result.created_at.isoformat(),
    }


def reevaluate(session: Session, phase: Phase, *, dry_run: bool = False) -> list[int]:
    """Re-score every submission whose algorithm outputs are complete but whose current
    result (present metric config and ground truth) is missing: one evaluate job each,
    no algorithm re-run. Idempotent. A submission whose evaluation is still open is not
    skipped but scheduled after it: when that evaluation records, `rescore_if_stale` sees
    it ran under an older config and queues the re-evaluation (it is listed here too).
    `dry_run`: only list them."""
    gt = ground_truth_digest(session, phase)
    if gt is None:
        return []
    have = {
        r.submission_id
        for r in repository.current_results(session, phase.id, phase.metrics_version, gt)
    }
    queued: list[int] = []
    for sub in submissions_repo.list_for_phase(session, phase.id):
        status = SubmissionStatus(sub.status)
        if sub.id in have:
            continue
        if status is SubmissionStatus.evaluating:
            evaluations = jobs_repo.for_submission(session, sub.id, JobKind.evaluate.value)
            open_ = [j for j in evaluations if JobStatus(j.status) not in JOB_FINAL]
            if any(j.status == JobStatus.running.value for j in open_):
                queued.append(sub.id)  # re-evaluated when the running one records
            # A pending evaluation reads the new config when it is claimed.
            continue
        if status not in (SubmissionStatus.succeeded, SubmissionStatus.failed):
            continue
        infer = jobs_repo.for_submission(session, sub.id, JobKind.infer.value)
        if not infer or any(j.status != JobStatus.succeeded.value for j in infer):
            continue  # it never produced a full set of outputs
        if dry_run:
            queued.append(sub.id)
            continue
        submissions.transition(
            session,
            sub,
            SubmissionStatus.evaluating,
            note="re-evaluation: metrics or ground truth changed",
        )
        jobs.create(session, sub, JobKind.evaluate)
        queued.append(sub.id)
    return queued


def rescore_if_stale(session: Session, submission: Submission, used: dict[str, Any]) -> bool:
    """After an evaluation records: if it ran under a metric config that has since changed
    (the organizer applied a new one while it ran), evaluate again under the new one."""
    phase = session.get(Phase, submission.phase_id)
    assert phase is not None
    version = used.get("metrics_version")
    if version is None or int(version) == phase.metrics_version:
        return False
    if SubmissionStatus(submission.status) not in (
        SubmissionStatus.succeeded,
        SubmissionStatus.failed,
    ):
        return False
    submissions.transition(
        session,
        submission,
        SubmissionStatus.evaluating,
        note=f"re-evaluation: metrics changed (v{version} -> v{phase.metrics_version}) "
        "during the evaluation",
    )
    jobs.create(session, submission, JobKind.evaluate)
    return True
