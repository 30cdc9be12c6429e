"""The public/private split of test cases: deterministic, keyed by the installation's secret,
independent of the other cases, near the asked proportion; and the board's part by time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from pydantic import SecretStr, ValidationError

from server.challenges.schemas import PhaseSpec
from server.config import Settings
from server.leaderboards import split

CASES = [f"P{i:05d}" for i in range(10_000)]


def test_deterministic_and_independent_of_other_cases() -> None:
    a = split.private_mask(b"k" * 32, 7, CASES, 0.3)
    assert (a == split.private_mask(b"k" * 32, 7, CASES, 0.3)).all()
    # Dataset edits: dropping, reordering or adding cases moves no unchanged case.
    kept = [*CASES[::3][::-1], "NEW1", "NEW2"]
    b = dict(zip(kept, split.private_mask(b"k" * 32, 7, kept, 0.3), strict=True))
    assert all(b[c] == a[i] for i, c in enumerate(CASES) if c in b)


def test_keyed_by_secret_and_phase() -> None:
    a = split.private_mask(b"k" * 32, 7, CASES, 0.5)
    for other in (split.private_mask(b"q" * 32, 7, CASES, 0.5),
                  split.private_mask(b"k" * 32, 8, CASES, 0.5)):  # fmt: skip
        agree = float((a == other).mean())
        assert 0.45 < agree < 0.55  # unrelated, not a shifted copy


@pytest.mark.parametrize("fraction", [0.1, 0.3, 0.5, 0.8])
def test_proportion(fraction: float) -> None:
    share = float(split.private_mask(b"k" * 32, 1, CASES, fraction).mean())
    assert abs(share - fraction) < 0.02  # binomial: sd 0.005 at n=10,000
    # A larger fraction only adds cases to the private part (what-if splits nest).
    small = split.private_mask(b"k" * 32, 1, CASES, fraction / 2)
    assert not (small & ~split.private_mask(b"k" * 32, 1, CASES, fraction)).any()


def test_fraction_must_lie_inside() -> None:
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        split.private_mask(b"k", 1, CASES, 1.0)


def test_key_from_settings_or_generated_once(tmp_path: Path) -> None:
    assert split.key(Settings(data_dir=tmp_path, split_key=SecretStr("s" * 40))) == b"s" * 40
    first = split.key(Settings(data_dir=tmp_path / "a"))
    assert len(first) == 64 and (tmp_path / "a" / "split.key").stat().st_mode & 0o077 == 0
    split._key_file.cache_clear()
    assert split.key(Settings(data_dir=tmp_path / "a")) == first
    assert split.key(Settings(data_dir=tmp_path / "b")) != first


def test_board_part_by_time() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    phase = SimpleNamespace(spec=SimpleNamespace(private_fraction=0.4, closes_at=None))
    assert split.board_part(phase, now) == "public"  # type: ignore[arg-type]
    phase.spec.closes_at = now + timedelta(seconds=1)
    assert split.board_part(phase, now) == "public"  # type: ignore[arg-type]
    phase.spec.closes_at = now
    assert split.board_part(phase, now) == "private"  # type: ignore[arg-type]
    phase.spec.private_fraction = None
    assert split.board_part(phase, now) is None  # type: ignore[arg-type]


def test_restrict_drops_positions() -> None:
    section = {"cases": ["a", "b", "c"], "y_true": [1, 0, 1], "y_score": [0.9, 0.1, 0.4],
               "n_cases": 5, "positions": [0, 2, 4]}  # fmt: skip
    out = split.restrict(section, np.array([True, False, True]))
    assert out == {"cases": ["a", "c"], "y_true": [1, 1], "y_score": [0.9, 0.4]}


@pytest.mark.parametrize("bad", [0.0, 1.0, -0.1, 2])
def test_phase_spec_refuses_fraction_outside(bad: float) -> None:
    with pytest.raises(ValidationError, match="private_fraction"):
        PhaseSpec.model_validate({"private_fraction": bad})


def test_memo_gives_the_same_mask() -> None:
    memo: dict[str, bool] = {}
    for cases in (CASES[:500], CASES[250:900], CASES[:900][::-1]):
        got = split._mask(b"k" * 32, 3, cases, 0.3, memo)
        assert (got == split.private_mask(b"k" * 32, 3, cases, 0.3)).all()
    assert len(memo) == 900
