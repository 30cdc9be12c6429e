from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class ImageConfig(BaseModel):
    """The part of an image archive's config that intake checks without the engine."""

    model_config = ConfigDict(extra="forbid")
    os: str | None = None
    architecture: str | None = None
    config: dict[str, Any] = Field(default_factory=dict, description="Entrypoint, Cmd, User")


class SubmissionPrecheck(BaseModel):
    """Asked before uploading: would a submission of this kind be accepted now?"""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["algorithm", "codebase"]
    image: ImageConfig | None = None


class SubmissionCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # T2: the key of a completed upload of a `docker save` archive.
    upload: str | None = Field(None, description="upload key (algorithm phases)")
    # T3: a repository and a ref (branch, tag or commit).
    repository_url: str | None = Field(None, max_length=500)
    ref: str | None = Field(None, max_length=255)
    comment: str = Field("", max_length=500)

    @model_validator(mode="after")
    def _one_kind(self) -> SubmissionCreate:
        if self.upload and (self.repository_url or self.ref):
            raise ValueError("give either upload (algorithm) or repository_url+ref (codebase)")
        if bool(self.repository_url) != bool(self.ref):
            raise ValueError("repository_url and ref go together")
        if not self.upload and not self.repository_url:
            raise ValueError("give upload (algorithm) or repository_url+ref (codebase)")
        return self


class TransitionRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    from_status: str | None
    to_status: str
    note: str
    at: datetime


class JobSummary(BaseModel):
    kind: str
    total: int
    by_status: dict[str, int]


class TaskRun(BaseModel):
    """How one task of a multi-task phase went for this submission."""

    task: str
    submission_id: int = Field(description="the task's own submission (its jobs and logs)")
    status: str
    failure_code: str | None
    failure_message: str | None
    jobs: list[JobSummary] = []


class SubmissionRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    challenge: str
    phase: str
    team: str
    kind: str
    status: str
    failure_code: str | None
    failure_message: str | None
    # Organizers and admins only; None for participants.
    operator_detail: str | None = None
    charged: bool
    renounced: bool
    comment: str
    archive_digest: str | None
    repository_url: str | None
    ref: str | None
    commit_sha: str | None
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    transitions: list[TransitionRead] = []
    jobs: list[JobSummary] = []
    # Where its next pending job stands: position, jobs ahead, estimated start.
    queue: dict[str, Any] | None = None
    # A multi-task phase's submission: one entry per task (detail view only); a task's own
    # submission names the submission it is part of.
    tasks: list[TaskRun] = []
    parent_id: int | None = None
