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
from evaluation.metrics import METRICS, MetricError, subset_mask
from evaluation.segmentation import SEGMENTATION_KINDS


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


def check(config: dict[str, Any], labels_csv: bytes) -> list[str]:
    """Raise `ConfigurationError` naming the metric and what is wrong with the config (a
    column that is not there, labels the metric cannot use, classes that miss labels).
    Returns warnings for what depends on the data rather than the config: a subset with no
    case, a ranking metric undefined because the labels hold one class (a small staging
    set, say); every evaluation on these labels would fail until the data changes."""
    cfg = parse_config(config)
    truth = parse_ground_truth(labels_csv)
    outputs = {spec.output: _constant(spec, truth) for spec in cfg.metrics}
    warnings: list[str] = []
    for spec in cfg.metrics:
        if spec.kind in SEGMENTATION_KINDS:
            continue  # scored on mask files, not labels.csv: checked when evaluated
        if spec.subset_label is not None:
            _require_column(spec, truth, spec.subset_label)
            mask = subset_mask(
                [truth.rows[c][spec.subset_label] for c in truth.cases], spec.subset_value
            )
            if not mask.any():
                if spec.kind != "macro_auroc" or not spec.classes:
                    _require_column(spec, truth, spec.label)
                warnings.append(
                    f"metric {spec.name!r}: no case has {spec.subset_label} = "
                    f"{spec.subset_value!r}; it cannot be computed on these labels"
                )
                continue
        row = {**outputs, spec.output: _constant(spec, truth)}
        by_case = {c: Job(pk=c, case=c, outputs=row) for c in truth.cases}
        prepared = prepare(spec, truth, by_case)
        if spec.kind in ("auc", "macro_auroc"):
            try:
                METRICS[spec.kind].point(prepared.y_true, prepared.y_pred)
            except MetricError as e:
                warnings.append(f"metric {spec.name!r} is undefined on these labels: {e}")
    return warnings


def _require_column(spec: MetricSpec, truth: GroundTruth, column: str) -> None:
    if column not in truth.columns:
        raise ConfigurationError(
            f"metric {spec.name!r}: ground truth has no column {column!r} "
            f"(columns: {truth.columns})"
        )
