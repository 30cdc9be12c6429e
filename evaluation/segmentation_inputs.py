"""Scoring a submission's masks against the ground-truth masks, case by case.

Ground truth: `<ground-truth dir>/<label>/<case><ext>` beside labels.csv, where `label` is
the metric's `label` (the mask folder) and the case id is labels.csv's first column. The
per-case scores of one (output, folder, labels) triple are computed once and shared by the
Dice, HD95 and ASSD metrics that read it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evaluation.inputs import (
    NAMED_CASES,
    ConfigurationError,
    InvalidPredictions,
    Job,
    MetricSpec,
    OutputImage,
    name_cases,
)
from evaluation.segmentation import LabelScores, MaskError, case_scores, read_mask

# Extensions a ground-truth mask may have, tried in this order.
MASK_EXTENSIONS = (".mha", ".nii.gz", ".nii", ".nrrd", ".mhd")


@dataclass(frozen=True)
class SegmentationScores:
    cases: list[str]
    labels: list[int]
    scores: dict[str, dict[int, LabelScores]]  # case -> label -> scores

    def per_case(self, kind: str) -> list[float]:
        """Each case's value: the mean over the labels."""
        return [
            sum(self.scores[c][label].get(kind) for label in self.labels) / len(self.labels)
            for c in self.cases
        ]

    def per_label(self, kind: str) -> dict[int, list[float]]:
        return {
            label: [self.scores[c][label].get(kind) for c in self.cases] for label in self.labels
        }

    def case_record(self, case: str) -> dict[str, Any]:
        return {
            str(label): {
                "dice": s.dice,
                "hd95": s.hd95,
                "assd": s.assd,
                **({"empty": s.empty} if s.empty else {}),
            }
            for label, s in self.scores[case].items()
        }


def reference_mask(folder: Path, case: str) -> Path | None:
    for ext in MASK_EXTENSIONS:
        path = folder / f"{case}{ext}"
        if path.is_file():
            return path
    return None


def score_masks(
    spec: MetricSpec, cases: Sequence[str], by_case: dict[str, Job], truth_dir: Path
) -> SegmentationScores:
    """Per-case, per-label scores of spec.output's masks against truth_dir/spec.label."""
    labels = [int(c) for c in spec.classes or []]
    if not labels:
        raise ConfigurationError(f"metric {spec.name!r}: a segmentation metric needs classes")
    folder = truth_dir / spec.label
    if not folder.is_dir():
        raise ConfigurationError(
            f"metric {spec.name!r}: the ground truth has no mask folder {spec.label!r}"
        )
    no_reference = [c for c in cases if reference_mask(folder, c) is None]
    if no_reference:
        raise ConfigurationError(
            f"metric {spec.name!r}: no reference mask in {spec.label!r} for "
            f"{len(no_reference)} case(s): {name_cases(no_reference)}",
            cases=no_reference,
        )
    scores: dict[str, dict[int, LabelScores]] = {}
    bad: list[tuple[str, str]] = []
    for case in cases:
        value = by_case[case].outputs.get(spec.output)
        if not isinstance(value, OutputImage):
            bad.append((case, "expected an image output (a mask file)"))
            continue
        reference_path = reference_mask(folder, case)
        assert reference_path is not None
        try:
            reference = read_mask(reference_path)
        except MaskError as e:
            raise ConfigurationError(
                f"metric {spec.name!r}: the reference mask of case {case} is unusable: {e}",
                cases=[case],
            ) from None
        try:
            scores[case] = case_scores(read_mask(value.path), reference, labels)
        except MaskError as e:
            bad.append((case, str(e)))
    if bad:
        shown = "; ".join(f"{c}: {w}" for c, w in bad[:NAMED_CASES])
        more = f"; and {len(bad) - NAMED_CASES} more" if len(bad) > NAMED_CASES else ""
        raise InvalidPredictions(
            f"output {spec.output!r} is invalid for {len(bad)} case(s): {shown}{more}",
            cases=[c for c, _ in bad],
            interface=spec.output,
        )
    return SegmentationScores(list(cases), labels, scores)
