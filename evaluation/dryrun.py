"""Dry-run a metric configuration on ground truth before it is applied.

Every metric is prepared exactly as an evaluation would prepare it, with a constant
prediction for every case: this finds what the organizers must fix (a label column that is
not there, label values the metric cannot use, an empty subset, classes that do not cover
the labels, a ranking metric with one class only) without any submission, and so without
failing every scored submission later. Predictions are constant, so metrics that need
spread in the predictions (kappa, Pearson) are checked for their inputs, not their value.
"""

from __future__ import annotations

from typing import Any

from evaluation.evaluate import prepare
from evaluation.inputs import (
    ConfigurationError,
    GroundTruth,
    Job,
    MetricSpec,
    parse_config,
    parse_ground_truth,
)
from evaluation.metrics import METRICS, MetricError


def _observed(truth: GroundTruth, column: str) -> list[str]:
    if column not in truth.columns:
        return []
    seen = {truth.rows[c][column] for c in truth.cases}
    try:
        return sorted(seen, key=float)
    except ValueError:
        return sorted(seen)


def _constant(spec: MetricSpec, truth: GroundTruth) -> Any:
    """A prediction of the right type for the metric, the same for every case."""
    if spec.kind == "auc":
        return 0.5
    if spec.kind in ("mae", "pearson"):
        return 0.0
    if spec.kind in ("cohen_kappa", "quadratic_kappa"):
        grades = spec.classes or _observed(truth, spec.label) or [0]
        try:
            return min(float(g) for g in grades)
        except ValueError:
            return 0.0
    classes = spec.classes or _observed(truth, spec.label)
    if spec.kind == "macro_auroc":
        return [1.0 / max(len(classes), 1)] * len(classes)
    return classes[0] if classes else "0"  # accuracy: a label


def check(config: dict[str, Any], labels_csv: bytes) -> None:
    """Raise `ConfigurationError` naming the metric and what is wrong; None when usable."""
    cfg = parse_config(config)
    truth = parse_ground_truth(labels_csv)
    outputs = {spec.output: _constant(spec, truth) for spec in cfg.metrics}
    for spec in cfg.metrics:
        row = {**outputs, spec.output: _constant(spec, truth)}
        by_case = {c: Job(pk=c, case=c, outputs=row) for c in truth.cases}
        prepared = prepare(spec, truth, by_case)
        if spec.kind in ("auc", "macro_auroc"):
            try:
                METRICS[spec.kind].point(prepared.y_true, prepared.y_pred)
            except MetricError as e:
                raise ConfigurationError(
                    f"metric {spec.name!r} is undefined on this ground truth: {e}"
                ) from None
