"""Submissions: intake under the phase rules, the one place where states change, and what a
participant or organizer may see."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from heldout.archive import IntakeError, check_config
from server.accounts import service as accounts
from server.accounts.models import User
from server.challenges import phases
from server.challenges.models import Challenge, Phase
from server.challenges.schemas import PhaseKind
from server.config import Settings
from server.db import no_transaction, utcnow
from server.errors import InvalidInput, InvalidTransition, NotFound, NotPermitted, RuleViolation
from server.jobs import service as jobs
from server.jobs.states import JobKind
from server.leaderboards import generation
from server.submissions import charging, repository, rules
from server.submissions.models import Submission, SubmissionTransition
from server.submissions.schemas import SubmissionCreate, SubmissionPrecheck
from server.submissions.states import ACTIVE, FINAL, SubmissionStatus, can_transition
from server.teams import repository as teams_repo
from server.teams import service as teams
from server.uploads import service as uploads


def transition(
    session: Session,
    submission: Submission,
    target: SubmissionStatus,
    *,
    note: str = "",
    failure: tuple[str, str] | None = None,
    platform_caused: bool = False,
    team_caused: bool = False,
    operator_detail: str | None = None,
) -> None:
    """Move a submission to `target` if the table allows it from its current state. The
    UPDATE is guarded by the state read, so two workers cannot both move it.

    The charge is decided here and only here, by `charging.decide` on the submission's
    first final state; a re-evaluation's outcome never changes it."""
    current = SubmissionStatus(submission.status)
    if not can_transition(current, target):
        raise InvalidTransition(
            f"submission {submission.id} cannot go from {current} to {target}", field="status"
        )
    now = utcnow()
    values: dict[str, object] = {"status": target.value, "updated_at": now}
    if failure is not None:
        values["failure_code"], values["failure_message"] = failure
        values["operator_detail"] = operator_detail
    elif target is SubmissionStatus.succeeded:
        # A success (a re-score after a fixed config, say) leaves no stale failure behind.
        values["failure_code"] = values["failure_message"] = None
        values["operator_detail"] = None
    if target in FINAL:
        values["finished_at"] = now
        if not repository.has_finished(session, submission.id):
            code = failure[0] if failure else None
            values["charged"] = charging.decide(
                current, target, code, platform_caused=platform_caused, team_caused=team_caused
            )
    elif target is SubmissionStatus.evaluating:
        values["finished_at"] = None
    result = session.execute(
        update(Submission)
        .where(Submission.id == submission.id, Submission.status == current.value)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        raise InvalidTransition(
            f"submission {submission.id} changed state concurrently", field="status"
        )
    if SubmissionStatus.succeeded in (current, target):
        generation.changed(session, submission.phase_id)  # it enters or leaves the board
    session.add(
        SubmissionTransition(
            submission_id=submission.id,
            from_status=current.value,
            to_status=target.value,
            note=note,
        )
    )
    session.refresh(submission)


def fail(
    session: Session,
    submission: Submission,
    code: str,
    message: str,
    *,
    platform_caused: bool = False,
    team_caused: bool = False,
    operator_detail: str | None = None,
) -> None:
    """Fail a submission; `message` is what the participant reads, `operator_detail` is for
    organizers only. `platform_caused` when the code alone does not say the platform is to
    blame (it then never counts against the team); `team_caused` when the code alone would
    be free but the team is to blame (a T3 canary, after training on private data)."""
    note = code
    if platform_caused:
        note = f"{code} {charging.PLATFORM_NOTE}"
    elif team_caused:
        note = f"{code} {charging.TEAM_NOTE}"
    transition(
        session,
        submission,
        SubmissionStatus.failed,
        note=note,
        failure=(code, message),
        platform_caused=platform_caused,
        team_caused=team_caused,
        operator_detail=operator_detail,
    )


def create(
    session: Session,
    settings: Settings,
    user: User,
    challenge_slug: str,
    phase_slug: str,
    payload: SubmissionCreate,
) -> Submission:
    # long: intake under every phase rule, in the order participants see errors
    challenge, phase = phases.get_phase(session, challenge_slug, phase_slug)
    now = utcnow()
    _check_open(phase, now)
    kind = PhaseKind(phase.kind)
    fields: dict[str, object] = {}
    if kind is PhaseKind.algorithm:
        if not payload.upload:
            raise InvalidInput(
                "an algorithm phase takes an uploaded image archive (field 'upload')",
                field="upload",
            )
        upload = uploads.get_complete(session, user, payload.upload)
        fields.update(archive_digest=upload.digest, archive_size=upload.size)
    else:
        if not payload.repository_url or not payload.ref:
            raise InvalidInput(
                "a codebase phase takes 'repository_url' and 'ref'", field="repository_url"
            )
        # Resolve with no transaction open (nor the team lock): it talks to a git server
        # for up to git_timeout_s, and on SQLite a transaction would hold the write lock.
        with no_transaction(session):
            url, sha = _resolve_codebase(settings, payload.repository_url, payload.ref)
        fields.update(repository_url=url, ref=payload.ref, commit_sha=sha)

    team = teams.team_for(session, challenge.id, user)
    teams_repo.lock(session, team.id)
    rules.check(session, phase, team, now)

    submission = Submission(
        phase_id=phase.id,
        team_id=team.id,
        user_id=user.id,
        kind=kind.value,
        status=SubmissionStatus.received.value,
        comment=payload.comment,
        created_at=now,
        updated_at=now,
        **fields,
    )
    session.add(submission)
    session.flush()
    session.add(
        SubmissionTransition(submission_id=submission.id, from_status=None, to_status="received")
    )
    transition(session, submission, SubmissionStatus.validating)
    jobs.create(session, submission, JobKind.validate)
    return submission


def _check_open(phase: Phase, now: datetime) -> None:
    open_, why = phases.is_open(phase, now)
    if not open_:
        spec = phase.spec
        raise RuleViolation(
            f"submissions are not accepted: {why}",
            rule="phase_window",
            next_allowed_at=spec.opens_at if spec.opens_at and now < spec.opens_at else None,
            status_code=403,
        )


def precheck(
    session: Session, user: User, challenge_slug: str, phase_slug: str, payload: SubmissionPrecheck
) -> None:
    """What `create` would refuse before anything is uploaded, with the same code: the
    phase, its window, its kind, the team's rules, and the image config's cheap intake
    checks. Changes nothing: a first submission's solo team and a cooldown penalty are
    rolled back with the savepoint."""
    challenge, phase = phases.get_phase(session, challenge_slug, phase_slug)
    now = utcnow()
    _check_open(phase, now)
    kind = PhaseKind(phase.kind)
    if payload.kind != kind.value:
        how = "an image archive (--image)" if kind is PhaseKind.algorithm else "--repo and --ref"
        raise InvalidInput(
            f"phase {phase_slug!r} is a {kind.value} phase: submit {how}", field="kind"
        )
    nested = session.begin_nested()
    try:
        team = teams.team_for(session, challenge.id, user)
        rules.check(session, phase, team, now)
    finally:
        nested.rollback()
    if payload.image is not None:
        image = payload.image
        try:
            check_config(image.os, image.architecture, image.config)
        except IntakeError as exc:
            raise InvalidInput(exc.reason, field="image") from None


def _resolve_codebase(settings: Settings, url: str, ref: str) -> tuple[str, str]:
    from server.codebases import git
    from server.codebases.addresses import AddressPolicy

    try:
        policy = AddressPolicy.from_settings(settings)
        clean = git.validate_repository_url(url, settings.allowed_local_repo_roots, policy=policy)
        return clean, git.resolve_ref(clean, ref, settings.git_timeout_s, policy=policy)
    except git.CodebaseError as exc:
        raise InvalidInput(exc.message, field=exc.field) from exc


def get_visible(session: Session, user: User, submission_id: int) -> Submission:
    """A participant sees their team's submissions; organizers see their challenge's."""
    submission = session.get(Submission, submission_id)
    if submission is None:
        raise NotFound(f"no submission {submission_id}", field="submission")
    phase = session.get(Phase, submission.phase_id)
    assert phase is not None
    if accounts.is_organizer(session, user, phase.challenge_id):
        return submission
    team = teams_repo.team_of(session, phase.challenge_id, user.id)
    if team is None or team.id != submission.team_id:
        # 404, not 403: don't confirm that another team's submission exists.
        raise NotFound(f"no submission {submission_id}", field="submission")
    return submission


def sees_operator_detail(session: Session, user: User, submission: Submission) -> bool:
    """Organizers of the submission's challenge and admins read `operator_detail`."""
    phase = session.get(Phase, submission.phase_id)
    assert phase is not None
    return accounts.is_organizer(session, user, phase.challenge_id)


def list_visible(
    session: Session, user: User, challenge: Challenge, phase: Phase
) -> list[Submission]:
    if accounts.is_organizer(session, user, challenge.id):
        return repository.list_for_phase(session, phase.id)
    team = teams_repo.team_of(session, challenge.id, user.id)
    if team is None:
        return []
    return repository.list_for_phase(session, phase.id, team.id)


def cancel(session: Session, user: User, submission_id: int) -> Submission:
    submission = get_visible(session, user, submission_id)
    status = SubmissionStatus(submission.status)
    if status not in ACTIVE or status is SubmissionStatus.evaluating:
        raise InvalidTransition(
            f"submission {submission_id} is {status} and can no longer be cancelled",
            field="status",
        )
    # A multi-task phase's submission: its running task submissions first (locked before
    # it, the order in which a finishing task locks them).
    children = _lock_children(session, submission)
    # Cancelled before its canary passed it does not count (charging.decide).
    transition(session, submission, SubmissionStatus.cancelled, note=f"by {user.username}")
    jobs.cancel_open(session, submission)
    for child in children:
        transition(session, child, SubmissionStatus.cancelled, note=f"with {submission.id}")
        jobs.cancel_open(session, child)
    return submission


def _lock_children(session: Session, submission: Submission) -> list[Submission]:
    """The task submissions of a multi-task submission still running, locked."""
    rows = session.scalars(
        select(Submission)
        .where(Submission.parent_id == submission.id)
        .order_by(Submission.id)
        .with_for_update(key_share=True)
    ).all()
    return [c for c in rows if SubmissionStatus(c.status) in ACTIVE - {SubmissionStatus.evaluating}]


def renounce(session: Session, user: User, submission_id: int) -> Submission:
    submission = get_visible(session, user, submission_id)
    phase = session.get(Phase, submission.phase_id)
    assert phase is not None
    if not phase.spec.rules.allow_renounce:
        raise NotPermitted("this phase does not allow renouncing a submission")
    children = _lock_children(session, submission)
    submission.renounced = True
    generation.changed(session, submission.phase_id)
    for child in repository.children(session, submission.id):
        # Its tasks leave their boards with it.
        child.renounced = True
        generation.changed(session, child.phase_id)
    if SubmissionStatus(submission.status) in ACTIVE - {SubmissionStatus.evaluating}:
        transition(session, submission, SubmissionStatus.cancelled, note="renounced")
        jobs.cancel_open(session, submission)
        for child in children:
            transition(session, child, SubmissionStatus.cancelled, note="renounced")
            jobs.cancel_open(session, child)
    return submission
