"""Materialized leaderboards: a phase's leaderboard and statistics are computed when what
they show changes, stored as one row, and served from it (with an ETag) however many look.

Writers bump `Phase.board_generation` in the transaction that changes a result, a
submission's place on the board or a renounce (`changed`). A reader that finds the stored
board older than the generation it read asks for a recompute: one per phase runs at a
time in this process, so a burst of changes and of readers costs one recompute, and every
reader meanwhile is served the previous board (after waiting at most
`Settings.leaderboard_fresh_wait_s` for the new one). A board is replaced in one row write,
so a reader sees the old board or the new one, never a mix. The rule key (metric config,
ground truth, evaluator) is part of the row's identity: a board computed under other rules
is never served."""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property, lru_cache
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from server.challenges.models import Phase
from server.config import Settings, get_settings
from server.leaderboards.models import Board

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Stored:
    generation: int
    etag: str
    leaderboard: str  # JSON text, served as is
    statistics: str

    # Encoded once per board, not once per request (the statistics run to megabytes).
    @cached_property
    def leaderboard_bytes(self) -> bytes:
        return self.leaderboard.encode()

    @cached_property
    def statistics_bytes(self) -> bytes:
        return self.statistics.encode()


def rule_key(session: Session, phase: Phase) -> str:
    from server.leaderboards.service import current_evaluator, ground_truth_digest
    from server.leaderboards.split import board_part

    return _rule_key(
        phase.metrics_version,
        ground_truth_digest(session, phase),
        current_evaluator(phase),
        phase.spec_json,
        phase.slug,
        board_part(phase),  # the board turns from the public to the private part at close
    )


def _rule_key(
    metrics_version: int,
    digest: str | None,
    evaluator: str,
    spec_json: dict[str, Any],
    slug: str,
    part: str | None,
) -> str:
    rules = [metrics_version, digest, evaluator, spec_json, slug, part]
    return hashlib.sha256(json.dumps(rules, sort_keys=True, default=str).encode()).hexdigest()


def _stored(row: Board) -> Stored:
    return Stored(row.generation, row.etag, row.leaderboard_json, row.statistics_json)


# The last board served per (database, phase, rule key), so a reader whose generation it
# matches does not load the board's JSON again: the row is only read when it changed.
_served: dict[tuple[str, int, str, str], Stored] = {}


def served(settings: Settings, token_hash: str, challenge: str, phase: str) -> Stored | None:
    """The board this process holds for the phase as the database has it now, found with
    one indexed read (the token, the phase, its generation and ground truth) and no ORM
    session: the path every look at an unchanged board takes. None when anything is not
    plain (no such token or phase, no board held, a newer generation): the caller then
    takes the full path, which raises the right error or computes the board."""
    from server.leaderboards import split
    from server.leaderboards.repository import board_probe
    from server.leaderboards.service import current_evaluator

    probe = board_probe(settings, token_hash, challenge, phase)
    if probe is None:
        return None
    fraction, closes_at, image, spec_json = _spec_fields(probe.spec_text)
    if spec_json.get("tasks"):
        return None  # a multi-task phase has no board: the full path answers 409
    key = _rule_key_of(
        probe.metrics_version,
        probe.digest,
        image or current_evaluator(),  # as `current_evaluator(phase)` says
        probe.spec_text,
        phase,
        split.part_at(fraction, closes_at),
    )
    hit = _served.get((settings.sqlalchemy_url, probe.phase_id, probe.created_at.isoformat(), key))
    if hit is None or hit.generation < probe.generation:
        return None
    from server.accounts import service as accounts

    accounts.note_use(settings, probe.token_id, probe.last_used_at)
    return hit


@lru_cache(maxsize=256)
def _spec_fields(
    spec_text: str,
) -> tuple[float | None, datetime | None, str | None, dict[str, Any]]:
    """What the rule key needs of a phase's spec: its private fraction, closing time, own
    evaluation image (None: the installation's evaluator) and the spec itself."""
    from server.challenges.schemas import PhaseSpec

    spec_json = json.loads(spec_text)
    spec = PhaseSpec.model_validate(spec_json)
    image = spec.evaluation.image if spec.evaluation is not None else None
    return spec.private_fraction, spec.closes_at, image, spec_json


@lru_cache(maxsize=256)
def _rule_key_of(
    metrics_version: int,
    digest: str | None,
    evaluator: str,
    spec_text: str,
    slug: str,
    part: str | None,
) -> str:
    """`rule_key` from the phase's columns as read, its spec still as text."""
    spec_json = _spec_fields(spec_text)[3]
    return _rule_key(metrics_version, digest, evaluator, spec_json, slug, part)


def current(session: Session, phase: Phase) -> Stored:
    """The phase's board as of the generation this session reads, or the previous one if
    its recompute is still running after the wait."""
    settings: Settings = session.info.get("settings") or get_settings()
    key = rule_key(session, phase)
    wanted = phase.board_generation
    memo = (settings.sqlalchemy_url, phase.id, phase.created_at.isoformat(), key)
    hit = _served.get(memo)
    if hit is not None and hit.generation >= wanted:
        return hit
    row = session.scalar(select(Board).where(Board.phase_id == phase.id, Board.rule_key == key))
    if row is not None and row.generation >= wanted:
        _served[memo] = _stored(row)
        return _served[memo]
    old = _stored(row) if row is not None else None
    # No board at all yet: the first reader waits for it (there is nothing to serve).
    deadline = None if old is None else time.monotonic() + settings.leaderboard_fresh_wait_s
    while True:
        future = _refresh(settings, phase.id)
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            new = future.result(timeout=left)
        except TimeoutError:
            assert old is not None
            return old
        if new.generation >= wanted:
            _served[memo] = new
            return new
        # That recompute started before the change this reader saw: start the next one.
        old = new


_lock = threading.Lock()
_running: dict[tuple[str, int], Future[Stored]] = {}


def _refresh(settings: Settings, phase_id: int) -> Future[Stored]:
    """The recompute of this phase's board running in this process, or a new one."""
    key = (settings.sqlalchemy_url, phase_id)
    with _lock:
        future = _running.get(key)
        if future is None or future.done():
            future = Future()
            # A daemon thread: a server shutting down abandons a recompute nobody waits for
            # (the next reader starts it again).
            threading.Thread(
                target=_run, args=(future, settings, phase_id), name="leaderboard", daemon=True
            ).start()
            _running[key] = future
        return future


def _run(future: Future[Stored], settings: Settings, phase_id: int) -> None:
    try:
        future.set_result(recompute(settings, phase_id))
    except BaseException as exc:
        log.exception("recomputing the leaderboard of phase %s failed", phase_id)
        future.set_exception(exc)


def recompute(settings: Settings, phase_id: int) -> Stored:
    """Compute the phase's board in a read-only transaction, then store it in a short write
    (unless a newer one was stored meanwhile, by another process)."""
    from server.db import session_scope
    from server.leaderboards import service

    with session_scope(settings, write=False) as session:
        phase = session.get(Phase, phase_id)
        if phase is None:
            raise LookupError(f"no phase {phase_id}")
        generation = phase.board_generation
        key = rule_key(session, phase)
        lb, stats = service.compute(session, phase)
    lb_text = _dumps(lb)
    stats_text = _dumps(stats)
    etag = hashlib.sha256(f"{lb_text}\n{stats_text}".encode()).hexdigest()[:32]
    stored = Stored(generation, etag, lb_text, stats_text)
    with session_scope(settings) as session:
        row = session.scalar(select(Board).where(Board.phase_id == phase_id, Board.rule_key == key))
        if row is None:
            session.execute(delete(Board).where(Board.phase_id == phase_id))
            session.add(
                Board(
                    phase_id=phase_id,
                    rule_key=key,
                    generation=generation,
                    etag=etag,
                    leaderboard_json=lb_text,
                    statistics_json=stats_text,
                )
            )
            try:
                session.flush()
            except IntegrityError:  # another process stored this key first
                session.rollback()
        elif row.generation < generation:
            row.generation, row.etag = generation, etag
            row.leaderboard_json, row.statistics_json = lb_text, stats_text
    return stored


def _dumps(value: Any) -> str:
    # As FastAPI's JSONResponse renders it.
    return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
