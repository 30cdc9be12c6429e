"""docs/bundle.md, generated from the bundle schema (server/challenges/schemas.py): every
field with its type, default, constraints and what it means, and an example bundle.

    python -m server.challenges.reference > docs/bundle.md

A test checks that the file matches this output, so the reference cannot drift from the
code. A field's meaning is its `description`, or else the comment lines above it (and an
inline comment) in schemas.py: the schema keeps documenting itself as it does today.
"""

from __future__ import annotations

import enum
import inspect
import re
import types
import typing
from typing import Any

import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from server.challenges import schemas

EXAMPLE = """\
version: 1
slug: stoic-demo
title: STOIC-style COVID-19 severity
description: Predict severe COVID-19 from a chest CT.
organizers: [alice]
datasets:
  - {slug: public, path: data/public, public: true}
  - {slug: test, path: data/test}
phases:
  - slug: qualification
    title: Qualification
    kind: algorithm
    opens_at: 2026-01-01T00:00:00Z
    closes_at: 2026-06-30T23:59:59Z
    test_dataset: test
    canary_dataset: public
    inputs: [{slug: ct, kind: image, extension: .mha}]
    outputs:
      - {slug: probability-covid-19, kind: json, value_type: number, minimum: 0, maximum: 1}
      - {slug: probability-severe-covid-19, kind: json, value_type: number, minimum: 0,
         maximum: 1}
    limits: {wall_time_s: 600, memory_mb: 8192, gpus: 0}
    rules: {max_submissions: 3, window_hours: 24}
    metrics:
      primary: auc-severity
      ci_level: 0.95
      metrics:
        - {name: auc-severity, kind: auc, output: probability-severe-covid-19,
           label: probSevere, subset_label: probCOVID, subset_value: 1}
        - {name: auc-covid, kind: auc, output: probability-covid-19, label: probCOVID}
"""

MULTITASK_EXAMPLE = """\
version: 1
slug: multitask-demo
title: Two tasks, one algorithm
datasets:
  - {slug: nodules, path: data/nodules}
  - {slug: bone-age, path: data/bone-age}
phases:
  - slug: final
    title: Final
    kind: algorithm
    limits: {wall_time_s: 600, memory_mb: 8192}
    tasks:
      - slug: nodules
        title: Nodule detection
        test_dataset: nodules
        inputs: [{slug: chest-ct, kind: image}]
        outputs: [{slug: probability-nodule, kind: json, minimum: 0, maximum: 1}]
        metrics:
          primary: auc
          metrics: [{name: auc, kind: auc, output: probability-nodule, label: nodule}]
      - slug: bone-age
        title: Bone age
        test_dataset: bone-age
        inputs: [{slug: hand-xray, kind: image}]
        outputs: [{slug: bone-age, kind: json}]
        metrics:
          primary: mae
          metrics: [{name: mae, kind: mae, output: bone-age, label: age}]
"""

_SECTIONS: list[tuple[str, type[BaseModel]]] = [
    ("The bundle (top level)", schemas.ChallengeSpec),
    ("datasets[]", schemas.DatasetSpec),
    ("phases[]", schemas.PhaseSpec),
    ("phases[].inputs[] and phases[].outputs[]", schemas.Interface),
    ("phases[].limits and phases[].training_limits", schemas.Limits),
    ("phases[].rules", schemas.SubmissionRules),
    ("phases[].metrics", schemas.MetricConfig),
    ("phases[].metrics.metrics[]", schemas.MetricSpec),
    ("phases[].evaluation", schemas.EvaluationSpec),
    ("phases[].evaluation.columns.*", schemas.EvaluationColumn),
    ("phases[].tasks[]", schemas.TaskSpec),
]
# Meanings of fields that carry neither a description nor a comment in schemas.py; the
# test requires one for every field, so a new field is documented when it is added.
_MEANINGS: dict[tuple[str, str], str] = {
    ("ChallengeSpec", "slug"): "the challenge's address (`heldout phases SLUG`); never changes",
    ("ChallengeSpec", "title"): "shown in listings and on the web pages",
    ("ChallengeSpec", "description"): "free text shown on the challenge page",
    ("ChallengeSpec", "datasets"): "the case sets the phases refer to by slug",
    ("ChallengeSpec", "phases"): "the submission phases, each with its own data and rules",
    ("DatasetSpec", "title"): "a human name for the dataset",
    ("DatasetSpec", "public"): "public cases may be shown to participants (canary runs, "
    "feedback rounds); private ones never leave the server",
    ("PhaseSpec", "title"): "shown in listings",
    ("PhaseSpec", "kind"): "`algorithm`: participants upload a `docker save` archive; "
    "`codebase`: a git repository the platform builds and trains",
    ("PhaseSpec", "opens_at"): "submissions are refused before this time (unset: open now)",
    ("PhaseSpec", "closes_at"): "submissions are refused from this time on (unset: never)",
    ("PhaseSpec", "inputs"): "what each case gives the algorithm under /input",
    ("PhaseSpec", "outputs"): "what the algorithm must write under /output, checked per case",
    ("PhaseSpec", "limits"): "resources of each algorithm (inference) run",
    ("PhaseSpec", "training_limits"): "resources of the training run (codebase phases); "
    "unset: `limits`",
    ("PhaseSpec", "rules"): "how often a team may submit",
    ("PhaseSpec", "participants_see_logs"): "participants read their containers' logs "
    "(otherwise only classified failure reasons)",
    ("PhaseSpec", "review_successful_logs"): "held logs of successful runs wait in the "
    "organizers' review queue too (otherwise only failed runs' do; any held log can still "
    "be released)",
    ("PhaseSpec", "feedback_round"): "train on a public dataset and hand the logs back",
    ("PhaseSpec", "batch_mode"): "one container run sees all cases at once instead of one "
    "run per case",
    ("PhaseSpec", "metrics"): "how heldout's built-in evaluator scores and ranks outputs",
    ("PhaseSpec", "evaluation"): "instead of `metrics`: the organizers' own evaluation "
    "image (docs/contracts.md, the evaluation container)",
    ("EvaluationSpec", "higher_is_better"): "the score's direction for ranking",
    ("EvaluationSpec", "columns"): "extra board columns: name -> JSON path (or an object "
    "with `path`, `case_key`, `higher_is_better`)",
    ("EvaluationColumn", "path"): "JSON path of the column's value in metrics.json",
    ("EvaluationColumn", "higher_is_better"): "the column's direction",
    ("PhaseSpec", "inference_dir"): "codebase phases: the inference Dockerfile's directory",
    ("Interface", "slug"): "the interface's name: /input/images/<slug>/ or /output/<slug>",
    ("Interface", "kind"): "`image` (an input image, or an output image such as a mask), "
    "`json` (a bare JSON value) or `file`",
    ("Interface", "minimum"): "json numbers: the smallest value allowed",
    ("Interface", "maximum"): "json numbers: the largest value allowed",
    ("Interface", "choices"): "json: the only values allowed",
    ("Interface", "relative_path"): "where the file (json, file) or the one-file directory "
    "(image) lies under /input or /output; unset: `images/<slug>`, `<slug>.json`, "
    "`<slug><ext>`",
    ("Limits", "wall_time_s"): "seconds before the run is stopped (timeout)",
    ("Limits", "memory_mb"): "memory, swap included",
    ("Limits", "cpus"): "CPU cores",
    ("Limits", "gpus"): "GPUs (0: none)",
    ("Limits", "pids"): "processes and threads",
    ("Limits", "output_mb"): "size of /output",
    ("Limits", "tmp_mb"): "size of /tmp",
    ("Limits", "scratch_mb"): "size of /scratch",
    ("Limits", "shm_mb"): "size of /dev/shm",
    ("SubmissionRules", "window_hours"): "the rolling window `max_submissions` counts in",
    ("SubmissionRules", "single_shot"): "one standing submission per team",
    ("SubmissionRules", "invite_only"): "only teams the organizers invited may submit",
    ("SubmissionRules", "allow_renounce"): "single-shot phases: a team may renounce its "
    "submission to submit again",
    ("MetricSpec", "name"): "the metric's name on the leaderboard",
    ("MetricSpec", "kind"): "how it is computed",
    ("MetricSpec", "subset_value"): "see `subset_label`",
    ("MetricSpec", "higher_is_better"): "ranking direction; unset: true except for `mae`, "
    "`hd95`, `assd`",
    ("MetricConfig", "primary"): "the metric the leaderboard ranks on",
    ("MetricConfig", "metrics"): "every metric computed",
    ("MetricConfig", "bootstrap_resamples"): "bootstrap resamples for confidence intervals",
    ("MetricConfig", "bootstrap_seed"): "seed of the bootstrap (reproducible intervals)",
    ("MetricConfig", "ci_level"): "confidence level of the intervals (0.95: 95% CI)",
    ("TaskSpec", "slug"): "the task's name: its board is `.../phases/<phase>/tasks/<slug>/"
    "leaderboard`; its runs are the phase's `<phase>--<slug>` (never submitted to directly)",
    ("TaskSpec", "title"): "shown on the task's board (unset: the slug)",
    ("TaskSpec", "inputs"): "what each of the task's cases gives the algorithm under /input; "
    "no two tasks of a phase may give the same set (the algorithm tells its task by them)",
    ("TaskSpec", "outputs"): "what the algorithm must write for the task's cases",
    ("TaskSpec", "metrics"): "how the task's outputs are scored and ranked on its board",
}
_CONSTRAINTS = {
    "ge": "≥ {}",
    "gt": "> {}",
    "le": "≤ {}",
    "lt": "< {}",
    "min_length": "at least {}",
    "max_length": "at most {}",
    "pattern": "matches `{}`",
}


def _type(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        parts = [_type(a) for a in args if a is not type(None)]
        return " or ".join(parts) + (" or null" if type(None) in args else "")
    if origin is typing.Annotated:
        return _type(args[0])
    if origin is typing.Literal:
        return " or ".join(f"`{a}`" for a in args)
    if origin is list:
        return f"list of {_type(args[0])}" if args else "list"
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return " or ".join(f"`{m.value}`" for m in annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "mapping (below)"
    if annotation is Any:
        return "any"
    name = getattr(annotation, "__name__", str(annotation))
    return {"str": "string", "int": "integer", "float": "number", "bool": "boolean",
            "datetime": "date-time (ISO 8601; UTC if no zone)"}.get(name, name)  # fmt: skip


def _default(info: FieldInfo) -> str:
    if info.is_required():
        return "required"
    if info.default_factory is not None:
        value = info.default_factory()  # type: ignore[call-arg]
        if isinstance(value, BaseModel):
            return "all defaults"
    else:
        value = info.default
    if value is PydanticUndefined:
        return "required"
    if isinstance(value, enum.Enum):
        value = value.value
    return f"`{yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}`"


def _constraints(info: FieldInfo) -> list[str]:
    out: list[str] = []
    for meta in info.metadata:
        for key, template in _CONSTRAINTS.items():
            value = getattr(meta, key, None)
            if value is not None:
                out.append(template.format(value))
    return out


def _comments(model: type[BaseModel]) -> dict[str, str]:
    """The comment lines above each field, and its inline comment, in the class source."""
    notes: dict[str, str] = {}
    pending: list[str] = []
    for line in inspect.getsource(model).splitlines()[1:]:
        stripped = line.strip()
        if stripped.startswith("#"):
            pending.append(stripped.lstrip("# ").strip())
            continue
        field = re.match(r"^    ([a-z_]+): [^=]", line)
        if field:
            inline = line.split("  # ", 1)[1].strip() if "  # " in line else ""
            notes[field.group(1)] = " ".join([*pending, inline]).strip()
        pending = []
    return notes


def meaning_of(model: type[BaseModel], name: str) -> str:
    info = model.model_fields[name]
    return (
        info.description or _comments(model).get(name) or _MEANINGS.get((model.__name__, name), "")
    )


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render() -> str:
    lines = [
        "# Challenge bundle reference",
        "",
        "<!-- Generated by `python -m server.challenges.reference > docs/bundle.md` from",
        "     server/challenges/schemas.py; a test fails when they differ. Do not edit. -->",
        "",
        "A bundle is one YAML file that `heldout challenge apply BUNDLE` sends to the server;",
        "applying it twice changes nothing. Unknown keys are refused by name (a typo such as",
        "`memroy_mb` is an error, not ignored). Dataset paths are relative to the bundle file.",
        "",
        "| field | type | default | rules | meaning |",
        "|---|---|---|---|---|",
        "| `version` | `1` | `1` |  | the bundle format's version |",
    ]
    for n, (title, model) in enumerate(_SECTIONS):
        if n:
            lines += ["", f"## {title}", ""]
            doc = inspect.getdoc(model)
            if doc and model.__doc__ is not None and "__doc__" in model.__dict__:
                lines += [doc, ""]
            lines += ["| field | type | default | rules | meaning |", "|---|---|---|---|---|"]
        for name, info in model.model_fields.items():
            meaning = meaning_of(model, name)
            lines.append(
                f"| `{name}` | {_cell(_type(info.annotation))} | {_cell(_default(info))} "
                f"| {_cell('; '.join(_constraints(info)))} | {_cell(meaning)} |"
            )
    lines += ["", "## Example", "", "```yaml", EXAMPLE.rstrip(), "```", ""]
    lines += [
        "## Example: a multi-task phase",
        "",
        "Each task has its own test set, interfaces and metrics (none on the phase itself);",
        "one submission runs on every task's cases and is charged once; each task has its",
        "board and the phase a consensus board (docs/contracts.md, README).",
        "",
        "```yaml",
        MULTITASK_EXAMPLE.rstrip(),
        "```",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover
    print(render(), end="")
