"""A phase scored by an organizer's evaluation image (PhaseSpec.evaluation)."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from server.challenges.schemas import MetricKind, PhaseSpec
from tests.support.factories import STOIC_PHASE

DIGEST = "sha256:" + "a" * 64


def phase(**changes: Any) -> dict[str, Any]:
    spec: dict[str, Any] = yaml.safe_load(STOIC_PHASE)
    spec.update(slug="p", title="P", kind="algorithm", test_dataset="test")
    spec.update(changes)
    return {k: v for k, v in spec.items() if v is not None}


EVALUATION = {
    "image": DIGEST,
    "name": "dice",
    "score": "aggregates.dice.mean",
    "columns": {"hd95": "aggregates.hd95.mean", "asd": {"path": "x.y", "case_key": "ASD"}},
    "per_case": "case",
}


def test_the_board_metrics_are_the_evaluations_columns() -> None:
    spec = PhaseSpec.model_validate(phase(metrics=None, evaluation=EVALUATION))
    cfg = spec.board_metrics()
    assert cfg.primary == "dice" and cfg.bootstrap_resamples == 1000 and cfg.ci_level == 0.95
    assert [m.name for m in cfg.metrics] == ["dice", "hd95", "asd"]
    assert {m.kind for m in cfg.metrics} == {MetricKind.external}
    assert spec.evaluation is not None
    keys = {n: c.per_case_key() for n, c in spec.evaluation.all_columns().items()}
    assert keys == {"dice": "dice", "hd95": "hd95", "asd": "ASD"}


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"evaluation": EVALUATION}, "either metrics"),
        ({"metrics": None}, "either metrics"),
        ({"metrics": None, "evaluation": EVALUATION, "private_fraction": 0.5}, "private_fraction"),
        ({"metrics": None, "evaluation": EVALUATION | {"image": "latest"}}, "image"),
        ({"metrics": None, "evaluation": EVALUATION | {"score": "a..b"}}, "score"),
        ({"metrics": {"primary": "x", "metrics": [
            {"name": "x", "kind": "external", "output": "probability-covid-19", "label": "y"}]}},
         "only for an organizer's evaluation image"),
    ],
)  # fmt: skip
def test_refusals_name_what_is_wrong(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        PhaseSpec.model_validate(phase(**changes))


def test_the_private_fraction_refusal_says_why() -> None:
    # The split ranks each part on per-case values recomputed over its cases; an evaluation
    # image's score is an aggregate over all cases, so the refusal explains that.
    bad = phase(metrics=None, evaluation=EVALUATION, private_fraction=0.5)
    with pytest.raises(ValidationError, match="aggregate over all cases") as info:
        PhaseSpec.model_validate(bad)
    assert "public and private part" in str(info.value)
