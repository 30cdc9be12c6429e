"""The evaluation container program: predictions.json + ground truth -> metrics.json.

Inputs (grand-challenge compatible):
- `/input/predictions.json`: a list of algorithm jobs, each `{"pk", "inputs", "outputs"}`.
  Every input and output names its interface under `interface` (or `socket`), either as a
  slug or as an object with a `slug` (and `relative_path`). The case is the stem of the
  input image's original file name (`{"image": {"name": "1234.mha"}}` -> `1234`). An
  output's JSON value is inline as `value`, or else read from the job's output file
  `/input/<pk>/output/<relative_path>`.
- Ground truth CSV, first column the case id: `/opt/ml/input/data/ground_truth/labels.csv`
  (mounted read-only) or `/opt/evaluation/ground-truth/labels.csv` (baked into an image).
- Metric configuration (`MetricConfig.model_dump(mode="json")` of the server's schema):
  `metrics.json` beside the ground truth.

Output `/output/metrics.json`: per-case predictions, aggregates with bootstrap intervals,
ROC curves with bands for AUC metrics, and the aligned predictions the server needs for
DeLong tests between submissions and for ensembles. The `predictions` section carries the
ground-truth labels: it is for the server, never for participants.

Invalid predictions (missing, duplicate or unknown cases, missing outputs, wrong types,
NaN/inf, probabilities outside [0, 1], grades outside the label range) stop the evaluation:
exit status 1, a one-line JSON error on stdout and the same object in metrics.json. A
subset of cases is never scored silently. Configuration or ground-truth problems exit 2,
anything unexpected 3.

Values are checked per metric kind:
- auc, macro_auroc: probabilities, numbers in [0, 1] (macro: `{class: p}` with every class,
  or a list in the order of `classes`). Multi-label macro AUROC is chosen when every entry of
  `classes` names a ground-truth column; otherwise `label` holds the class of each case and
  `classes` (default: the sorted observed labels) their order.
- cohen_kappa, quadratic_kappa: numbers, rounded to the nearest grade (halves up), which must
  lie within the grades of `classes` if given, else within the observed label range.
- mae, pearson: finite numbers.
- accuracy: a label (number, string, boolean; 1, 1.0, "1" and true are equal), or class
  probabilities as for macro AUROC, scored by their most probable class.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from evaluation import EVALUATOR_VERSION
from evaluation.inputs import (
    NAMED_CASES,
    ConfigurationError,
    EvaluationError,
    GroundTruth,
    InvalidPredictions,
    Job,
    MetricSpec,
    OutputImage,
    is_number,
    load_config,
    load_ground_truth,
    load_predictions,
    match_cases,
    name_cases,
)
from evaluation.metrics import (
    METRICS,
    MetricError,
    canonical_label,
    canonical_labels,
    round_grades,
    subset_mask,
)
from evaluation.segmentation import SEGMENTATION_KINDS
from evaluation.segmentation_inputs import SegmentationScores, score_masks
from evaluation.stats import bootstrap_ci, roc_band

DEFAULT_PREDICTIONS = Path("/input/predictions.json")
DEFAULT_OUTPUT = Path("/output/metrics.json")
# Mounted ground truth first, then ground truth baked into a derived image.
GROUND_TRUTH_DIRS = (Path("/opt/ml/input/data/ground_truth"), Path("/opt/evaluation/ground-truth"))

Check = Callable[[Any], tuple[Any, str | None]]  # value -> (converted, why invalid or None)


# --- value checks ---------------------------------------------------------------------------


def _describe(v: Any) -> str:
    text = repr(v) if isinstance(v, float) else json.dumps(v)
    return text if len(text) <= 40 else text[:37] + "..."


def _number(v: Any) -> tuple[float | None, str | None]:
    if not is_number(v):
        return None, f"expected a number, got {type(v).__name__} {_describe(v)}"
    f = float(v)
    if not math.isfinite(f):
        return None, f"{_describe(v)} is not a finite number"
    return f, None


def _probability(v: Any) -> tuple[float | None, str | None]:
    f, why = _number(v)
    if f is not None and not 0.0 <= f <= 1.0:
        return None, f"{_describe(v)} is outside [0, 1] for a probability"
    return f, why


def _probability_vector(v: Any, classes: list[Any]) -> tuple[list[float] | None, str | None]:
    """Per-class probabilities given as {class: p} (all classes) or [p, ...] in class order."""
    keys = [canonical_label(c) for c in classes]
    if isinstance(v, dict):
        got = {canonical_label(k): p for k, p in v.items()}
        if set(got) != set(keys) or len(got) != len(v):
            return None, f"expected keys {[str(c) for c in classes]}, got {sorted(map(str, v))}"
        values = [got[k] for k in keys]
    elif isinstance(v, list):
        if len(v) != len(classes):
            return None, f"expected {len(classes)} class probabilities, got {len(v)}"
        values = v
    else:
        return None, f"expected class probabilities (object or list), got {_describe(v)}"
    out: list[float] = []
    for p in values:
        f, why = _probability(p)
        if f is None:
            return None, why
        out.append(f)
    return out, None


def _check_all(slug: str, cases: list[str], raw: list[Any], check: Check) -> list[Any]:
    """Apply `check` to every case's value; report every invalid case at once."""
    out, bad = [], []
    for case, v in zip(cases, raw, strict=True):
        value, why = check(v)
        if why is not None:
            bad.append((case, why))
        out.append(value)
    if bad:
        shown = "; ".join(f"{c}: {w}" for c, w in bad[:NAMED_CASES])
        more = f"; and {len(bad) - NAMED_CASES} more" if len(bad) > NAMED_CASES else ""
        raise InvalidPredictions(
            f"output {slug!r} is invalid for {len(bad)} case(s): {shown}{more}",
            cases=[c for c, _ in bad],
            interface=slug,
        )
    return out


# --- ground-truth labels --------------------------------------------------------------------


def _labels(
    spec: MetricSpec, truth: GroundTruth, cases: list[str], column: str, parse: Callable[[str], Any]
) -> list[Any]:
    if column not in truth.columns:
        raise ConfigurationError(
            f"metric {spec.name!r}: ground truth has no column {column!r} "
            f"(columns: {truth.columns})"
        )
    out, bad = [], []
    for c in cases:
        try:
            out.append(parse(truth.rows[c][column]))
        except ValueError:
            bad.append(c)
    if bad:
        raise ConfigurationError(
            f"metric {spec.name!r}: ground truth column {column!r} has values a {spec.kind} "
            f"metric cannot use for {len(bad)} case(s): {name_cases(bad)}",
            cases=bad,
        )
    return out


def _binary_label(raw: str) -> int:
    key = canonical_label(raw)
    if key not in ("0", "1"):
        raise ValueError(raw)
    return int(key)


def _int_label(raw: str) -> int:
    f = float(raw)
    if not math.isfinite(f) or f != int(f):
        raise ValueError(raw)
    return int(f)


def _float_label(raw: str) -> float:
    f = float(raw)
    if not math.isfinite(f):
        raise ValueError(raw)
    return f


def _sorted_labels(keys: set[str]) -> list[str]:
    try:
        return sorted(keys, key=float)
    except ValueError:
        return sorted(keys)


# --- one metric's arrays --------------------------------------------------------------------


@dataclass(frozen=True)
class Prepared:
    """One metric's inputs over the cases it is computed on (all, or a subset)."""

    y_true: npt.NDArray[Any]
    y_pred: npt.NDArray[Any]
    mask: npt.NDArray[np.bool_] | None  # over all ground-truth cases; None: all of them
    section_true: list[Any]  # JSON labels, for the predictions section
    section_score: list[Any]  # JSON predictions as submitted (checked)
    classes: list[Any] | None = None
    # Segmentation: each label's per-case values (y_pred holds their mean per case).
    per_label: dict[int, list[float]] | None = None


def prepare_segmentation(
    spec: MetricSpec,
    truth: GroundTruth,
    by_case: dict[str, Job],
    truth_dir: Path,
    cache: dict[tuple[Any, ...], SegmentationScores],
) -> tuple[Prepared, SegmentationScores]:
    """A segmentation metric's per-case values (the mean over its labels); masks are read
    and scored once per (output, reference folder, labels) for all metrics reading them."""
    if spec.subset_label is not None:
        raise ConfigurationError(f"metric {spec.name!r}: segmentation metrics take no subset")
    key = (spec.output, spec.label, tuple(spec.classes or ()))
    if key not in cache:
        cache[key] = score_masks(spec, truth.cases, by_case, truth_dir)
    scores = cache[key]
    values = scores.per_case(spec.kind)
    zeros = [0.0] * len(values)
    prepared = Prepared(
        np.array(zeros),
        np.array(values),
        None,
        zeros,
        values,
        per_label=scores.per_label(spec.kind),
    )
    return prepared, scores


def prepare(spec: MetricSpec, truth: GroundTruth, by_case: dict[str, Job]) -> Prepared:
    # long: every input of an evaluation read and checked, each with its own error
    """Check one metric's predictions for every case and build its arrays."""
    cases = truth.cases
    mask: npt.NDArray[np.bool_] | None = None
    scored = cases
    if spec.subset_label is not None:
        mask = subset_mask(_labels(spec, truth, cases, spec.subset_label, str), spec.subset_value)
        if not mask.any():
            raise ConfigurationError(
                f"metric {spec.name!r}: no case has {spec.subset_label} = {spec.subset_value!r}"
            )
        scored = [c for c, m in zip(cases, mask, strict=True) if m]

    # Every case's prediction is checked, including cases outside the metric's subset.
    missing = object()
    raw = [by_case[c].outputs.get(spec.output, missing) for c in cases]
    _check_all(spec.output, cases, raw, lambda v: (v, "output missing" if v is missing else None))

    def check(fn: Check) -> list[Any]:
        values = _check_all(spec.output, cases, raw, fn)
        return values if mask is None else [v for v, m in zip(values, mask, strict=True) if m]

    kind = spec.kind
    if kind == "auc":
        labels = _labels(spec, truth, scored, spec.label, _binary_label)
        probs = check(_probability)
        return Prepared(np.array(labels), np.array(probs), mask, labels, probs)
    if kind in ("cohen_kappa", "quadratic_kappa"):
        labels = _labels(spec, truth, scored, spec.label, _int_label)
        try:
            allowed = [_int_label(str(c)) for c in spec.classes] if spec.classes else labels
        except ValueError:
            raise ConfigurationError(
                f"metric {spec.name!r}: ordinal classes must be integer grades, got {spec.classes}"
            ) from None
        lo, hi = min(allowed), max(allowed)

        def grade(v: Any) -> tuple[int | None, str | None]:
            f, why = _number(v)
            if f is None:
                return None, why
            g = int(round_grades(np.array([f]))[0])
            if not lo <= g <= hi:
                return None, f"{_describe(v)} rounds to grade {g}, outside {lo}..{hi}"
            return g, None

        grades = check(grade)
        return Prepared(
            np.array(labels), np.array(grades, dtype=np.int64), mask, labels, check(_number)
        )
    if kind in ("mae", "pearson"):
        labels = _labels(spec, truth, scored, spec.label, _float_label)
        numbers = check(_number)
        return Prepared(np.array(labels), np.array(numbers), mask, labels, numbers)
    if kind == "macro_auroc":
        declared = spec.classes
        if declared is not None and all(str(c) in truth.columns for c in declared):
            # Multi-label: each class is a binary ground-truth column.
            columns = [_labels(spec, truth, scored, str(c), _binary_label) for c in declared]
            labels = [list(row) for row in zip(*columns, strict=True)]
            probs = check(lambda v: _probability_vector(v, declared))
            return Prepared(np.array(labels), np.array(probs), mask, labels, probs, declared)
        keys, classes = _class_labels(spec, truth, scored)
        probs = check(lambda v: _probability_vector(v, classes))
        first: dict[str, int] = {}
        for i, c in enumerate(classes):  # over the classes, not the cases
            first.setdefault(canonical_label(c), i)
        codes = [first[k] for k in keys]
        section_true = [classes[i] for i in codes]
        return Prepared(np.array(codes), np.array(probs), mask, section_true, probs, classes)
    if kind == "accuracy":
        keys, classes = _class_labels(spec, truth, scored, require_known=False)

        def predicted(v: Any) -> tuple[str | None, str | None]:
            if isinstance(v, dict | list):  # class probabilities: the most probable class
                probs, why = _probability_vector(v, classes)
                if probs is None:
                    return None, why
                return canonical_label(classes[int(np.argmax(probs))]), None
            if isinstance(v, float) and not math.isfinite(v):
                return None, f"{_describe(v)} is not a finite value"
            if not isinstance(v, str | int | float):
                return None, f"expected a label, got {_describe(v)}"
            return canonical_label(v), None

        preds = check(predicted)
        return Prepared(
            np.array(keys, dtype=object), np.array(preds, dtype=object), mask, keys, preds
        )
    raise ConfigurationError(f"metric {spec.name!r}: unknown kind {kind!r}")  # pragma: no cover


def _class_labels(
    spec: MetricSpec, truth: GroundTruth, scored: list[str], *, require_known: bool = True
) -> tuple[list[str], list[Any]]:
    """Canonical labels of the scored cases and the class order (declared, else sorted)."""
    keys: list[str] = canonical_labels(_labels(spec, truth, scored, spec.label, str)).tolist()
    classes = spec.classes if spec.classes is not None else _sorted_labels(set(keys))
    known = {canonical_label(c) for c in classes}
    unknown = [c for c, k in zip(scored, keys, strict=True) if k not in known]
    if unknown and require_known:
        raise ConfigurationError(
            f"metric {spec.name!r}: labels of {len(unknown)} case(s) are not among the "
            f"classes {classes}: {name_cases(unknown)}",
            cases=unknown,
        )
    return keys, classes


def _spread(p: Prepared, n_all: int) -> tuple[npt.NDArray[Any], npt.NDArray[Any]]:
    """Arrays over all cases, as `bootstrap_ci` takes them with a subset mask (entries outside
    the subset are placeholders the mask excludes)."""
    if p.mask is None:
        return p.y_true, p.y_pred
    idx = np.flatnonzero(p.mask)
    y_true = np.zeros((n_all, *p.y_true.shape[1:]), dtype=p.y_true.dtype)
    y_pred = np.zeros((n_all, *p.y_pred.shape[1:]), dtype=p.y_pred.dtype)
    y_true[idx] = p.y_true
    y_pred[idx] = p.y_pred
    return y_true, y_pred


# --- evaluation -----------------------------------------------------------------------------


def _json_float(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def evaluate(
    predictions: Path,
    ground_truth: Path,
    config: Path,
    *,
    case_interface: str | None = None,
) -> dict[str, Any]:
    # long: one pass, metric by metric and section by section, in the report's order
    """Score one submission; raises `EvaluationError` subclasses for unusable inputs."""
    cfg = load_config(config)
    truth = load_ground_truth(ground_truth)
    by_case = match_cases(load_predictions(predictions, case_interface=case_interface), truth)
    masks: dict[tuple[Any, ...], SegmentationScores] = {}
    scored_masks: dict[str, SegmentationScores] = {}  # output slug -> its scores
    prepared = []
    for spec in cfg.metrics:
        if spec.kind in SEGMENTATION_KINDS:
            p, s = prepare_segmentation(spec, truth, by_case, ground_truth.parent, masks)
            scored_masks.setdefault(spec.output, s)
            prepared.append((spec, p))
        else:
            prepared.append((spec, prepare(spec, truth, by_case)))

    aggregates: dict[str, Any] = {}
    roc: dict[str, Any] = {}
    sections: dict[str, Any] = {}
    n_all = len(truth.cases)
    for spec, p in prepared:
        y_true, y_pred = _spread(p, n_all)
        try:
            ci = bootstrap_ci(
                spec.kind,
                y_true,
                y_pred,
                n_resamples=cfg.bootstrap_resamples,
                seed=cfg.bootstrap_seed,
                level=cfg.ci_level,
                subset_mask=p.mask,
            )
        except MetricError as e:
            raise ConfigurationError(
                f"metric {spec.name!r} is undefined on this ground truth: {e}"
            ) from None
        aggregates[spec.name] = {
            "value": _json_float(ci.value),
            "ci_lower": _json_float(ci.lower),
            "ci_upper": _json_float(ci.upper),
            "n": ci.n,
            "n_resamples": ci.n_resamples_used,
            "n_resamples_dropped": ci.n_resamples_dropped,
            "seed": ci.seed,
            "ci_level": ci.level,
            "ci_stratified": ci.stratified,
            "ci_reason": ci.reason,
            "higher_is_better": spec.higher_is_better,
        }
        if p.per_label is not None:
            aggregates[spec.name]["per_label"] = _per_label(spec, p.per_label, cfg)
        if METRICS[spec.kind].is_auc:
            band = roc_band(
                y_true,
                y_pred,
                n_resamples=cfg.bootstrap_resamples,
                seed=cfg.bootstrap_seed,
                level=cfg.ci_level,
                subset_mask=p.mask,
            )
            roc[spec.name] = {
                "fpr": band.fpr.tolist(),
                "tpr": band.tpr.tolist(),
                "tpr_lower": band.tpr_lower.tolist(),
                "tpr_upper": band.tpr_upper.tolist(),
            }
        cases = truth.cases
        if p.mask is not None:
            cases = [c for c, m in zip(cases, p.mask, strict=True) if m]
        section: dict[str, Any] = {
            "cases": cases,
            "y_true": p.section_true,
            "y_score": p.section_score,
        }
        if p.classes is not None:
            section["classes"] = p.classes
        if p.mask is not None:
            # Where the subset lies among all cases: an ensemble of sections is then
            # bootstrapped on exactly its members' resamples.
            section["n_cases"] = n_all
            section["positions"] = np.flatnonzero(p.mask).tolist()
        sections[spec.name] = section
    aggregates["primary"] = cfg.primary

    outputs = sorted({spec.output for spec in cfg.metrics})

    def case_value(case: str, output: str) -> Any:
        value = by_case[case].outputs[output]
        if isinstance(value, OutputImage):  # a mask: its scores per label, not the file
            return scored_masks[output].case_record(case)
        return value

    return {
        "case": {c: {o: case_value(c, o) for o in outputs} for c in truth.cases},
        "aggregates": aggregates,
        "roc": roc,
        "predictions": sections,
        "evaluator_version": EVALUATOR_VERSION,
        "ground_truth_sha256": truth.sha256,
    }


def _per_label(
    spec: MetricSpec, per_label: dict[int, list[float]], cfg: Any
) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for label, values in per_label.items():
        ci = bootstrap_ci(
            spec.kind,
            np.zeros(len(values)),
            np.array(values),
            n_resamples=cfg.bootstrap_resamples,
            seed=cfg.bootstrap_seed,
            level=cfg.ci_level,
        )
        out[str(label)] = {
            "value": _json_float(ci.value),
            "ci_lower": _json_float(ci.lower),
            "ci_upper": _json_float(ci.upper),
        }
    return out


# --- command line ---------------------------------------------------------------------------


def _default(name: str) -> Path:
    for d in GROUND_TRUTH_DIRS:
        if (d / name).exists():
            return d / name
    return GROUND_TRUTH_DIRS[0] / name


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, allow_nan=False), encoding="utf-8")
    os.replace(tmp, path)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m evaluation", description="Score predictions.json against ground truth."
    )
    ap.add_argument("--predictions", type=Path, default=DEFAULT_PREDICTIONS)
    ap.add_argument("--ground-truth", type=Path, default=None, help="labels CSV")
    ap.add_argument("--config", type=Path, default=None, help="metric configuration JSON")
    ap.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    ap.add_argument(
        "--case-interface", default=None, help="input interface whose image names the case"
    )
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        result = evaluate(
            args.predictions,
            args.ground_truth or _default("labels.csv"),
            args.config or _default("metrics.json"),
            case_interface=args.case_interface,
        )
        _write_json(args.output, result)
    except EvaluationError as e:
        payload = e.as_json()
        print(json.dumps(payload, allow_nan=False), flush=True)
        _write_json(args.output, payload)
        return e.exit_code
    except Exception as e:
        # Unexpected: a generic line for the platform, the traceback for the operator.
        payload = {
            "error": {
                "kind": "internal",
                "message": f"internal evaluator error ({type(e).__name__})",
                "cases": [],
                "interface": None,
            }
        }
        print(json.dumps(payload), flush=True)
        traceback.print_exc(file=sys.stderr)
        with contextlib.suppress(OSError):
            _write_json(args.output, payload)
        return 3
    primary = result["aggregates"]["primary"]
    print(json.dumps({"evaluated": {"primary": primary, **result["aggregates"][primary]}}))
    return 0
