"""Every table, imported in one place for Alembic and for `Base.metadata`."""

from server.accounts.models import ApiToken, User
from server.challenges.models import (
    Challenge,
    ChallengeOrganizer,
    OrganizerEvent,
    Phase,
    PhaseInvitation,
)
from server.codebases.models import RepositoryLink, WebhookDelivery
from server.datasets.models import Case, Dataset
from server.db import Base
from server.jobs.models import Job
from server.leaderboards.models import Board, Result
from server.nodes.models import GpuLease, Node
from server.submissions.models import Penalty, Submission, SubmissionTransition
from server.teams.models import JoinRequest, Team, TeamInvitation, TeamMember
from server.uploads.models import Upload, UploadChunk

__all__ = [
    "ApiToken",
    "Base",
    "Board",
    "Case",
    "Challenge",
    "ChallengeOrganizer",
    "Dataset",
    "GpuLease",
    "Job",
    "JoinRequest",
    "Node",
    "OrganizerEvent",
    "Penalty",
    "Phase",
    "PhaseInvitation",
    "RepositoryLink",
    "Result",
    "Submission",
    "SubmissionTransition",
    "Team",
    "TeamInvitation",
    "TeamMember",
    "Upload",
    "UploadChunk",
    "User",
    "WebhookDelivery",
]
