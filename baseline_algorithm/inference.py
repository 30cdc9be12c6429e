"""T2 algorithm entry point (STOIC2021 interfaces).

Single case (the grand-challenge contract): ``/input/images/ct/<uuid>.mha`` →
``/output/probability-covid-19.json`` and ``/output/probability-severe-covid-19.json``,
each a bare JSON number in [0, 1].

Batch mode (heldout extension): ``/input/<case>/images/ct/<uuid>.mha`` →
``/output/<case>/probability-covid-19.json`` and so on, one model load for all cases.

Weights come from ``/opt/algorithm/artifact/`` (``--artifact``), else from the package's
``default_artifact/``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from baseline_algorithm.artifact import ArtifactError, load_artifact
from baseline_algorithm.model import InflatedConvNet3D
from baseline_algorithm.preprocess import (
    PreprocessConfig,
    preprocess,
    read_image,
    read_patient_info,
)

INPUT_SLUG = "ct"
COVID_SLUG = "probability-covid-19"
SEVERE_SLUG = "probability-severe-covid-19"
IMAGE_SUFFIXES = (".mha", ".nii.gz", ".nii")


class InferenceError(RuntimeError):
    """Input the algorithm cannot process; the message names the path."""


@dataclass(frozen=True)
class Job:
    image: Path
    output_dir: Path
    case: str | None  # None in single-case mode


def _images_in(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.is_file() and p.name.endswith(IMAGE_SUFFIXES))


def find_jobs(input_dir: Path, output_dir: Path) -> list[Job]:
    """Single-case layout if ``input/images/ct`` exists, otherwise batch layout."""
    single = input_dir / "images" / INPUT_SLUG
    if single.is_dir():
        images = _images_in(single)
        if len(images) != 1:
            raise InferenceError(
                f"expected exactly one image in {single}, found {len(images)}; "
                f"several cases go in {input_dir}/<case>/images/{INPUT_SLUG}/ (batch mode)"
            )
        return [Job(images[0], output_dir, None)]
    if not input_dir.is_dir():
        raise InferenceError(f"input directory {input_dir} does not exist")
    jobs: list[Job] = []
    for case_dir in sorted(p for p in input_dir.iterdir() if p.is_dir()):
        ct_dir = case_dir / "images" / INPUT_SLUG
        if not ct_dir.is_dir():
            continue
        images = _images_in(ct_dir)
        if len(images) != 1:
            raise InferenceError(f"expected exactly one image in {ct_dir}, found {len(images)}")
        jobs.append(Job(images[0], output_dir / case_dir.name, case_dir.name))
    if not jobs:
        raise InferenceError(
            f"no input image: neither {single}/ nor {input_dir}/<case>/images/{INPUT_SLUG}/ "
            f"holds a {' or '.join(IMAGE_SUFFIXES)} file"
        )
    return jobs


def predict(
    model: InflatedConvNet3D, config: PreprocessConfig, image_path: Path, device: torch.device
) -> tuple[float, float]:
    """(P(COVID-19), P(severe COVID-19)) for one CT file."""
    image = read_image(image_path)
    volume = preprocess(image, config)
    x = torch.from_numpy(volume)[None, None].to(device)
    clinical = torch.tensor([read_patient_info(image).features()], dtype=torch.float32)
    p_covid, p_severe = model.predict_proba(x, clinical.to(device))
    return float(p_covid.item()), float(p_severe.item())


def write_value(path: Path, value: float) -> None:
    """A bare JSON number; NaN and infinities are invalid outputs, so refuse them here."""
    if not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise InferenceError(f"refusing to write {value!r} to {path}: not a probability")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value))


def run(
    input_dir: Path, output_dir: Path, artifact_dir: Path | None, device: torch.device
) -> list[tuple[Job, float, float]]:
    jobs = find_jobs(input_dir, output_dir)
    artifact = load_artifact(artifact_dir)
    model = artifact.build_model(device)
    results = []
    failed: list[str] = []
    for job in jobs:
        start = time.perf_counter()
        try:
            p_covid, p_severe = predict(model, artifact.preprocess_config, job.image, device)
        except (RuntimeError, OSError) as exc:  # SimpleITK raises RuntimeError on bad files
            if job.case is None:
                raise
            # Batch mode: one unreadable case must not cost the others their outputs.
            print(f"{job.case}: failed: {exc}", file=sys.stderr, flush=True)
            failed.append(job.case)
            continue
        write_value(job.output_dir / f"{COVID_SLUG}.json", p_covid)
        write_value(job.output_dir / f"{SEVERE_SLUG}.json", p_severe)
        label = job.case if job.case is not None else job.image.name
        print(
            f"{label}: COVID-19 {p_covid:.4f}, severe {p_severe:.4f} "
            f"({time.perf_counter() - start:.1f} s)",
            flush=True,
        )
        results.append((job, p_covid, p_severe))
    if failed:
        raise InferenceError(f"{len(failed)} of {len(jobs)} case(s) failed: {', '.join(failed)}")
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m baseline_algorithm.inference", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--input", type=Path, default=Path("/input"))
    parser.add_argument("--output", type=Path, default=Path("/output"))
    parser.add_argument(
        "--artifact", type=Path, help="weights directory (default /opt/algorithm/artifact)"
    )
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("inference failed: --device cuda but no CUDA device is visible", file=sys.stderr)
        return 1
    use_cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda" if use_cuda else "cpu")
    try:
        run(args.input, args.output, args.artifact, device)
    except (InferenceError, ArtifactError, FileNotFoundError) as exc:
        print(f"inference failed: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
