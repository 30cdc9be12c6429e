"""Challenges and phases, created or updated from a bundle idempotently: applying the same
bundle twice changes nothing, not even a timestamp."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy.orm import Session

from server.accounts import repository as accounts_repo
from server.accounts import service as accounts
from server.accounts.models import User
from server.challenges import evaluation, repository
from server.challenges.models import Challenge, ChallengeOrganizer, Phase, PhaseInvitation
from server.challenges.phases import get_challenge as get_challenge
from server.challenges.phases import get_phase as get_phase
from server.challenges.phases import is_open as is_open
from server.challenges.schemas import ChallengeSpec, PhaseSpec, task_phase_slug
from server.datasets import repository as datasets_repo
from server.datasets import service as datasets
from server.datasets.models import Dataset
from server.datasets.service import CaseChanges
from server.db import utcnow
from server.errors import Conflict, InvalidInput, NotFound, NotPermitted
from server.leaderboards import reinference
from server.leaderboards import service as leaderboards
from server.storage import ArtifactStore
from server.teams import service as teams
from server.teams.models import JoinRequest
from server.teams.repository import DECLINED, PENDING

# A dataset's content comes from a local directory (embedded use) or an uploaded archive.
DatasetSource = Path | str


@dataclass
class ApplyReport:
    challenge: str
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    # Submissions queued for re-scoring because metrics or ground truth changed.
    rescored: list[int] = field(default_factory=list)
    # Submissions whose algorithm runs again (never charged): new or changed test cases, or
    # a phase pointed at another test set. They are evaluated after, not listed in rescored.
    reinferred: list[int] = field(default_factory=list)
    # What changed in each updated phase ("phase p: metrics (v1 -> v2)").
    details: list[str] = field(default_factory=list)
    # A plan: nothing was changed; the lists say what applying would do.
    plan: bool = False
    # What the metric dry-run found that depends on the data, not the config.
    warnings: list[str] = field(default_factory=list)

    def record(self, what: str, outcome: str) -> None:
        getattr(self, outcome).append(what)

    @property
    def changed(self) -> bool:
        return bool(self.created or self.updated)


def plan_spec(
    session: Session,
    store: ArtifactStore,
    user: User,
    spec: ChallengeSpec,
    sources: dict[str, DatasetSource] | None = None,
) -> ApplyReport:
    """What `apply_spec` would do, with the same checks, changing nothing: it runs inside a
    savepoint that is rolled back, and queues no re-evaluation."""
    nested = session.begin_nested()
    try:
        report = apply_spec(session, store, user, spec, sources, plan=True)
    finally:
        nested.rollback()
    return report


def _check_metrics(
    session: Session, store: ArtifactStore, spec: ChallengeSpec, dataset_ids: dict[str, int]
) -> list[str]:
    """Dry-run every phase's metric config on its test labels (a constant prediction per
    case) before any phase changes: a config the evaluator would refuse is refused here,
    naming the metric and the column, instead of failing every submission later."""
    from evaluation.dryrun import check
    from evaluation.inputs import EvaluationError

    warnings: list[str] = []
    for phase_spec in _with_tasks(spec):
        ds_id = dataset_ids.get(phase_spec.test_dataset or "")
        if ds_id is None or phase_spec.metrics is None:
            continue  # no test set yet, or the organizer's own evaluation image
        dataset = session.get(Dataset, ds_id)
        assert dataset is not None
        try:
            found = check(
                phase_spec.metrics.model_dump(mode="json"), store.read_bytes(dataset.labels_digest)
            )
        except EvaluationError as exc:
            raise InvalidInput(
                f"phase {phase_spec.slug!r}: metrics do not fit the labels of dataset "
                f"{dataset.slug!r}: {exc.message}",
                field=f"phases.{phase_spec.slug}.metrics",
            ) from None
        warnings += [f"phase {phase_spec.slug}: {w}" for w in found]
    return warnings


def _with_tasks(spec: ChallengeSpec) -> list[PhaseSpec]:
    """The bundle's phases, each multi-task phase followed by the phases its tasks run as."""
    return [p for phase in spec.phases for p in (phase, *phase.task_phases())]


def _link_tasks(session: Session, challenge_id: int, spec: ChallengeSpec) -> None:
    """Tie each task's phase to its multi-task phase (a no-op once tied)."""
    for phase_spec in spec.phases:
        if not phase_spec.tasks:
            continue
        parent = repository.get_phase(session, challenge_id, phase_spec.slug)
        assert parent is not None
        for task in phase_spec.tasks:
            child = repository.get_phase(
                session, challenge_id, task_phase_slug(phase_spec.slug, task.slug)
            )
            assert child is not None
            if (child.parent_id, child.task_slug) != (parent.id, task.slug):
                child.parent_id, child.task_slug = parent.id, task.slug


def apply_spec(
    session: Session,
    store: ArtifactStore,
    user: User,
    spec: ChallengeSpec,
    sources: dict[str, DatasetSource] | None = None,
    *,
    plan: bool = False,
) -> ApplyReport:
    # long: one transaction: every phase created or diffed, then re-run what changed
    """Create or update; the caller's transaction holds every change, so a refusal (a bad
    metric config, a missing dataset) leaves nothing changed. `plan`: only via `plan_spec`."""
    sources = sources or {}
    report = ApplyReport(spec.slug)
    challenge = repository.get_challenge(session, spec.slug)
    if challenge is None:
        if not user.is_admin:
            raise NotPermitted("only an administrator may create a challenge")
        challenge = Challenge(slug=spec.slug, title=spec.title, description=spec.description)
        session.add(challenge)
        session.flush()
        session.add(ChallengeOrganizer(challenge_id=challenge.id, user_id=user.id))
        report.record(f"challenge {spec.slug}", "created")
    else:
        accounts.require_organizer(session, user, challenge.id)
        if (challenge.title, challenge.description) != (spec.title, spec.description):
            challenge.title, challenge.description = spec.title, spec.description
            challenge.updated_at = utcnow()
            report.record(f"challenge {spec.slug}", "updated")
        else:
            report.record(f"challenge {spec.slug}", "unchanged")

    # Evaluation images and ground-truth tarballs by digest, the images vetted.
    spec = evaluation.resolve_uploads(session, store, user, spec, challenge)

    current = repository.organizer_ids(session, challenge.id)
    for username in spec.organizers:
        organizer = accounts_repo.get_user_by_name(session, username)
        if organizer is None:
            raise InvalidInput(f"organizer {username!r} is not a user", field="organizers")
        if organizer.id not in current:
            session.add(ChallengeOrganizer(challenge_id=challenge.id, user_id=organizer.id))
            current.add(organizer.id)
            report.record(f"organizer {username}", "created")

    dataset_ids: dict[str, int] = {}
    case_changes: dict[str, CaseChanges] = {}
    rescore: list[Phase] = []
    # Phase -> the test cases needing new outputs (None: all, another test set).
    reinfer: dict[Phase, set[int] | None] = {}
    for ds in spec.datasets:
        source = sources.get(ds.slug)
        if source is None:
            existing = datasets_repo.get_dataset(session, challenge.id, ds.slug)
            if existing is None:
                raise InvalidInput(
                    f"dataset {ds.slug!r} has no content yet: give its path or upload it",
                    field=f"datasets.{ds.slug}",
                )
            dataset, outcome, changes = existing, "unchanged", CaseChanges()
        elif isinstance(source, Path):
            dataset, outcome, changes = datasets.ingest_directory(
                session,
                store,
                challenge_id=challenge.id,
                slug=ds.slug,
                root=source,
                title=ds.title,
                public=ds.public,
            )
        else:
            dataset, outcome, changes = datasets.ingest_archive(
                session,
                store,
                archive_digest=source,
                challenge_id=challenge.id,
                slug=ds.slug,
                title=ds.title,
                public=ds.public,
            )
        dataset_ids[ds.slug] = dataset.id
        case_changes[ds.slug] = changes
        report.record(f"dataset {ds.slug}", outcome)

    report.warnings = _check_metrics(session, store, spec, dataset_ids)

    for phase_spec in _with_tasks(spec):
        spec_json = phase_spec.stored()
        ids = {
            "test_dataset_id": dataset_ids.get(phase_spec.test_dataset or ""),
            "training_dataset_id": dataset_ids.get(phase_spec.training_dataset or ""),
            "canary_dataset_id": dataset_ids.get(phase_spec.canary_dataset or ""),
        }
        if ids["test_dataset_id"] is not None:
            # The test cases must carry an image for every input the phase declares.
            test_ds = session.get(Dataset, ids["test_dataset_id"])
            assert test_ds is not None
            datasets.check_interfaces(
                test_ds,
                datasets_repo.list_cases(session, test_ds.id),
                {i.slug: i.extension for i in phase_spec.inputs},
            )
        phase = repository.get_phase(session, challenge.id, phase_spec.slug)
        name = f"phase {phase_spec.slug}"
        if phase is not None and phase.test_dataset_id is not None:
            changes = case_changes.get(phase_spec.test_dataset or "", CaseChanges())
            if ids["test_dataset_id"] not in (None, phase.test_dataset_id):
                reinfer[phase] = None  # another test set: every case runs again
            elif changes.needs_inference:
                reinfer[phase] = changes.needs_inference  # new or changed case images
            elif changes.content:
                rescore.append(phase)  # new labels, or fewer cases: outputs still hold
        if phase is None:
            session.add(
                Phase(
                    challenge_id=challenge.id,
                    slug=phase_spec.slug,
                    kind=phase_spec.kind.value,
                    spec_json=spec_json,
                    **ids,
                )
            )
            report.record(name, "created")
            continue
        if phase.kind != phase_spec.kind.value:
            raise InvalidInput(
                f"phase {phase_spec.slug!r} is a {phase.kind} phase; its kind cannot change",
                field="kind",
            )
        current_ids = {k: getattr(phase, k) for k in ids}
        if phase.spec_json == spec_json and current_ids == ids:
            report.record(name, "unchanged")
            continue
        changed = sorted(
            k for k in {*phase.spec_json, *spec_json} if phase.spec_json.get(k) != spec_json.get(k)
        )
        changed += [k for k in ids if current_ids[k] != ids[k]]
        # What scores the phase: the built-in metrics or the organizer's evaluation image.
        scoring = ("metrics", "evaluation")
        if any(phase.spec_json.get(k) != spec_json.get(k) for k in scoring):
            phase.metrics_version += 1
            rescore.append(phase)
            changed = [
                f"{k} (v{phase.metrics_version - 1} -> v{phase.metrics_version})"
                if k in scoring
                else k
                for k in changed
            ]
        report.details.append(f"{name}: {', '.join(changed)}")
        phase.spec_json = spec_json
        for key, value in ids.items():
            setattr(phase, key, value)
        phase.updated_at = utcnow()
        report.record(name, "updated")
    session.flush()
    _link_tasks(session, challenge.id, spec)
    if reinfer:
        for phase, cases in reinfer.items():
            report.reinferred += reinference.reinfer(session, phase, cases, dry_run=plan)
    if rescore:
        for phase in dict.fromkeys(rescore):
            report.rescored += [
                sid
                for sid in leaderboards.reevaluate(session, phase, dry_run=plan)
                if sid not in report.reinferred
            ]
    report.plan = plan
    return report


def invite_team(session: Session, user: User, phase: Phase, team_id: int) -> None:
    accounts.require_organizer(session, user, phase.challenge_id)
    if not repository.is_invited(session, phase.id, team_id):
        session.add(PhaseInvitation(phase_id=phase.id, team_id=team_id))
        session.flush()


def decide_join(
    session: Session, user: User, challenge_id: int, request_id: int, *, approve: bool
) -> JoinRequest:
    """Organizers only, checked first: to anyone else every request id answers alike.
    Approval invites the requester's team to the challenge's invite-only phases."""
    accounts.require_organizer(session, user, challenge_id)
    row = session.get(JoinRequest, request_id, with_for_update=True)
    if row is None or row.challenge_id != challenge_id:
        raise NotFound(f"no join request {request_id} in this challenge", field="request")
    if row.status != PENDING:
        raise Conflict(f"join request {request_id} is already {row.status}", field="request")
    row.status = teams.APPROVED if approve else DECLINED
    row.decided_by_id, row.decided_at = user.id, utcnow()
    if approve:
        requester = session.get(User, row.user_id)
        assert requester is not None
        team = teams.team_for(session, challenge_id, requester)
        for phase in repository.list_phases(session, challenge_id):
            if phase.spec.rules.invite_only:
                invite_team(session, user, phase, team.id)
    session.flush()
    return row
