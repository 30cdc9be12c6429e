"""Submission rules of a phase, checked with the team's row locked so that parallel
submissions see each other. Each refusal names the rule and when the next one is allowed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session

from server.challenges import repository as challenges_repo
from server.challenges.models import Phase
from server.challenges.phases import is_open as phase_is_open
from server.errors import RuleViolation
from server.submissions import repository
from server.submissions.models import Penalty
from server.teams.models import Team


def describe(phase: Phase) -> list[str]:
    """The rule set in words, for the API and `heldout status`."""
    r = phase.spec.rules
    out: list[str] = []
    if r.max_submissions:
        out.append(f"at most {r.max_submissions} submission(s) per {r.window_hours:g} h")
    if r.cooldown_hours:
        text = f"{r.cooldown_hours:g} h between submissions"
        if r.cooldown_penalty_hours:
            text += f"; submitting sooner adds a {r.cooldown_penalty_hours:g} h wait"
        out.append(text)
    if r.single_shot:
        out.append("one submission only" + (" (may be renounced)" if r.allow_renounce else ""))
    if r.invite_only:
        out.append("invited teams only")
    out.append("failures caused by the platform never count against these limits")
    return out


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def counts(session: Session, phase: Phase, team: Team | None, now: datetime) -> dict[str, Any]:
    """The team's use of the rules, counted as `check` counts it (charged submissions)."""
    r = phase.spec.rules
    if team is None:  # no submission yet: nothing used
        return {"charged": 0, "used_in_window": 0 if r.max_submissions else None}
    since = now - timedelta(hours=r.window_hours)
    return {
        "charged": len(repository.charged_since(session, phase.id, team.id, _EPOCH)),
        "used_in_window": len(repository.charged_since(session, phase.id, team.id, since))
        if r.max_submissions
        else None,
    }


def check(session: Session, phase: Phase, team: Team, now: datetime) -> None:
    # long: every phase rule a submission must pass, each with its message
    rules = phase.spec.rules

    if rules.invite_only and not challenges_repo.is_invited(session, phase.id, team.id):
        raise RuleViolation(
            "this phase is open to invited teams only",
            rule="invite_only",
            next_allowed_at=None,
            status_code=403,
        )

    penalty = repository.active_penalty(session, phase.id, team.id, now)
    if penalty is not None:
        raise RuleViolation(
            f"your team is barred from submitting until {penalty.until.isoformat()} "
            f"({penalty.reason})",
            rule="cooldown_penalty",
            next_allowed_at=penalty.until,
        )

    if rules.single_shot and repository.count_standing(session, phase.id, team.id) >= 1:
        hint = " Renounce it first to submit again." if rules.allow_renounce else ""
        raise RuleViolation(
            "this phase allows one submission per team and yours is in." + hint,
            rule="single_shot",
            next_allowed_at=None,
            status_code=409,
        )

    if rules.cooldown_hours:
        last = repository.last_charged(session, phase.id, team.id)
        if last is not None:
            ends = last.created_at + timedelta(hours=rules.cooldown_hours)
            if now < ends:
                next_at = ends
                detail = f"the cooldown of {rules.cooldown_hours:g} h after your last submission"
                if rules.cooldown_penalty_hours:
                    until = now + timedelta(hours=rules.cooldown_penalty_hours)
                    session.add(
                        Penalty(
                            phase_id=phase.id,
                            team_id=team.id,
                            until=until,
                            reason="submitted during the cooldown",
                        )
                    )
                    next_at = max(ends, until)
                    detail += (
                        f" has not passed; submitting during it added a "
                        f"{rules.cooldown_penalty_hours:g} h penalty"
                    )
                else:
                    detail += " has not passed"
                raise RuleViolation(
                    f"{detail}. Next submission allowed at {next_at.isoformat()}.",
                    rule="cooldown",
                    next_allowed_at=next_at,
                    keep_changes=bool(rules.cooldown_penalty_hours),
                )

    if rules.max_submissions:
        window = timedelta(hours=rules.window_hours)
        recent = repository.charged_since(session, phase.id, team.id, now - window)
        if len(recent) >= rules.max_submissions:
            frees = recent[len(recent) - rules.max_submissions].created_at + window
            raise RuleViolation(
                f"your team has made {len(recent)} of {rules.max_submissions} submission(s) "
                f"allowed per {rules.window_hours:g} h. Next submission allowed at "
                f"{frees.isoformat()}.",
                rule="max_submissions",
                next_allowed_at=frees,
            )


def usage(session: Session, phase: Phase, team: Team | None, now: datetime) -> dict[str, Any]:
    """The team's standing against the rules, read without side effects (check() may add a
    penalty; this never does): what the page and `heldout rules` show next to the rules."""
    r = phase.spec.rules
    is_open, why_closed = phase_is_open(phase, now)
    out: dict[str, Any] = {
        **counts(session, phase, team, now),
        "open": is_open,
        "max_submissions": r.max_submissions,
        "window_hours": r.window_hours,
        "used": 0,
        "next_allowed_at": None,
        "can_submit": is_open,
        "reason": why_closed or None,
    }
    if team is None:
        if r.invite_only:
            out.update(can_submit=False, reason="this phase is open to invited teams only")
        return out
    blocked: list[tuple[str, datetime | None]] = []
    if r.invite_only and not challenges_repo.is_invited(session, phase.id, team.id):
        blocked.append(("this phase is open to invited teams only", None))
    penalty = repository.active_penalty(session, phase.id, team.id, now)
    if penalty is not None:
        blocked.append(
            (f"barred until {penalty.until.isoformat()} ({penalty.reason})", penalty.until)
        )
    if r.single_shot and repository.count_standing(session, phase.id, team.id) >= 1:
        blocked.append(("one submission only, and yours is in", None))
    if r.cooldown_hours:
        last = repository.last_charged(session, phase.id, team.id)
        if last is not None and now < last.created_at + timedelta(hours=r.cooldown_hours):
            blocked.append(("cooldown", last.created_at + timedelta(hours=r.cooldown_hours)))
    if r.max_submissions:
        recent = repository.charged_since(
            session, phase.id, team.id, now - timedelta(hours=r.window_hours)
        )
        out["used"] = len(recent)
        if len(recent) >= r.max_submissions:
            frees = recent[len(recent) - r.max_submissions].created_at + timedelta(
                hours=r.window_hours
            )
            blocked.append((f"{len(recent)} of {r.max_submissions} used", frees))
    if blocked and is_open:
        out["can_submit"] = False
        out["reason"] = "; ".join(text for text, _ in blocked)
        times = [t for _, t in blocked if t is not None]
        out["next_allowed_at"] = max(times).isoformat() if times else None
    return out
