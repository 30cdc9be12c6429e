from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Select, Text, and_, bindparam, cast, select
from sqlalchemy.orm import Session, defer

from server.accounts.models import ApiToken, User
from server.challenges.models import Challenge, Phase
from server.config import Settings
from server.datasets.models import Dataset
from server.db import read_one
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


@dataclass(frozen=True)
class BoardProbe:
    """What deciding whether a held board is current needs, read in one statement."""

    phase_id: int
    generation: int
    metrics_version: int
    spec_text: str
    created_at: datetime
    digest: str | None
    token_id: int
    last_used_at: datetime | None


def _probe_statement() -> Select[int, int, int, str, datetime, str, int, datetime | None]:
    return (
        select(
            Phase.id,
            Phase.board_generation,
            Phase.metrics_version,
            cast(Phase.spec_json, Text),
            Phase.created_at,
            Dataset.digest,
            ApiToken.id,
            ApiToken.last_used_at,
        )
        .select_from(Phase)
        .join(Challenge, Challenge.id == Phase.challenge_id)
        .outerjoin(Dataset, Dataset.id == Phase.test_dataset_id)
        .join(ApiToken, and_(ApiToken.token_hash == bindparam("h"), ApiToken.revoked_at.is_(None)))
        .join(User, User.id == ApiToken.user_id)
        .where(
            Challenge.slug == bindparam("c"),
            Phase.slug == bindparam("p"),
            Phase.parent_id.is_(None),  # a task's own phase is reached through its parent
        )
    )


_PROBE = _probe_statement()


def board_probe(
    settings: Settings, token_hash: str, challenge: str, phase: str
) -> BoardProbe | None:
    """The phase and the live token of an existing user, or None if either is missing."""
    row = read_one(settings, _PROBE, {"h": token_hash, "c": challenge, "p": phase})
    return None if row is None else BoardProbe(*row)
