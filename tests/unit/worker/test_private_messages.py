"""Fixed classes for failures on private cases; metric-implied output ranges."""

from __future__ import annotations

from server.challenges.schemas import Interface, PhaseSpec
from tests.support.factories import STOIC_PHASE
from worker.executor.base import Failure
from worker.messages import private_failure
from worker.output_rules import scored_outputs
from worker.outputs import check_json_value


def test_exit_codes_and_hints_collapse_to_one_class() -> None:
    for failure in (Failure.exit_code(37), Failure.exit_code(1, "it ran out of GPU memory")):
        code, message = private_failure(failure)
        assert code == "exit_code" and "37" not in message and "GPU" not in message


def test_output_failures_keep_the_public_slug() -> None:
    code, message = private_failure(Failure.invalid_output("mask", "mask.nii.gz is empty"))
    assert code == "invalid_output:mask" and "'mask'" in message
    assert private_failure(Failure.missing_output("p", "/output/p.json"))[0] == "missing_output:p"
    assert private_failure(Failure.disk_full("/scratch", 10))[0] == "disk_full"


def test_auc_outputs_are_probabilities_even_without_a_declared_range() -> None:
    import yaml

    raw = yaml.safe_load(STOIC_PHASE)
    for o in raw["outputs"]:
        o.pop("minimum"), o.pop("maximum")
    spec = PhaseSpec.model_validate({**raw, "kind": "algorithm", "slug": "p", "title": "P"})
    (covid,) = [i for i in scored_outputs(spec) if i.slug == "probability-covid-19"]
    assert check_json_value(1.7, covid) == "the value is outside [0, 1]"
    assert check_json_value(0.3, covid) is None
    plain = Interface(slug="x", kind="json")
    assert check_json_value(1.7, plain) is None
