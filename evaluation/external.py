"""Reading an organizer's evaluation report (grand-challenge's /output/metrics.json).

The phase names its score and extra columns by JSON path ("aggregates.dice.mean"); each
is read here, and, where the report carries per-case values, given the same percentile
bootstrap interval of the mean that heldout's own metrics carry. The result is heldout's
own report shape (`aggregates` keyed by column, each with value, interval and n), so the
board reads it like the built-in evaluator's.

    report = read_report(doc, columns, per_case="case", n_resamples=1000, seed=1, level=0.95)

`ReportError` names what is wrong (the path, the column): the organizer reads it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from evaluation.resampling import cached_counts


class ReportError(ValueError):
    """The organizer's metrics.json lacks a configured path or holds a non-finite value."""


@dataclass(frozen=True)
class Column:
    name: str
    path: str
    case_key: str


def lookup(doc: Any, path: str) -> Any:
    """The value at a dotted path; a list step is its index. Raises ReportError naming the
    first step that is missing."""
    node = doc
    walked: list[str] = []
    for step in path.split("."):
        walked.append(step)
        if isinstance(node, Mapping) and step in node:
            node = node[step]
        elif isinstance(node, list) and step.isdigit() and int(step) < len(node):
            node = node[int(step)]
        else:
            raise ReportError(f"metrics.json has no {'.'.join(walked)!r} (path {path!r})")
    return node


def finite(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ReportError(f"{what} is {type(value).__name__} {str(value)[:40]!r}, not a number")
    if not math.isfinite(value):
        raise ReportError(f"{what} is {value}, not a finite number")
    return float(value)


def per_case_values(node: Any, key: str) -> list[float] | None:
    """A column's per-case values: `node` is column -> {row: value} (pandas' to_dict(), as
    evalutils writes it), column -> [values], or rows ({row: {column: value}} or a list of
    {column: value}). None when the column has no per-case values there."""
    column: Any = None
    if isinstance(node, Mapping) and key in node and isinstance(node[key], Mapping | list):
        column = node[key]
        values = list(column.values()) if isinstance(column, Mapping) else list(column)
    else:
        rows = list(node.values()) if isinstance(node, Mapping) else node
        if not isinstance(rows, list) or not rows or not all(isinstance(r, Mapping) for r in rows):
            return None
        if not any(key in r for r in rows):
            return None
        values = [r.get(key) for r in rows]
    return [finite(v, f"per-case {key!r} value") for v in values]


def mean_interval(
    values: list[float], *, n_resamples: int, seed: int, level: float
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of per-case values."""
    x = np.asarray(values, dtype=float)
    counts = cached_counts(len(x), n_resamples, seed).matrix
    means = counts @ x / len(x)
    alpha = (1.0 - level) / 2.0
    lower, upper = (float(q) for q in np.quantile(means, [alpha, 1.0 - alpha]))
    return lower, upper


def read_report(
    doc: Any,
    columns: list[Column],
    *,
    per_case: str | None,
    n_resamples: int,
    seed: int,
    level: float,
) -> dict[str, Any]:
    """heldout's report of the columns (the first is the score), with intervals where
    per-case values are present; the organizer's own document is kept as `external`."""
    aggregates: dict[str, Any] = {"primary": columns[0].name}
    cases = lookup(doc, per_case) if per_case else None
    for col in columns:
        value = finite(lookup(doc, col.path), f"{col.path!r}")
        agg: dict[str, Any] = {"value": value, "ci_lower": None, "ci_upper": None, "n": None}
        values = per_case_values(cases, col.case_key) if cases is not None else None
        if values:
            lower, upper = mean_interval(values, n_resamples=n_resamples, seed=seed, level=level)
            agg.update(
                ci_lower=lower, ci_upper=upper, n=len(values), n_resamples=n_resamples, seed=seed
            )
        else:
            agg["ci_reason"] = "the evaluation gave no per-case values for this column"
        aggregates[col.name] = agg
    return {"aggregates": aggregates, "external": doc}
