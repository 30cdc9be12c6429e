"""The metric dry-run at apply: config errors are refused naming the metric and column;
what depends on the data (one class, an empty subset) is a warning."""

from __future__ import annotations

from typing import Any

import pytest

from evaluation.dryrun import check
from evaluation.inputs import ConfigurationError

LABELS = b"PatientID,probCOVID,probSevere,grade\nP0,1,1,0\nP1,1,0,2\nP2,0,0,1\nP3,1,1,3\n"


def _cfg(*metrics: dict[str, Any]) -> dict[str, Any]:
    return {"primary": metrics[0]["name"], "metrics": list(metrics)}


AUC = {"name": "auc-severity", "kind": "auc", "output": "p", "label": "probSevere"}


def test_a_fitting_config_passes_without_warnings() -> None:
    subset = {**AUC, "subset_label": "probCOVID", "subset_value": 1}
    kappa = {"name": "kappa", "kind": "quadratic_kappa", "output": "g", "label": "grade"}
    mae = {"name": "mae", "kind": "mae", "output": "g", "label": "grade"}
    acc = {"name": "acc", "kind": "accuracy", "output": "c", "label": "grade"}
    macro = {"name": "macro", "kind": "macro_auroc", "output": "m", "label": "grade"}
    assert check(_cfg(subset, kappa, mae, acc, macro), LABELS) == []


@pytest.mark.parametrize(
    ("metric", "column"),
    [
        ({**AUC, "label": "probSevre"}, "probSevre"),
        ({**AUC, "subset_label": "covid", "subset_value": 1}, "covid"),
        # An empty subset does not hide a missing label column.
        ({**AUC, "label": "sev", "subset_label": "probCOVID", "subset_value": 7}, "sev"),
    ],
)
def test_a_missing_column_is_refused_by_name(metric: dict[str, Any], column: str) -> None:
    with pytest.raises(ConfigurationError, match=f"no column '{column}'"):
        check(_cfg(metric), LABELS)


def test_unusable_labels_and_classes_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="values a auc metric cannot use"):
        check(_cfg({**AUC, "label": "grade"}), LABELS)
    macro = {"name": "m", "kind": "macro_auroc", "output": "m", "label": "grade", "classes": [0, 1]}
    with pytest.raises(ConfigurationError, match="not among the classes"):
        check(_cfg(macro), LABELS)


def test_what_depends_on_the_data_is_a_warning() -> None:
    one_class = b"PatientID,probCOVID,probSevere\nP0,1,0\nP1,0,0\n"
    (warning,) = check(_cfg(AUC), one_class)
    assert "undefined" in warning
    empty = {**AUC, "subset_label": "probCOVID", "subset_value": 7}
    (warning,) = check(_cfg(empty), LABELS)
    assert "no case has probCOVID = 7" in warning
