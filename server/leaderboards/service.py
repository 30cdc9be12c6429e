"""Leaderboards: the current results of a phase, ranked on its primary metric with DeLong
ties, each value with its CI; a top-k ensemble row; a statistics view (all-pairs DeLong
p-values, ROC points with CI bands); and re-evaluation when metrics or ground truth change.

A result is current when it was computed under the phase's present metric config
(metrics_version), test ground truth (dataset digest) and evaluator (the digest of heldout's
evaluation code, or the operator's evaluation image); anything else is stale and is neither
shown nor ranked."""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from evaluation.leaderboard import Board, Entry, board
from evaluation.metrics import MetricError
from server.challenges.models import Phase
from server.challenges.schemas import MetricKind, MetricSpec
from server.config import get_settings
from server.datasets import coverage
from server.datasets.models import Dataset
from server.jobs import repository as jobs_repo
from server.jobs import service as jobs
from server.jobs.states import FINAL as JOB_FINAL
from server.jobs.states import JobKind, JobStatus
from server.leaderboards import generation, repository, split
from server.leaderboards.models import Result
from server.submissions import repository as submissions_repo
from server.submissions import service as submissions
from server.submissions.models import Submission
from server.submissions.states import SubmissionStatus
from server.teams.models import Team

ENSEMBLE_K = 3
ALPHA = 0.05


def current_evaluator(phase: Phase | None = None) -> str:
    """The key results must carry to be current: the phase's own evaluation image (its
    archive digest), else what the workers of this installation run."""
    if phase is not None and phase.spec.evaluation is not None:
        return phase.spec.evaluation.image
    return get_settings().evaluation_image or _own_evaluator()


@lru_cache(maxsize=1)
def _own_evaluator() -> str:
    from evaluation.build_image import code_digest

    return code_digest()


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
    *,
    metrics_version: int | None = None,
) -> Result:
    """Store a result under its key; a re-run with the same key replaces nothing.

    `metrics_version` is the metric config the evaluation actually ran with (read when its
    job was claimed); a result computed under an older config is stored under that older
    version, so it is stale, never shown as current."""
    version = phase.metrics_version if metrics_version is None else metrics_version
    existing = repository.find(session, submission.id, evaluator_version, version, ground_truth)
    if existing is not None:
        return existing
    primary = str(
        metrics.get("aggregates", {}).get("primary") or phase.spec.board_metrics().primary
    )
    value = metrics.get("aggregates", {}).get(primary, {}).get("value")
    result = Result(
        submission_id=submission.id,
        phase_id=phase.id,
        evaluator_version=evaluator_version,
        metrics_version=version,
        ground_truth_digest=ground_truth,
        primary_metric=primary,
        primary_value=_finite(value),
        metrics=metrics,
    )
    session.add(result)
    session.flush()
    generation.changed(session, phase.id)
    return result


def _finite(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


def _primary(phase: Phase) -> MetricSpec:
    cfg = phase.spec.board_metrics()
    return next(m for m in cfg.metrics if m.name == cfg.primary)


def _team_best(
    session: Session, phase: Phase, part: split.Part | None = None
) -> list[tuple[Result, Submission, Team]]:
    """Each team's best current result, oldest submission first (also among a team's equal
    results). Renounced submissions are off the board: a single-shot phase stays single
    shot. Submission time, unlike a result's id, survives re-evaluation. `part`: every
    result as its view on that part of the test set (chosen best on it too, so which
    submission is shown says nothing about the other part)."""
    gt = ground_truth_digest(session, phase)
    if gt is None:
        return []
    sign = 1 if _primary(phase).higher_is_better else -1
    rows = repository.current_results_on_board(
        session, phase.id, phase.metrics_version, gt, current_evaluator(phase)
    )
    settings = session.info.get("settings") or get_settings()
    stored: dict[int, Result] = {}
    if part is not None:
        stored = {r.id: r for r, _, _ in rows}
        memo: dict[str, bool] = {}
        # The part's primary value of every result (no intervals: cheap), then the full
        # view of the best ones only.
        rows = [
            (split.view(settings, phase, r, part, full=False, memo=memo), s, t) for r, s, t in rows
        ]
    rows.sort(key=lambda t: (t[1].created_at, t[1].id))
    best: dict[int, tuple[Result, Submission, Team]] = {}
    for result, sub, team in rows:
        cur = best.get(team.id)
        if result.primary_value is None:
            if cur is None:
                best[team.id] = (result, sub, team)
            continue
        if (
            cur is None
            or cur[0].primary_value is None
            or (sign * result.primary_value > sign * cur[0].primary_value)
        ):
            best[team.id] = (result, sub, team)
    chosen = sorted(best.values(), key=lambda t: (t[1].created_at, t[1].id))
    if part is not None:
        chosen = [
            (split.view(settings, phase, stored[r.id], part, memo=memo), s, t) for r, s, t in chosen
        ]
    return chosen


def _section(result: Result, metric: str) -> dict[str, Any] | None:
    section = result.metrics.get("predictions", {}).get(metric)
    if not isinstance(section, dict):
        return None
    everything = result.metrics.get("case")
    if "positions" in section or not isinstance(everything, dict):
        return section
    # Results from before sections carried their subset's positions: the per-case record
    # lists every ground-truth case in file order, which is the order resamples index.
    cases = section.get("cases")
    if not isinstance(cases, list) or len(cases) == len(everything):
        return section
    where = {str(c): i for i, c in enumerate(everything)}
    if not all(str(c) in where for c in cases):
        return section
    return section | {"n_cases": len(everything), "positions": [where[str(c)] for c in cases]}


def _no_value_reason(result: Result) -> str | None:
    if result.primary_value is not None:
        return None
    agg = result.metrics.get("aggregates", {}).get(result.primary_metric, {})
    reason = agg.get("ci_reason") if isinstance(agg, dict) else None
    return reason if isinstance(reason, str) else "the metric is undefined for this submission"


def _board(
    session: Session, phase: Phase
) -> tuple[Board, dict[str, tuple[Result, Submission, Team]]]:
    rows = _team_best(session, phase, split.board_part(phase))
    primary = _primary(phase)
    cfg = phase.spec.board_metrics()
    by_key = {str(r.submission_id): (r, s, t) for r, s, t in rows}
    computed = board(
        primary.kind.value,  # `external`: ranked on values alone
        [Entry(str(r.submission_id), r.primary_value, _no_value_reason(r)) for r, _, _ in rows],
        [_section(r, primary.name) for r, _, _ in rows],
        higher_is_better=bool(primary.higher_is_better),
        alpha=ALPHA,
        ensemble_k=ENSEMBLE_K,
        n_resamples=cfg.bootstrap_resamples,
        seed=cfg.bootstrap_seed,
        level=cfg.ci_level,
    )
    return computed, by_key


def compute(session: Session, phase: Phase) -> tuple[dict[str, Any], dict[str, Any]]:
    """The leaderboard and the statistics view, from one computation of the board."""
    computed = _board(session, phase)
    return leaderboard(session, phase, computed), statistics(session, phase, computed)


def leaderboard(
    session: Session,
    phase: Phase,
    computed_board: tuple[Board, dict[str, tuple[Result, Submission, Team]]] | None = None,
) -> dict[str, Any]:
    """Computed live: endpoints serve the stored board instead (`boards.current`)."""
    cfg = phase.spec.board_metrics()
    primary = _primary(phase)
    computed, by_key = computed_board or _board(session, phase)
    entries = []
    for r in computed.ranked:
        result, sub, team = by_key[r.key]
        entries.append(
            _row(result, sub, team)
            | {
                "rank": r.rank,
                "position": r.position,
                "tied_with_leader": r.leader != r.key and r.rank is not None,
                "p_vs_rank_leader": r.p_value,
                "unranked_reason": r.reason if r.rank is None else None,
            }
        )
    return {
        "phase": phase.slug,
        "primary_metric": cfg.primary,
        "higher_is_better": primary.higher_is_better,
        "ci_level": cfg.ci_level,
        "ranking": "ties share a rank when the DeLong test against the rank's leader is not "
        f"significant (p >= {ALPHA})"
        if primary.kind is MetricKind.auc
        else "ties share a rank only on equal values",
        "metrics": [
            {"name": m.name, "kind": m.kind.value, "primary": m.name == cfg.primary}
            for m in cfg.metrics
        ],
        "metrics_version": phase.metrics_version,
        # None: all test cases; "public" while the phase is open, "private" from closes_at.
        "part": split.board_part(phase),
        "entries": entries,
        "ensemble": _ensemble(computed, by_key),
    }


def _ensemble(computed: Board, by_key: dict[str, Any]) -> dict[str, Any] | None:
    """The top-k submissions' predictions averaged case by case (STOIC Table 4.1), with its
    interval on exactly the resamples its members' intervals used."""
    ens = computed.ensemble
    if ens is None:
        return None
    return {
        "members": [int(m) for m in ens.members],
        "teams": [by_key[m][2].name for m in ens.members],
        "value": ens.value,
        "ci": [ens.lower, ens.upper],
        "reason": ens.reason,
    }


def statistics(
    session: Session,
    phase: Phase,
    computed_board: tuple[Board, dict[str, tuple[Result, Submission, Team]]] | None = None,
) -> dict[str, Any]:
    """All-pairs DeLong p-values on the primary metric and ROC points with CI bands.
    Only aggregates leave the server: no per-case labels or predictions."""
    from evaluation.leaderboard import delong_p_values

    primary = _primary(phase)
    computed, by_key = computed_board or _board(session, phase)
    keys = [r.key for r in computed.ranked if r.rank is not None]
    out: dict[str, Any] = {
        "metric": primary.name,
        "submissions": [int(k) for k in keys],
        "teams": [by_key[k][2].name for k in keys],
        "p_values": None,
        "reason": None,
        "roc": {},
    }
    unranked = [r.reason for r in computed.ranked if r.rank is None and r.reason]
    if not keys and unranked:
        out["reason"] = unranked[0]
    sections = [_section(by_key[k][0], primary.name) for k in keys]
    present = [s for s in sections if s is not None]
    if primary.kind is MetricKind.auc and len(keys) > 1 and len(present) == len(sections):
        try:
            p_values = delong_p_values(present).tolist()
        except MetricError as e:
            out["reason"] = f"no DeLong tests: {e} on this metric's cases"
        except (ValueError, KeyError, TypeError):
            out["reason"] = "no DeLong tests: the predictions do not cover the same cases"
        else:
            out["p_values"] = [[_finite(v) for v in row] for row in p_values]
    for k in keys:
        roc = by_key[k][0].metrics.get("roc", {}).get(primary.name)
        if roc:
            out["roc"][k] = roc
    return out


def _row(result: Result, submission: Submission, team: Team) -> dict[str, Any]:
    aggregates = result.metrics.get("aggregates", {})
    primary = aggregates.get(result.primary_metric, {})
    return {
        "submission_id": submission.id,
        "team": team.name,
        "value": result.primary_value,
        "ci": [_finite(primary.get("ci_lower")), _finite(primary.get("ci_upper"))],
        "ci_reason": primary.get("ci_reason"),
        "metrics": {
            name: {
                k: (_finite(v) if k != "n" else v)
                for k, v in agg.items()
                if k in ("value", "ci_lower", "ci_upper", "n")
            }
            for name, agg in aggregates.items()
            if isinstance(agg, dict)
        },
        "bootstrap": {"resamples": primary.get("n_resamples"), "seed": primary.get("seed")},
        "evaluator_version": result.evaluator_version,
        "created_at": result.created_at.isoformat(),
    }


def reevaluate(
    session: Session, phase: Phase, *, dry_run: bool = False, only: set[int] | None = None
) -> list[int]:
    """Re-score every submission whose algorithm outputs are complete but whose current
    result (present metric config, ground truth and evaluator) is missing: one evaluate job
    each, no algorithm re-run. Idempotent. A submission whose evaluation is still open is not
    skipped but scheduled after it: when that evaluation records, `rescore_if_stale` sees
    it ran under an older config and queues the re-evaluation (it is listed here too).
    `dry_run`: only list them. `only`: consider these submissions alone."""
    gt = ground_truth_digest(session, phase)
    if gt is None:
        return []
    have = {
        r.submission_id
        for r in repository.current_results(
            session, phase.id, phase.metrics_version, gt, current_evaluator(phase)
        )
    }
    queued: list[int] = []
    for sub in submissions_repo.list_for_phase(session, phase.id):
        status = SubmissionStatus(sub.status)
        if sub.id in have or (only is not None and sub.id not in only):
            continue
        if status is SubmissionStatus.evaluating:
            evaluations = jobs_repo.for_submission(session, sub.id, JobKind.evaluate.value)
            open_ = [j for j in evaluations if JobStatus(j.status) not in JOB_FINAL]
            if any(j.status == JobStatus.running.value for j in open_):
                queued.append(sub.id)  # re-evaluated when the running one records
            # A pending evaluation reads the new config when it is claimed.
            continue
        if status not in (SubmissionStatus.succeeded, SubmissionStatus.failed):
            continue
        infer = coverage.effective_infer_jobs(session, sub.id, phase.test_dataset_id)
        if (
            not infer
            or any(j.status != JobStatus.succeeded.value for j in infer)
            or coverage.uncovered_cases(session, sub.id, phase.test_dataset_id or 0)
        ):
            continue  # no full set of outputs on the present test cases: re-inference's
        if dry_run:
            queued.append(sub.id)
            continue
        submissions.transition(
            session,
            sub,
            SubmissionStatus.evaluating,
            note="re-evaluation: metrics, ground truth or evaluator changed",
        )
        jobs.create(session, sub, JobKind.evaluate)
        queued.append(sub.id)
    return queued


def reevaluate_all(session: Session) -> list[int]:
    """Re-score, in every phase, the submissions scored under the present metrics and ground
    truth by another evaluator only: run when the server starts, so the first start after an
    upgrade of heldout's evaluator re-scores what the old one scored, and nothing else."""
    queued: list[int] = []
    for phase in session.scalars(select(Phase).order_by(Phase.id)):
        evaluator = current_evaluator(phase)
        gt = ground_truth_digest(session, phase)
        if gt is None:
            continue
        scored = session.execute(
            select(Result.submission_id, Result.evaluator_version).where(
                Result.phase_id == phase.id,
                Result.metrics_version == phase.metrics_version,
                Result.ground_truth_digest == gt,
            )
        ).all()
        current = {sid for sid, ev in scored if ev == evaluator}
        stale = {sid for sid, ev in scored if ev != evaluator} - current
        if stale:
            queued += reevaluate(session, phase, only=stale)
    return queued


def rescore_if_stale(session: Session, submission: Submission, used: dict[str, Any]) -> bool:
    """After an evaluation records: if it ran under a metric config that has since changed
    (the organizer applied a new one while it ran), evaluate again under the new one."""
    phase = session.get(Phase, submission.phase_id)
    assert phase is not None
    version = used.get("metrics_version")
    if version is None or int(version) == phase.metrics_version:
        return False
    if SubmissionStatus(submission.status) not in (
        SubmissionStatus.succeeded,
        SubmissionStatus.failed,
    ):
        return False
    submissions.transition(
        session,
        submission,
        SubmissionStatus.evaluating,
        note=f"re-evaluation: metrics changed (v{version} -> v{phase.metrics_version}) "
        "during the evaluation",
    )
    jobs.create(session, submission, JobKind.evaluate)
    return True


def current_rows(session: Session, phase: Phase) -> list[tuple[Result, Submission, Team]]:
    """What the board ranks, for analyses over it: each team's best current result, oldest
    submission first."""
    return _team_best(session, phase)


def predictions_section(result: Result, metric: str) -> dict[str, Any] | None:
    """A result's predictions section of `metric`, with its subset positions."""
    return _section(result, metric)
