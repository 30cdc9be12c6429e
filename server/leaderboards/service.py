"""Leaderboards: rank the current results of a phase on its primary metric."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from server.challenges.models import Phase
from server.datasets.models import Dataset
from server.leaderboards import repository
from server.leaderboards.models import Result
from server.submissions.models import Submission
from server.teams.models import Team


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
) -> Result:
    """Store a result under its key; a re-run with the same key replaces nothing."""
    existing = repository.find(
        session, submission.id, evaluator_version, phase.metrics_version, ground_truth
    )
    if existing is not None:
        return existing
    primary = phase.spec.metrics.primary
    value = metrics.get("aggregates", {}).get(primary, {}).get("value")
    result = Result(
        submission_id=submission.id,
        phase_id=phase.id,
        evaluator_version=evaluator_version,
        metrics_version=phase.metrics_version,
        ground_truth_digest=ground_truth,
        primary_metric=primary,
        primary_value=value,
        metrics=metrics,
    )
    session.add(result)
    session.flush()
    return result


def leaderboard(session: Session, phase: Phase) -> dict[str, Any]:
    spec = phase.spec.metrics
    primary = next(m for m in spec.metrics if m.name == spec.primary)
    gt = ground_truth_digest(session, phase)
    rows: list[dict[str, Any]] = []
    if gt is not None:
        for result in repository.current_results(session, phase.id, phase.metrics_version, gt):
            submission = session.get(Submission, result.submission_id)
            if submission is None or submission.status != "succeeded":
                continue
            team = session.get(Team, submission.team_id)
            rows.append(_row(result, submission, team))
    # One entry per team: its best current submission.
    best: dict[str, dict[str, Any]] = {}
    sign = 1 if primary.higher_is_better else -1
    for row in rows:
        cur = best.get(row["team"])
        if row["value"] is None:
            continue
        if cur is None or sign * row["value"] > sign * cur["value"]:
            best[row["team"]] = row
    ranked = sorted(best.values(), key=lambda r: -sign * r["value"])
    for i, row in enumerate(ranked, start=1):
        row["rank"] = i
    return {
        "phase": phase.slug,
        "primary_metric": spec.primary,
        "higher_is_better": primary.higher_is_better,
        "metrics": [
            {"name": m.name, "kind": m.kind.value, "primary": m.name == spec.primary}
            for m in spec.metrics
        ],
        "metrics_version": phase.metrics_version,
        "entries": ranked,
    }


def _row(result: Result, submission: Submission, team: Team | None) -> dict[str, Any]:
    aggregates = result.metrics.get("aggregates", {})
    return {
        "submission_id": submission.id,
        "team": team.name if team else "?",
        "value": result.primary_value,
        "ci": [
            aggregates.get(result.primary_metric, {}).get("ci_lower"),
            aggregates.get(result.primary_metric, {}).get("ci_upper"),
        ],
        "metrics": {
            name: {k: v for k, v in agg.items() if k in ("value", "ci_lower", "ci_upper")}
            for name, agg in aggregates.items()
            if isinstance(agg, dict)
        },
        "evaluator_version": result.evaluator_version,
        "created_at": result.created_at.isoformat(),
    }
