"""The multi-task phase schema: tasks carry the test set, interfaces and metrics; the
phase's stored form leaves them out; bad task declarations are refused by name. A phase
without tasks is stored exactly as before tasks existed."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml

from server.challenges import reference
from server.challenges.bundle import parse_spec
from server.challenges.schemas import PhaseSpec
from server.errors import InvalidInput


def multitask() -> dict[str, Any]:
    return dict(yaml.safe_load(reference.MULTITASK_EXAMPLE))


def test_the_reference_example_parses_into_two_task_phases() -> None:
    spec = parse_spec(multitask())
    (phase,) = spec.phases
    children = phase.task_phases()
    assert [c.slug for c in children] == ["final--nodules", "final--bone-age"]
    assert [c.test_dataset for c in children] == ["nodules", "bone-age"]
    assert [c.metrics.primary for c in children] == ["auc", "mae"]
    assert children[1].limits == phase.limits and children[1].tasks is None
    # The phase's own stored form has no interfaces or metrics, and reads back the same.
    stored = phase.stored()
    assert not {"inputs", "outputs", "metrics"} & set(stored)
    assert PhaseSpec.model_validate(stored).stored() == stored
    assert "```yaml\n" + reference.MULTITASK_EXAMPLE in reference.render()


def test_a_phase_without_tasks_is_stored_as_before() -> None:
    spec = parse_spec(yaml.safe_load(reference.EXAMPLE))
    stored = spec.phases[0].stored()
    assert "tasks" not in stored and {"inputs", "outputs", "metrics"} <= set(stored)


def _refused(bundle: dict[str, Any], *words: str) -> None:
    with pytest.raises(InvalidInput) as info:
        parse_spec(bundle)
    for word in words:
        assert word in str(info.value), str(info.value)


def test_refusals_name_what_is_wrong() -> None:
    b = multitask()
    b["phases"][0]["metrics"] = b["phases"][0]["tasks"][0]["metrics"]
    _refused(b, "declares metrics per task")

    b = multitask()
    b["phases"][0]["tasks"][1]["inputs"] = [{"slug": "chest-ct", "kind": "image"}]
    _refused(b, "'nodules' and 'bone-age' have the same inputs")

    b = multitask()
    b["phases"][0]["tasks"][1]["slug"] = "nodules"
    _refused(b, "task slugs must be unique")

    b = multitask()
    b["phases"][0]["tasks"] = b["phases"][0]["tasks"][:1]
    _refused(b, "at least two tasks")

    b = multitask()
    b["phases"][0]["tasks"][1]["test_dataset"] = "missing"
    _refused(b, "'missing'")

    b = multitask()
    b["phases"][0]["tasks"][1]["metrics"]["metrics"][0]["output"] = "nope"
    _refused(b, "task 'bone-age'", "'nope'")

    b = multitask()
    b["phases"].append(copy.deepcopy(b["phases"][0]) | {"slug": "final--nodules"})
    _refused(b, "'final--nodules' is taken by a task of phase 'final'")

    b = multitask()
    b["phases"][0]["kind"] = "codebase"
    b["phases"][0]["training_dataset"] = "nodules"
    _refused(b, "algorithm (T2) phases only")
