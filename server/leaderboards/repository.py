from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session, defer

from server.leaderboards.models import Result
from server.submissions.models import Submission
from server.submissions.states import SubmissionStatus
from server.teams.models import Team


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


def current_results_on_board(
    session: Session,
    phase_id: int,
    metrics_version: int,
    ground_truth_digest: str,
    evaluator: str,
) -> list[tuple[Result, Submission, Team]]:
    """Current results of succeeded, unrenounced submissions with their submission and
    team, in one query. Their metrics JSON (per-case predictions: large) is loaded only
    when read, so picking each team's best of 10,000 results parses ~200 of them."""
    stmt = (
        select(Result, Submission, Team)
        .options(defer(Result.metrics))
        .join(Submission, Submission.id == Result.submission_id)
        .join(Team, Team.id == Submission.team_id)
        .where(
            Result.phase_id == phase_id,
            Result.metrics_version == metrics_version,
            Result.ground_truth_digest == ground_truth_digest,
            Result.evaluator_version == evaluator,
            Submission.status == SubmissionStatus.succeeded.value,
            Submission.renounced.is_(False),
        )
        .order_by(Result.id)
    )
    return [(r, s, t) for r, s, t in session.execute(stmt).all()]
