"""The public/private split of a phase's test set (PhaseSpec.private_fraction).

Each case is private when a keyed hash of (phase id, case name) under the installation's
secret falls below the fraction: deterministic, independent of the other cases (so adding,
editing or retiring cases never moves an unchanged case to the other part, and
re-evaluations see the same split), and unpredictable to anyone without the key. The
private share is therefore binomial around the fraction, not exact.

While the phase is open (before closes_at) its board ranks on the public part; from
closes_at on, on the private part. A board on a part is computed from the per-case
predictions sections results carry, each part bootstrapped on its own cases: no number on
it depends on a case of the other part."""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from collections.abc import Sequence
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from evaluation.leaderboard import score_section, section_interval
from evaluation.metrics import MetricError
from server.challenges.models import Phase
from server.config import Settings
from server.leaderboards.models import Result

Part = Literal["public", "private"]


def key(settings: Settings) -> bytes:
    if settings.split_key is not None:
        return settings.split_key.get_secret_value().encode()
    return _key_file((settings.data_dir / "split.key").resolve())


@lru_cache(maxsize=8)
def _key_file(path: Path) -> bytes:
    """The installation's generated key: created once (exclusively, owner-only), then read."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
    text = path.read_text().strip()
    if len(text) < 32:
        raise RuntimeError(f"{path}: the split key is truncated; remove it only before any phase "
                           "with a private_fraction was shown")  # fmt: skip
    return text.encode()


def private_mask(
    secret: bytes, phase_id: int, cases: Sequence[str], fraction: float
) -> npt.NDArray[np.bool_]:
    """Which of `cases` are private in phase `phase_id` at this private fraction."""
    if not 0.0 < fraction < 1.0:
        raise ValueError("the private fraction must lie strictly between 0 and 1")
    draws = [
        int.from_bytes(
            hmac.new(secret, f"{phase_id}\0{c}".encode(), hashlib.sha256).digest()[:8], "big"
        )
        for c in cases
    ]
    return np.asarray(draws, dtype=np.float64) / 2.0**64 < fraction


def _now() -> datetime:
    return datetime.now(UTC)


def _mask(
    secret: bytes, phase_id: int, cases: list[str], fraction: float, memo: dict[str, bool] | None
) -> npt.NDArray[np.bool_]:
    """`private_mask`, each case's draw computed once per `memo` (one board's results
    share their cases)."""
    if memo is None:
        return private_mask(secret, phase_id, cases, fraction)
    new = [c for c in cases if c not in memo]
    if new:
        memo.update(zip(new, private_mask(secret, phase_id, new, fraction).tolist(), strict=True))
    return np.fromiter((memo[c] for c in cases), dtype=bool, count=len(cases))


def board_part(phase: Phase, now: datetime | None = None) -> Part | None:
    """The part the phase's board ranks on now; None when the phase holds nothing back."""
    spec = phase.spec
    return part_at(spec.private_fraction, spec.closes_at, now)


def part_at(
    private_fraction: float | None, closes_at: datetime | None, now: datetime | None = None
) -> Part | None:
    """`board_part` from the two fields of the phase's spec it depends on."""
    if private_fraction is None:
        return None
    now = now or _now()
    return "private" if closes_at is not None and now >= closes_at else "public"


def restrict(section: dict[str, Any], keep: npt.NDArray[np.bool_]) -> dict[str, Any]:
    """A predictions section on the kept cases only, bootstrapped on its own cases."""
    idx = np.flatnonzero(keep).tolist()
    out = {k: v for k, v in section.items() if k not in ("n_cases", "positions")}
    for field in ("cases", "y_true", "y_score"):
        values = section[field]
        out[field] = [values[i] for i in idx]
    return out


def view(
    settings: Settings,
    phase: Phase,
    result: Result,
    part: Part,
    *,
    full: bool = True,
    memo: dict[str, bool] | None = None,
) -> Result:
    """A transient copy of `result` (never added to a session) whose aggregates and
    predictions cover the part's cases only; no ROC, no per-case record. `full=False`:
    the primary metric's value only, without intervals (to choose each team's best)."""
    cfg = phase.spec.board_metrics()
    fraction = phase.spec.private_fraction
    assert fraction is not None
    secret = key(settings)
    aggregates: dict[str, Any] = {"primary": cfg.primary}
    sections: dict[str, Any] = {}
    stored = result.metrics.get("predictions", {})
    for m in cfg.metrics:
        if not full and m.name != cfg.primary:
            continue
        section = stored.get(m.name)
        if not isinstance(section, dict):
            continue
        private = _mask(secret, phase.id, [str(c) for c in section["cases"]], fraction, memo)
        part_section = restrict(section, private if part == "private" else ~private)
        sections[m.name] = part_section
        aggregates[m.name] = _aggregate(
            m.kind.value, part_section, cfg, m.higher_is_better, interval=full
        )
    primary = aggregates.get(cfg.primary, {}).get("value")
    return Result(
        id=result.id,
        submission_id=result.submission_id,
        phase_id=result.phase_id,
        evaluator_version=result.evaluator_version,
        metrics_version=result.metrics_version,
        ground_truth_digest=result.ground_truth_digest,
        primary_metric=cfg.primary,
        primary_value=primary,
        metrics={"aggregates": aggregates, "predictions": sections, "part": part},
        created_at=result.created_at,
    )


def _aggregate(
    kind: str, section: dict[str, Any], cfg: Any, higher: bool | None, *, interval: bool
) -> dict[str, Any]:
    n = len(section["cases"])
    base: dict[str, Any] = {"n": n, "higher_is_better": higher, "seed": cfg.bootstrap_seed}
    try:
        value = score_section(kind, section)
        ci = (
            section_interval(
                kind,
                section,
                n_resamples=cfg.bootstrap_resamples,
                seed=cfg.bootstrap_seed,
                level=cfg.ci_level,
            )
            if interval
            else None
        )
    except (MetricError, ValueError) as e:
        return base | {
            "value": None,
            "ci_lower": None,
            "ci_upper": None,
            "ci_reason": f"undefined on this part's {n} cases: {e}",
        }
    if ci is None:
        return base | {"value": _finite(value)}
    return base | {
        "value": _finite(value),
        "ci_lower": _finite(ci.lower),
        "ci_upper": _finite(ci.upper),
        "n_resamples": ci.n_resamples_used,
        "ci_reason": ci.reason,
    }


def _finite(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None
