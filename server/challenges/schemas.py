"""Challenge, phase and bundle schemas: the declarative shape organizers write in YAML.

These are plain pydantic models with no database or HTTP knowledge, so the worker and the
CLI can import them to validate outputs and bundles exactly as the server does.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from server.codebases.baseimages import parse_allowed

SLUG_RE = r"^[a-z0-9][a-z0-9-]{0,62}$"
Slug = Annotated[str, Field(pattern=SLUG_RE, description="lower-case letters, digits, '-'")]


class StrictModel(BaseModel):
    # Unknown keys in a bundle are almost always typos ("memroy_mb"): refuse them by name.
    model_config = ConfigDict(extra="forbid")


class PhaseKind(StrEnum):
    algorithm = "algorithm"  # T2: a Docker image archive
    codebase = "codebase"  # T3: a git repository at a ref


class InterfaceKind(StrEnum):
    # input: /input/images/<slug>/<uuid><ext>; output: one file in /output/images/<slug>/
    # (grand-challenge's newer layout) or /output/<slug><ext> (heldout's first layout)
    image = "image"
    json = "json"  # /output/<slug>.json holding a bare JSON value
    file = "file"  # /output/<slug><ext>


# A relative POSIX path of plain names: no absolute path, no '.' or '..', no backslash.
RELATIVE_PATH_RE = r"^[A-Za-z0-9_][A-Za-z0-9_.-]*(/[A-Za-z0-9_][A-Za-z0-9_.-]*)*$"


class JsonValueType(StrEnum):
    number = "number"
    integer = "integer"
    boolean = "boolean"
    string = "string"
    object = "object"
    array = "array"


class Interface(StrictModel):
    slug: Slug
    kind: InterfaceKind
    # image/file: the file extension including the dot (".mha", ".nii.gz").
    extension: str | None = None
    # json: the type of the bare value and its allowed range or choices.
    value_type: JsonValueType = JsonValueType.number
    minimum: float | None = None
    maximum: float | None = None
    choices: list[Any] | None = None
    # Where the container finds or writes it, relative to /input or /output; grand-challenge
    # keeps this apart from the slug. Unset: derived from the slug (see `output_relpath`).
    # image: a directory holding exactly one file; json and file: the file itself.
    relative_path: str | None = Field(None, max_length=255)

    @field_validator("relative_path")
    @classmethod
    def _relative(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if value.startswith("/") or not re.fullmatch(RELATIVE_PATH_RE, value):
            raise ValueError(
                "relative_path must be a relative path of plain names (letters, digits, "
                "'_', '.', '-'), without a leading '/', '.' or '..' parts"
            )
        if any(part in (".", "..") for part in value.split("/")):
            raise ValueError("relative_path must not hold '.' or '..' parts")
        return value

    @model_validator(mode="after")
    def _check(self) -> Interface:
        if self.kind in (InterfaceKind.image, InterfaceKind.file):
            if not self.extension:
                self.extension = ".mha" if self.kind is InterfaceKind.image else None
            if not self.extension or not re.fullmatch(r"(\.[a-z0-9]+)+", self.extension):
                raise ValueError(f"interface {self.slug!r}: extension must look like '.mha'")
        if self.minimum is not None and self.maximum is not None and self.minimum > self.maximum:
            raise ValueError(f"interface {self.slug!r}: minimum is above maximum")
        rel = self.relative_path
        if rel is not None and self.kind is InterfaceKind.json and not rel.endswith(".json"):
            raise ValueError(f"interface {self.slug!r}: a json relative_path must end in .json")
        if rel is not None and self.kind is InterfaceKind.file:
            assert self.extension is not None
            if not rel.endswith(self.extension):
                raise ValueError(
                    f"interface {self.slug!r}: relative_path must end in {self.extension}"
                )
        return self

    def output_relpath(self) -> str:
        """Where an algorithm writes this output, relative to /output: the file (json,
        file) or the directory holding the one file (image)."""
        if self.relative_path is not None:
            return self.relative_path
        if self.kind is InterfaceKind.json:
            return f"{self.slug}.json"
        if self.kind is InterfaceKind.image:
            return f"images/{self.slug}"
        return f"{self.slug}{self.extension}"

    def legacy_output_relpath(self) -> str | None:
        """heldout's first layout of an image output, `<slug><ext>`, still accepted when no
        relative_path is declared."""
        if self.kind is InterfaceKind.image and self.relative_path is None:
            return f"{self.slug}{self.extension}"
        return None

    def input_reldir(self) -> str:
        """Where the platform places this input, relative to /input."""
        return self.relative_path or f"images/{self.slug}"


class Limits(StrictModel):
    wall_time_s: int = Field(600, ge=1, le=60 * 60 * 24 * 14)
    memory_mb: int = Field(4096, ge=32)
    cpus: float = Field(1.0, gt=0, le=256)
    gpus: int = Field(0, ge=0, le=16)
    pids: int = Field(256, ge=16, le=65536)
    output_mb: int = Field(256, ge=1)
    tmp_mb: int = Field(256, ge=1)
    scratch_mb: int = Field(1024, ge=1)
    shm_mb: int = Field(128, ge=1)


class SubmissionRules(StrictModel):
    max_submissions: int | None = Field(None, ge=1, description="per team per rolling window")
    window_hours: float = Field(24.0, gt=0)
    cooldown_hours: float = Field(0.0, ge=0, description="minimum time between submissions")
    cooldown_penalty_hours: float = Field(
        0.0, ge=0, description="extra wait imposed on a team that submits during its cooldown"
    )
    single_shot: bool = False
    invite_only: bool = False
    allow_renounce: bool = False


class MetricKind(StrEnum):
    auc = "auc"
    macro_auroc = "macro_auroc"
    cohen_kappa = "cohen_kappa"
    quadratic_kappa = "quadratic_kappa"
    mae = "mae"
    pearson = "pearson"
    accuracy = "accuracy"
    # Segmentation, per label of an image output against a ground-truth mask
    # (evaluation/segmentation.py): the mean over cases of the per-case value.
    dice = "dice"
    hd95 = "hd95"
    assd = "assd"
    # A value the organizer's evaluation image computed (PhaseSpec.evaluation); never
    # written in a bundle's `metrics`.
    external = "external"


LOWER_IS_BETTER = frozenset({MetricKind.mae, MetricKind.hd95, MetricKind.assd})
SEGMENTATION_KINDS = frozenset({MetricKind.dice, MetricKind.hd95, MetricKind.assd})


class MetricSpec(StrictModel):
    name: Slug
    kind: MetricKind
    output: Slug = Field(description="the output interface holding the prediction")
    label: str = Field(
        description="the ground-truth column it is compared with; segmentation metrics: "
        "the ground-truth mask folder"
    )
    # Restrict to cases whose `subset_label` column equals `subset_value` (STOIC: severity
    # among PCR-positive cases).
    subset_label: str | None = None
    subset_value: Any = None
    # For macro AUROC: the label columns (multi-label) or class values (multi-class).
    # Segmentation: the label values scored (integers > 0), each on its own and averaged.
    classes: list[Any] | None = None
    higher_is_better: bool | None = None

    @model_validator(mode="after")
    def _check(self) -> MetricSpec:
        if (self.subset_label is None) != (self.subset_value is None):
            raise ValueError(f"metric {self.name!r}: subset_label and subset_value go together")
        if self.higher_is_better is None:
            self.higher_is_better = self.kind not in LOWER_IS_BETTER
        if self.kind in SEGMENTATION_KINDS:
            labels = self.classes
            if not labels or not all(
                isinstance(c, int) and not isinstance(c, bool) and c > 0 for c in labels
            ):
                raise ValueError(
                    f"metric {self.name!r}: a {self.kind.value} metric needs `classes`, "
                    "the mask label values it scores (integers above 0)"
                )
            if len(set(labels)) != len(labels):
                raise ValueError(f"metric {self.name!r}: classes repeat a label")
        return self


class MetricConfig(StrictModel):
    primary: Slug
    metrics: list[MetricSpec] = Field(min_length=1)
    bootstrap_resamples: int = Field(1000, ge=100, le=100_000)
    bootstrap_seed: int = 20211
    ci_level: float = Field(0.95, gt=0, lt=1)

    @model_validator(mode="after")
    def _check(self) -> MetricConfig:
        names = [m.name for m in self.metrics]
        if len(set(names)) != len(names):
            raise ValueError("metric names must be unique")
        if self.primary not in names:
            raise ValueError(f"primary metric {self.primary!r} is not among {names}")
        return self


# A JSON path into the evaluation's metrics.json: keys joined by dots, a list index as a
# number ("aggregates.dice.mean", "results.0.score").
JSON_PATH_RE = r"^[^.\s]+(\.[^.\s]+)*$"
JsonPath = Annotated[str, Field(pattern=JSON_PATH_RE, max_length=300)]
# An uploaded file: its upload key (as `heldout upload` prints it) or its sha256 digest.
UploadRef = Annotated[str, Field(pattern=r"^(sha256:[0-9a-f]{64}|[0-9a-f-]{36})$")]


class EvaluationColumn(StrictModel):
    path: JsonPath
    # Where this column's per-case values sit under `per_case`; by default the key before
    # the statistic ("aggregates.dice.mean" -> "dice").
    case_key: str | None = None
    higher_is_better: bool = True

    def per_case_key(self) -> str:
        if self.case_key:
            return self.case_key
        parts = self.path.split(".")
        return parts[-2] if len(parts) >= 3 else parts[-1]


class EvaluationSpec(StrictModel):
    """The organizer's evaluation image (grand-challenge's evaluation container): it reads
    /input/predictions.json and writes /output/metrics.json; the board reads its score and
    extra columns there by JSON path (worker/evaluation_container.py)."""

    image: UploadRef = Field(description="the uploaded `docker save` archive of the image")
    ground_truth: UploadRef | None = Field(
        None, description="an uploaded tarball, extracted beside the phase's labels.csv"
    )
    name: Slug = Field("score", description="the board's name for the score")
    score: JsonPath = Field(description="JSON path of the score in metrics.json")
    higher_is_better: bool = True
    case_key: str | None = Field(None, description="the score's key under per_case")
    columns: dict[Slug, JsonPath | EvaluationColumn] = Field(default_factory=dict)
    per_case: JsonPath | None = Field(
        None, description="JSON path of the per-case values: bootstrap CIs of their mean"
    )
    limits: Limits | None = Field(None, description="default: the phase's limits, no GPU")

    @model_validator(mode="after")
    def _check(self) -> EvaluationSpec:
        if self.name in self.columns:
            raise ValueError(f"evaluation column {self.name!r} has the score's name")
        return self

    def all_columns(self) -> dict[str, EvaluationColumn]:
        """The score first, then the extra columns, each with its path."""
        score = EvaluationColumn(
            path=self.score, case_key=self.case_key, higher_is_better=self.higher_is_better
        )
        out = {self.name: score}
        for name, col in self.columns.items():
            out[name] = col if isinstance(col, EvaluationColumn) else EvaluationColumn(path=col)
        return out


class TaskSpec(StrictModel):
    """One task of a multi-task phase (AUC23-style): its own test cases, interfaces and
    metrics. Every submission to the phase runs on every task's cases; the container of a
    task's case sees that task's inputs only (listed in /input/inputs.json) and writes that
    task's outputs. Each task has its own board; the phase adds a consensus board."""

    slug: Slug
    title: str = Field("", max_length=200)
    test_dataset: str = Field(description="dataset slug")
    inputs: list[Interface] = Field(min_length=1)
    outputs: list[Interface] = Field(min_length=1)
    metrics: MetricConfig

    @model_validator(mode="after")
    def _check(self) -> TaskSpec:
        _check_interfaces(f"task {self.slug!r}", self.inputs, self.outputs, self.metrics)
        return self


def _check_interfaces(
    what: str, inputs: list[Interface], outputs: list[Interface], metrics: MetricConfig | None
) -> None:
    for group, name in ((inputs, "inputs"), (outputs, "outputs")):
        slugs = [i.slug for i in group]
        if len(set(slugs)) != len(slugs):
            raise ValueError(f"{what}: {name} slugs must be unique")
    if any(i.kind is not InterfaceKind.image for i in inputs):
        raise ValueError(f"{what}: inputs must be image interfaces")
    out_slugs = {o.slug for o in outputs}
    for m in metrics.metrics if metrics else []:  # None: an organizer's evaluation image
        if m.kind is MetricKind.external:
            raise ValueError(
                f"{what}: metric {m.name!r}: kind 'external' is only for an organizer's "
                "evaluation image (the phase's `evaluation`)"
            )
        if m.output not in out_slugs:
            raise ValueError(
                f"{what}: metric {m.name!r} reads output {m.output!r}, "
                f"which is not among the outputs {sorted(out_slugs)}"
            )
        kind = {o.slug: o.kind for o in outputs}[m.output]
        if m.kind in SEGMENTATION_KINDS and kind is not InterfaceKind.image:
            raise ValueError(
                f"{what}: segmentation metric {m.name!r} needs an image "
                f"output, and {m.output!r} is a {kind.value} output"
            )
    for group, name, rel in (
        (inputs, "inputs", Interface.input_reldir),
        (outputs, "outputs", Interface.output_relpath),
    ):
        paths = [rel(i) for i in group]
        for a in paths:
            if sum(b == a or b.startswith(a + "/") for b in paths) > 1:
                raise ValueError(
                    f"{what}: {name} share the relative path {a!r} (one is the other, or inside it)"
                )


# What a multi-task phase declares per task, not on the phase.
TASK_OWNED = ("inputs", "outputs", "metrics")

# The phase a task runs as: "<phase>--<task>" (never listed, never submitted to).
TASK_SEPARATOR = "--"


def task_phase_slug(phase_slug: str, task_slug: str) -> str:
    return f"{phase_slug}{TASK_SEPARATOR}{task_slug}"


class PhaseSpec(StrictModel):
    slug: Slug
    title: str = Field(min_length=1, max_length=200)
    kind: PhaseKind
    opens_at: datetime | None = None
    closes_at: datetime | None = None
    inputs: list[Interface] = Field(min_length=1)
    outputs: list[Interface] = Field(min_length=1)
    limits: Limits = Field(default_factory=Limits)
    training_limits: Limits | None = None
    rules: SubmissionRules = Field(default_factory=SubmissionRules)
    participants_see_logs: bool = False
    # Held logs of successful runs enter the organizers' review queue only when asked.
    review_successful_logs: bool = False
    feedback_round: bool = False
    batch_mode: bool = False
    test_dataset: str | None = Field(None, description="dataset slug")
    training_dataset: str | None = Field(None, description="dataset slug (codebase phases)")
    canary_dataset: str | None = Field(None, description="public cases for the canary run")
    # The built-in evaluator's metrics, or the organizer's evaluation image: one of the two.
    metrics: MetricConfig | None = None
    evaluation: EvaluationSpec | None = None
    # Public/private split (shake-up): the share of test cases held back as the private
    # part. A fraction, not a label column, so the bundle (which organizers share) never
    # says which cases are private: each case falls in a part by a keyed hash of its name
    # under the installation's secret (server/leaderboards/split.py). Until closes_at the
    # board ranks on the public part only; from closes_at on, on the private part.
    private_fraction: float | None = Field(None, gt=0.0, lt=1.0)
    # Codebase phases: where the two Dockerfiles live inside the repository.
    training_dir: str = Field("training", pattern=r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$")
    inference_dir: str = Field("inference", pattern=r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$")
    # Multi-task phases: the tasks, each with its own test set, interfaces and metrics
    # (then the phase's own inputs, outputs, metrics and test_dataset are not given: the
    # phase takes its first task's interfaces and metrics for what reads them).
    tasks: list[TaskSpec] | None = None
    # Container runtime of this phase's algorithm and training runs; None: the
    # installation's HELDOUT_CONTAINER_RUNTIME. "runsc" (gVisor) is for CPU phases only.
    runtime: Literal["runc", "runsc"] | None = None

    # Narrows the installation's HELDOUT_ALLOWED_BASE_IMAGES for this phase: a base must be
    # allowed by both (each entry a name, optionally pinned with @sha256:<image id>).
    allowed_base_images: list[str] | None = None

    @field_validator("allowed_base_images")
    @classmethod
    def _base_images(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else [str(ref) for ref in parse_allowed(value)]

    @field_validator("training_dir", "inference_dir")
    @classmethod
    def _inside_repo(cls, value: str) -> str:
        if any(part in (".", "..") for part in value.split("/")):
            raise ValueError("must be a directory inside the repository, without '.' or '..'")
        return value

    @field_validator("opens_at", "closes_at")
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        # A bundle's naive times are read as UTC, so comparisons never mix naive and aware.
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value

    @model_validator(mode="before")
    @classmethod
    def _from_first_task(cls, data: Any) -> Any:
        # A multi-task phase declares its interfaces, metrics and test set per task only;
        # the phase takes its first task's for what reads a phase's (`stored` leaves them
        # out again).
        if isinstance(data, dict) and data.get("tasks"):
            own = [k for k in (*TASK_OWNED, "test_dataset") if data.get(k) is not None]
            if own:
                raise ValueError(
                    f"a phase with tasks declares {', '.join(own)} per task, not on the phase"
                )
            first = data["tasks"][0]
            if isinstance(first, dict):
                data = dict(data)
                for key in TASK_OWNED:
                    data[key] = first.get(key)
        return data

    def stored(self) -> dict[str, Any]:
        """The spec as the database keeps it: a multi-task phase without what its tasks own."""
        # A phase without tasks is stored exactly as before tasks existed.
        return self.model_dump(mode="json", exclude=set(TASK_OWNED) if self.tasks else {"tasks"})

    @model_validator(mode="after")
    def _check(self) -> PhaseSpec:
        if self.opens_at and self.closes_at and self.opens_at >= self.closes_at:
            raise ValueError(f"phase {self.slug!r}: opens_at must be before closes_at")
        if (self.metrics is None) == (self.evaluation is None):
            raise ValueError(
                f"phase {self.slug!r}: give either metrics (the built-in evaluator) or "
                "evaluation (an organizer's evaluation image), not both or neither"
            )
        if self.evaluation is not None and self.private_fraction is not None:
            # The split (server/leaderboards/split.py) scores each part from the built-in
            # evaluator's per-case values; an image's metrics.json holds aggregates only.
            raise ValueError(
                f"phase {self.slug!r}: a phase scored by an organizer's evaluation image "
                "cannot have a private_fraction: the image's score is an aggregate over all "
                "cases, and the board would need it computed on the public and private part "
                "separately (one evaluation run per part), which the platform does not do "
                "yet; use the built-in metrics, or drop private_fraction"
            )
        if self.evaluation is not None and self.tasks:
            raise ValueError(
                f"phase {self.slug!r}: a multi-task phase is scored by each task's built-in "
                "metrics; an organizer's evaluation image per task is not supported yet"
            )
        _check_interfaces(f"phase {self.slug!r}", self.inputs, self.outputs, self.metrics)
        if self.tasks is not None:
            self._check_tasks(self.tasks)
        gpus = max(self.limits.gpus, self.training_limits.gpus if self.training_limits else 0)
        if self.runtime == "runsc" and gpus:
            raise ValueError(
                f"phase {self.slug!r}: runtime 'runsc' (gVisor) cannot run GPU containers, and "
                f"this phase asks for {gpus} GPU(s); use runtime 'runc' or set gpus to 0"
            )
        if self.kind is PhaseKind.codebase and not self.training_dataset:
            raise ValueError(f"phase {self.slug!r}: a codebase phase needs a training_dataset")
        return self

    def board_metrics(self) -> MetricConfig:
        """The metrics the board shows and ranks: the built-in evaluator's, or the columns
        of the organizer's evaluation image (kind `external`, the score primary)."""
        if self.metrics is not None:
            return self.metrics
        assert self.evaluation is not None
        return MetricConfig(
            primary=self.evaluation.name,
            metrics=[
                MetricSpec(
                    name=name,
                    kind=MetricKind.external,
                    output=self.outputs[0].slug,
                    label=col.path,
                    higher_is_better=col.higher_is_better,
                )
                for name, col in self.evaluation.all_columns().items()
            ],
        )

    def _check_tasks(self, tasks: list[TaskSpec]) -> None:
        where = f"phase {self.slug!r}"
        if len(tasks) < 2:
            raise ValueError(f"{where}: a multi-task phase needs at least two tasks")
        slugs = [t.slug for t in tasks]
        if len(set(slugs)) != len(slugs):
            raise ValueError(f"{where}: task slugs must be unique")
        if self.kind is not PhaseKind.algorithm:
            raise ValueError(f"{where}: tasks are supported on algorithm (T2) phases only")
        if self.canary_dataset:
            raise ValueError(f"{where}: a multi-task phase has no canary_dataset (yet)")
        # The container tells its task by the inputs it is given (grand-challenge's
        # algorithm interfaces): no two tasks may give the same set.
        seen: dict[frozenset[str], str] = {}
        for t in tasks:
            key = frozenset(i.slug for i in t.inputs)
            if key in seen:
                raise ValueError(
                    f"{where}: tasks {seen[key]!r} and {t.slug!r} have the same inputs "
                    f"{sorted(key)}; the algorithm could not tell them apart"
                )
            seen[key] = t.slug
            if len(task_phase_slug(self.slug, t.slug)) > 63:
                raise ValueError(
                    f"{where}: task {t.slug!r}: phase and task slugs together must be at most "
                    "61 characters"
                )

    def task_phases(self) -> list[PhaseSpec]:
        """The phase each task runs as: this phase's limits and rules, the task's test set,
        interfaces and metrics, slug `<phase>--<task>`."""
        out = []
        for t in self.tasks or []:
            data = self.model_dump(mode="json", exclude={"tasks"})
            data.update(
                slug=task_phase_slug(self.slug, t.slug),
                title=f"{self.title}: {t.title or t.slug}"[:200],
                test_dataset=t.test_dataset,
                inputs=[i.model_dump(mode="json") for i in t.inputs],
                outputs=[o.model_dump(mode="json") for o in t.outputs],
                metrics=t.metrics.model_dump(mode="json"),
            )
            out.append(PhaseSpec.model_validate(data))
        return out


class DatasetSpec(StrictModel):
    slug: Slug
    title: str = ""
    # A directory or archive (relative to the bundle file) holding the cases.
    path: str
    public: bool = False


class ChallengeSpec(StrictModel):
    """A whole challenge as a bundle file declares it (`heldout challenge apply`)."""

    slug: Slug
    title: str = Field(min_length=1, max_length=200)
    description: str = ""
    organizers: list[str] = Field(default_factory=list, description="usernames")
    datasets: list[DatasetSpec] = Field(default_factory=list)
    phases: list[PhaseSpec] = Field(min_length=1)

    @model_validator(mode="after")
    def _check(self) -> ChallengeSpec:
        ds = {d.slug for d in self.datasets}
        for p in self.phases:
            tasks = [t.test_dataset for t in p.tasks or []]
            for ref in (p.test_dataset, p.training_dataset, p.canary_dataset, *tasks):
                if ref is not None and ref not in ds:
                    raise ValueError(
                        f"phase {p.slug!r} names dataset {ref!r}, which the bundle does not declare"
                    )
        public = {d.slug for d in self.datasets if d.public}
        for p in self.phases:
            # Canary runs and feedback rounds hand logs back: their data must be public.
            if p.canary_dataset and p.canary_dataset not in public:
                raise ValueError(
                    f"phase {p.slug!r}: canary dataset {p.canary_dataset!r} must be public"
                )
            if p.feedback_round and p.training_dataset not in public:
                raise ValueError(
                    f"phase {p.slug!r}: a feedback round trains on a public dataset; "
                    f"{p.training_dataset!r} is not marked public"
                )
        slugs = [p.slug for p in self.phases]
        if len(set(slugs)) != len(slugs):
            raise ValueError("phase slugs must be unique")
        for p in self.phases:
            for t in p.tasks or []:
                if task_phase_slug(p.slug, t.slug) in slugs:
                    raise ValueError(
                        f"phase slug {task_phase_slug(p.slug, t.slug)!r} is taken by a task "
                        f"of phase {p.slug!r}"
                    )
        return self


BundleVersion = Literal[1]
