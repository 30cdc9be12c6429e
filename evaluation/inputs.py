"""Reading the evaluation container's inputs: metric configuration, ground truth, predictions.

Every problem is raised as an `EvaluationError` subclass naming the cases and interface it
concerns: `InvalidPredictions` (the participant's to fix) or `ConfigurationError` (the
organizer's). Nothing here knows about metrics beyond the configured kind names.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from evaluation.metrics import METRICS

# Compound extensions a case file name may carry; any other name loses its last suffix.
_COMPOUND_SUFFIXES = (".nii.gz", ".tar.gz", ".mha.gz")
# Cases named in an error message; the full list is in the error's `cases`.
NAMED_CASES = 5


# --- errors ---------------------------------------------------------------------------------


class EvaluationError(Exception):
    kind = "error"
    exit_code = 1

    def __init__(
        self, message: str, *, cases: Sequence[str] = (), interface: str | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.cases = list(cases)
        self.interface = interface

    def as_json(self) -> dict[str, Any]:
        return {
            "error": {
                "kind": self.kind,
                "message": self.message,
                "cases": self.cases,
                "interface": self.interface,
            }
        }


class InvalidPredictions(EvaluationError):
    """The submission's predictions cannot be scored: the participant's to fix."""

    kind = "invalid_predictions"
    exit_code = 1


class ConfigurationError(EvaluationError):
    """The metric configuration or ground truth is unusable: the organizer's to fix."""

    kind = "configuration"
    exit_code = 2


def name_cases(cases: Sequence[str]) -> str:
    shown = ", ".join(cases[:NAMED_CASES])
    more = len(cases) - NAMED_CASES
    return f"{shown} and {more} more" if more > 0 else shown


# --- configuration --------------------------------------------------------------------------


@dataclass(frozen=True)
class MetricSpec:
    name: str
    kind: str
    output: str
    label: str
    subset_label: str | None = None
    subset_value: Any = None
    classes: list[Any] | None = None
    higher_is_better: bool = True


@dataclass(frozen=True)
class MetricConfig:
    primary: str
    metrics: list[MetricSpec]
    bootstrap_resamples: int = 1000
    bootstrap_seed: int = 20211
    ci_level: float = 0.95


_SPEC_KEYS = {f for f in MetricSpec.__dataclass_fields__}
_CONFIG_KEYS = {f for f in MetricConfig.__dataclass_fields__}


def parse_config(data: Any) -> MetricConfig:
    """Check a metric configuration as the server's `MetricConfig` would (unknown keys are
    refused: they are typos), and fill the same defaults."""
    if not isinstance(data, dict):
        raise ConfigurationError("metric configuration must be a JSON object")
    unknown = set(data) - _CONFIG_KEYS
    if unknown:
        raise ConfigurationError(f"unknown metric configuration keys: {sorted(unknown)}")
    raw_metrics = data.get("metrics")
    if not isinstance(raw_metrics, list) or not raw_metrics:
        raise ConfigurationError("metric configuration needs a non-empty 'metrics' list")
    specs = [_parse_spec(m) for m in raw_metrics]
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ConfigurationError("metric names must be unique")
    primary = data.get("primary")
    if primary not in names:
        raise ConfigurationError(f"primary metric {primary!r} is not among {names}")
    resamples = data.get("bootstrap_resamples", 1000)
    seed = data.get("bootstrap_seed", 20211)
    level = data.get("ci_level", 0.95)
    if not is_int(resamples) or not 1 <= resamples <= 100_000:
        raise ConfigurationError("bootstrap_resamples must be an integer in 1..100000")
    if not is_int(seed) or seed < 0:
        raise ConfigurationError("bootstrap_seed must be a non-negative integer")
    if not is_number(level) or not 0 < level < 1:
        raise ConfigurationError("ci_level must lie strictly between 0 and 1")
    return MetricConfig(str(primary), specs, int(resamples), int(seed), float(level))


def load_config(path: Path) -> MetricConfig:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ConfigurationError(f"cannot read metric configuration {path}: {e.strerror}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigurationError(f"metric configuration is not valid JSON: {e}") from None
    return parse_config(data)


def _parse_spec(raw: Any) -> MetricSpec:
    if not isinstance(raw, dict):
        raise ConfigurationError("each metric must be a JSON object")
    unknown = set(raw) - _SPEC_KEYS
    if unknown:
        raise ConfigurationError(f"metric {raw.get('name')!r}: unknown keys {sorted(unknown)}")
    for key in ("name", "kind", "output", "label"):
        if not isinstance(raw.get(key), str) or not raw[key]:
            raise ConfigurationError(f"metric {raw.get('name')!r}: {key!r} must be a string")
    kind = raw["kind"]
    if kind not in METRICS:
        raise ConfigurationError(f"metric {raw['name']!r}: unknown kind {kind!r}")
    if (raw.get("subset_label") is None) != (raw.get("subset_value") is None):
        raise ConfigurationError(
            f"metric {raw['name']!r}: subset_label and subset_value go together"
        )
    classes = raw.get("classes")
    if classes is not None and (not isinstance(classes, list) or not classes):
        raise ConfigurationError(f"metric {raw['name']!r}: classes must be a non-empty list")
    higher = raw.get("higher_is_better")
    return MetricSpec(
        name=raw["name"],
        kind=kind,
        output=raw["output"],
        label=raw["label"],
        subset_label=raw.get("subset_label"),
        subset_value=raw.get("subset_value"),
        classes=classes,
        higher_is_better=METRICS[kind].higher_is_better if higher is None else bool(higher),
    )


def is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


# --- ground truth ---------------------------------------------------------------------------


@dataclass(frozen=True)
class GroundTruth:
    columns: list[str]  # the label columns (the case id column excluded)
    cases: list[str]  # in file order
    rows: dict[str, dict[str, str]]  # case -> column -> raw cell
    sha256: str


def load_ground_truth(path: Path) -> GroundTruth:
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ConfigurationError(f"cannot read ground truth {path}: {e.strerror}") from None
    return parse_ground_truth(raw)


def parse_ground_truth(raw: bytes) -> GroundTruth:
    text = raw.decode("utf-8-sig")
    reader = csv.reader(line for line in text.splitlines() if line.strip())
    header = next(reader, None)
    if not header or len(header) < 2:
        raise ConfigurationError("ground truth needs a header: a case id column and labels")
    columns = [h.strip() for h in header[1:]]
    rows: dict[str, dict[str, str]] = {}
    duplicates: list[str] = []
    for n, record in enumerate(reader, start=2):
        if len(record) != len(header):
            raise ConfigurationError(
                f"ground truth line {n} has {len(record)} fields, the header {len(header)}"
            )
        case = record[0].strip()
        if not case:
            raise ConfigurationError(f"ground truth line {n} has no case id")
        if case in rows:
            duplicates.append(case)
        rows[case] = {c: v.strip() for c, v in zip(columns, record[1:], strict=True)}
    if duplicates:
        raise ConfigurationError(
            f"duplicate case ids in the ground truth: {name_cases(duplicates)}", cases=duplicates
        )
    if not rows:
        raise ConfigurationError("ground truth has no cases")
    return GroundTruth(columns, list(rows), rows, hashlib.sha256(raw).hexdigest())


# --- predictions ----------------------------------------------------------------------------


@dataclass(frozen=True)
class OutputImage:
    """An image output (a segmentation mask): the file the job wrote, not a JSON value."""

    path: Path


@dataclass
class Job:
    pk: str
    case: str
    # slug -> JSON value or OutputImage (absent: missing)
    outputs: dict[str, Any] = field(default_factory=dict)


def _interface(item: Any) -> tuple[str | None, str | None]:
    """(slug, relative_path) of an input or output item; `socket` is a newer synonym."""
    if not isinstance(item, dict):
        return None, None
    ref = item.get("interface") or item.get("socket")
    if isinstance(ref, str):
        return ref, None
    if isinstance(ref, dict):
        slug = ref.get("slug")
        rel = ref.get("relative_path")
        return (slug if isinstance(slug, str) else None), (rel if isinstance(rel, str) else None)
    return None, None


def case_id(file_name: str) -> str:
    """The case of an input image: its original file name without directory or extension."""
    name = PurePosixPath(file_name.replace("\\", "/")).name
    for suffix in _COMPOUND_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return PurePosixPath(name).stem if "." in name else name


def _job_case(job: dict[str, Any], pk: str, case_interface: str | None) -> str:
    names: list[tuple[str | None, str]] = []
    for item in job.get("inputs") or []:
        image = item.get("image") if isinstance(item, dict) else None
        if isinstance(image, dict) and isinstance(image.get("name"), str):
            names.append((_interface(item)[0], image["name"]))
    if case_interface is not None:
        names = [n for n in names if n[0] == case_interface]
    if not names:
        where = f" for interface {case_interface!r}" if case_interface else ""
        raise InvalidPredictions(
            f"job {pk} has no input image name{where} to match with the ground truth",
            cases=[pk],
            interface=case_interface,
        )
    # Several image inputs: the first listed names the case (use --case-interface to choose).
    return case_id(names[0][1])


def load_predictions(path: Path, *, case_interface: str | None = None) -> list[Job]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise InvalidPredictions(f"cannot read predictions {path}: {e.strerror}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InvalidPredictions(f"predictions.json is not valid JSON: {e}") from None
    if not isinstance(data, list):
        raise InvalidPredictions("predictions.json must hold a list of jobs")
    jobs: list[Job] = []
    for n, raw in enumerate(data):
        if not isinstance(raw, dict) or not isinstance(raw.get("outputs", []), list):
            raise InvalidPredictions(f"job {n} in predictions.json is not a job object")
        pk = str(raw.get("pk", n))
        job = Job(pk=pk, case=_job_case(raw, pk, case_interface))
        for item in raw.get("outputs") or []:
            slug, _ = _interface(item)
            if slug is None:
                continue
            if slug in job.outputs:
                raise InvalidPredictions(
                    f"job {pk} (case {job.case}) lists output {slug!r} twice",
                    cases=[job.case],
                    interface=slug,
                )
            value = item.get("value")
            if value is None and isinstance(item.get("image"), dict):
                value = _output_image(path.parent, pk, slug, item)
            elif value is None:
                value = _output_file_value(path.parent, pk, slug, item)
            if value is not None:
                job.outputs[slug] = value
        jobs.append(job)
    return jobs


def _output_file_value(root: Path, pk: str, slug: str, item: dict[str, Any]) -> Any:
    """A JSON output not given inline: the file the item names (`"file": "/input/<pk>/
    output/<relative path>"`), else /input/<pk>/output/<relative_path or slug.json>."""
    _, rel = _interface(item)
    ref = item.get("file")
    if isinstance(ref, str) and ref.startswith("/input/"):
        file = root / ref[len("/input/") :]
    else:
        file = root / pk / "output" / (rel or f"{slug}.json")
    if (
        file.suffix != ".json"
        or not file.is_file()
        or not file.resolve().is_relative_to(root.resolve())
    ):
        return None
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        raise InvalidPredictions(
            f"output file {file.relative_to(root)} of job {pk} is not valid JSON",
            cases=[pk],
            interface=slug,
        ) from None


def _output_image(root: Path, pk: str, slug: str, item: dict[str, Any]) -> OutputImage | None:
    """An image output, as grand-challenge lists it: `"image": {"name": ...}` under
    /input/<pk>/output/<relative_path (default images/<slug>)>/<name>. None: missing."""
    _, rel = _interface(item)
    name = item["image"].get("name")
    if not isinstance(name, str) or "/" in name or name in ("", ".", ".."):
        return None
    file = root / pk / "output" / (rel or f"images/{slug}") / name
    if not file.is_file() or not file.resolve().is_relative_to(root.resolve()):
        return None
    return OutputImage(file)


def match_cases(jobs: list[Job], truth: GroundTruth) -> dict[str, Job]:
    """Exactly one job per ground-truth case, or an error naming the offending cases."""
    by_case: dict[str, Job] = {}
    duplicates: list[str] = []
    for job in jobs:
        if job.case in by_case and job.case not in duplicates:
            duplicates.append(job.case)
        by_case[job.case] = job
    if duplicates:
        raise InvalidPredictions(
            f"more than one prediction for {len(duplicates)} case(s): {name_cases(duplicates)}",
            cases=duplicates,
        )
    unknown = [c for c in by_case if c not in truth.rows]
    if unknown:
        raise InvalidPredictions(
            f"predictions for {len(unknown)} case(s) not in the test set: {name_cases(unknown)}",
            cases=unknown,
        )
    missing = [c for c in truth.cases if c not in by_case]
    if missing:
        raise InvalidPredictions(
            f"no prediction for {len(missing)} of {len(truth.cases)} case(s): "
            f"{name_cases(missing)}",
            cases=missing,
        )
    return by_case
