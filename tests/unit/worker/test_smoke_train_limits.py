"""The T3 smoke-train's limits: the training limits, its wall time capped at smoke_train_s."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from server.challenges.schemas import PhaseSpec
from server.config import Settings
from tests.unit.worker.test_preflight import _phase
from worker.steps import smoke_train_limits


def _spec(**kw: Any) -> PhaseSpec:
    return PhaseSpec.model_validate(_phase(**kw))


def test_smoke_train_wall_time_is_the_smaller_of_the_two() -> None:
    spec = _spec(training_limits={"wall_time_s": 7200, "memory_mb": 2048, "gpus": 1})
    limits = smoke_train_limits(Settings(), spec)
    assert limits.wall_time_s == 600 and limits.memory_mb == 2048 and limits.gpus == 1
    short = _spec(training_limits={"wall_time_s": 120})
    assert smoke_train_limits(Settings(smoke_train_s=900), short).wall_time_s == 120
    assert smoke_train_limits(Settings(), _spec(limits={"wall_time_s": 30})).wall_time_s == 30


def test_smoke_train_s_must_be_positive() -> None:
    with pytest.raises(ValidationError, match="smoke_train_s"):
        Settings(smoke_train_s=0)
