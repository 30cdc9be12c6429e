from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from server.leaderboards.models import Result


def current_results(
    session: Session,
    phase_id: int,
    metrics_version: int,
    ground_truth_digest: str,
    evaluator: str,
) -> list[Result]:
    """Results computed under the phase's present metric config, ground truth and evaluator."""
    stmt = select(Result).where(
        Result.phase_id == phase_id,
        Result.metrics_version == metrics_version,
        Result.ground_truth_digest == ground_truth_digest,
        Result.evaluator_version == evaluator,
    )
    return list(session.scalars(stmt.order_by(Result.id)))


def find(
    session: Session,
    submission_id: int,
    evaluator_version: str,
    metrics_version: int,
    ground_truth_digest: str,
) -> Result | None:
    return session.scalar(
        select(Result).where(
            Result.submission_id == submission_id,
            Result.evaluator_version == evaluator_version,
            Result.metrics_version == metrics_version,
            Result.ground_truth_digest == ground_truth_digest,
        )
    )
