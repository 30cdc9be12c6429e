from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field, model_validator

from server.accounts import service as accounts
from server.challenges import events, repository, service
from server.challenges.bundle import parse_spec
from server.challenges.models import Phase
from server.datasets import repository as datasets_repo
from server.deps import CurrentUser, SessionDep, StoreDep
from server.errors import NotFound
from server.params import BodyId
from server.submissions import rules
from server.uploads import service as uploads

router = APIRouter(tags=["challenges"])


class ApplyBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    bundle: dict[str, Any]
    datasets: dict[str, str] = Field(
        default_factory=dict, description="dataset slug -> key of a completed upload (tar)"
    )
    plan: bool = Field(False, description="only say what applying would change; change nothing")


class ApplyResult(BaseModel):
    challenge: str
    changed: bool
    created: list[str]
    updated: list[str]
    unchanged: list[str]
    rescored: list[int]
    reinferred: list[int] = []
    details: list[str] = []
    plan: bool = False
    warnings: list[str] = []


def _phase_view(phase: Any, organizer: bool) -> dict[str, Any]:
    spec = phase.spec
    view: dict[str, Any] = {
        "slug": phase.slug,
        "title": spec.title,
        "kind": phase.kind,
        "opens_at": spec.opens_at,
        "closes_at": spec.closes_at,
        "inputs": [i.model_dump(mode="json") for i in spec.inputs],
        "outputs": [o.model_dump(mode="json") for o in spec.outputs],
        "limits": spec.limits.model_dump(),
        "rules": spec.rules.model_dump(),
        "rules_text": rules.describe(phase),
        "metrics": spec.board_metrics().model_dump(mode="json"),
        "participants_see_logs": spec.participants_see_logs,
        "feedback_round": spec.feedback_round,
    }
    if spec.tasks:
        # A multi-task phase: its interfaces and metrics above are its first task's.
        view["tasks"] = [
            {
                "slug": t.slug,
                "title": t.title or t.slug,
                "inputs": [i.model_dump(mode="json") for i in t.inputs],
                "outputs": [o.model_dump(mode="json") for o in t.outputs],
                "metrics": t.metrics.model_dump(mode="json"),
            }
            | ({"test_dataset": t.test_dataset} if organizer else {})
            for t in spec.tasks
        ]
    if organizer:
        view["metrics_version"] = phase.metrics_version
        view["datasets"] = {
            "test": spec.test_dataset,
            "training": spec.training_dataset,
            "canary": spec.canary_dataset,
        }
        if spec.evaluation is not None:  # image and tarball digests, JSON paths
            view["evaluation"] = spec.evaluation.model_dump(mode="json")
    return view


@router.post("/challenges/apply", response_model=ApplyResult)
def apply_bundle(
    body: ApplyBody, user: CurrentUser, session: SessionDep, store: StoreDep
) -> object:
    spec = parse_spec(body.bundle)
    sources: dict[str, Any] = {
        slug: uploads.get_complete(session, user, key).digest for slug, key in body.datasets.items()
    }
    unknown = set(sources) - {d.slug for d in spec.datasets}
    if unknown:
        raise NotFound(f"uploads given for undeclared datasets {sorted(unknown)}", field="datasets")
    apply = service.plan_spec if body.plan else service.apply_spec
    report = apply(session, store, user, spec, sources)
    return ApplyResult(
        challenge=report.challenge,
        changed=report.changed,
        created=report.created,
        updated=report.updated,
        unchanged=report.unchanged,
        rescored=report.rescored,
        reinferred=report.reinferred,
        details=report.details,
        plan=report.plan,
        warnings=report.warnings,
    )


@router.get("/challenges/{challenge}/events")
def list_events(challenge: str, user: CurrentUser, session: SessionDep) -> list[dict[str, Any]]:
    """Organizer events, newest first: failures the organizers caused or must know about."""
    row = service.get_challenge(session, challenge)
    accounts.require_organizer(session, user, row.id)
    return [
        {
            "id": e.id,
            "kind": e.kind,
            "phase": ph.slug
            if (ph := session.get(Phase, e.phase_id) if e.phase_id else None)
            else None,
            "submission_id": e.submission_id,
            "message": e.message,
            "created_at": e.created_at.isoformat(),
        }
        for e in events.list_for(session, row.id)
    ]


@router.get("/challenges")
def list_challenges(user: CurrentUser, session: SessionDep) -> list[dict[str, Any]]:
    return [{"slug": c.slug, "title": c.title} for c in repository.list_challenges(session)]


@router.get("/challenges/{challenge}")
def get_challenge(challenge: str, user: CurrentUser, session: SessionDep) -> dict[str, Any]:
    row = service.get_challenge(session, challenge)
    organizer = accounts.is_organizer(session, user, row.id)
    return {
        "slug": row.slug,
        "title": row.title,
        "description": row.description,
        "you_organize": organizer,
        "phases": [_phase_view(p, organizer) for p in repository.list_phases(session, row.id)],
    }


@router.get("/challenges/{challenge}/phases/{phase}")
def get_phase(challenge: str, phase: str, user: CurrentUser, session: SessionDep) -> dict[str, Any]:
    row, ph = service.get_phase(session, challenge, phase)
    return _phase_view(ph, accounts.is_organizer(session, user, row.id))


@router.get("/challenges/{challenge}/datasets")
def list_datasets(challenge: str, user: CurrentUser, session: SessionDep) -> list[dict[str, Any]]:
    """Dataset metadata only; labels (ground truth) are served by no endpoint."""
    row = service.get_challenge(session, challenge)
    accounts.require_organizer(session, user, row.id)
    return [
        {
            "slug": d.slug,
            "title": d.title,
            "public": d.public,
            "digest": d.digest,
            "n_cases": d.n_cases,
            "version": d.version,
            "label_columns": d.label_columns,
        }
        for d in datasets_repo.list_datasets(session, row.id)
    ]


class InviteBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    team_id: BodyId | None = None
    username: str | None = Field(
        None, min_length=1, max_length=100, description="invite this user's team (or a team of one)"
    )

    @model_validator(mode="after")
    def _one(self) -> InviteBody:
        if (self.team_id is None) == (self.username is None):
            raise ValueError("give team_id or username")
        return self


@router.post("/challenges/{challenge}/phases/{phase}/invitations", status_code=201)
def invite(
    challenge: str, phase: str, body: InviteBody, user: CurrentUser, session: SessionDep
) -> dict[str, Any]:
    from server.teams import service as teams

    row, ph = service.get_phase(session, challenge, phase)
    # Organizers first: to anyone else every team id answers alike (no existence probe).
    accounts.require_organizer(session, user, row.id)
    if body.username is not None:
        team = teams.team_for(session, row.id, accounts.get_user(session, body.username))
    else:
        assert body.team_id is not None
        team = teams.get_team(session, body.team_id)
        if team.challenge_id != row.id:
            raise NotFound(f"no team {body.team_id} in this challenge", field="team_id")
    service.invite_team(session, user, ph, team.id)
    return {"phase": ph.slug, "team_id": team.id, "team": team.name}
