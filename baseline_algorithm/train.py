"""T3 training entry point (STOIC2021 final-phase layout).

Reads ``/input/data/mha/<PatientID>.mha`` and ``/input/metadata/reference.csv`` (columns
``PatientID,probCOVID,probSevere``, extra columns such as age and sex are used when the
image header lacks them), caches preprocessed cubes under ``/scratch`` and writes
``model.pt`` + ``config.json`` to ``/output``. Every path can be overridden::

    python -m baseline_algorithm.train --input DIR --output DIR --scratch DIR \\
        --epochs 10 --cube 48 --seed 0 --device auto
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import os
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from baseline_algorithm.artifact import save_artifact
from baseline_algorithm.model import InflatedConvNet3D, ModelConfig, count_parameters
from baseline_algorithm.preprocess import (
    PatientInfo,
    PreprocessConfig,
    parse_age,
    parse_sex,
    preprocess,
    read_image,
    read_patient_info_from_file,
)

REQUIRED_COLUMNS = ("PatientID", "probCOVID", "probSevere")


class TrainingError(RuntimeError):
    """Input that cannot be trained on; the message names the file or case."""


@dataclass(frozen=True)
class Case:
    patient_id: str
    covid: float
    severe: float
    image: Path
    info: PatientInfo


@dataclass(frozen=True)
class EpochStats:
    epoch: int
    loss: float
    covid_loss: float
    severe_loss: float
    seconds: float


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise TrainingError("--device cuda was asked for but no CUDA device is visible")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    # warn_only: a few CUDA kernels have no deterministic variant; CPU runs are exact.
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False


def _column(row: dict[str, str], *names: str) -> str | None:
    lowered = {k.strip().lower(): v for k, v in row.items() if k is not None}
    for name in names:
        value = lowered.get(name.lower())
        if value not in (None, ""):
            return value
    return None


def read_cases(data_dir: Path, reference: Path) -> list[Case]:
    """Rows of reference.csv joined with their images; the image header's age/sex win over
    CSV columns because inference only ever sees the header."""
    if not reference.is_file():
        raise TrainingError(f"no reference file at {reference}")
    with reference.open(newline="") as handle:
        reader = csv.DictReader(handle)
        missing_columns = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
        if missing_columns:
            raise TrainingError(
                f"{reference} lacks column(s) {', '.join(missing_columns)}; "
                f"found {reader.fieldnames}"
            )
        rows = list(reader)
    if not rows:
        raise TrainingError(f"{reference} has no cases")
    cases: list[Case] = []
    missing: list[str] = []
    for line, row in enumerate(rows, start=2):
        patient_id = row["PatientID"].strip()
        image = data_dir / f"{patient_id}.mha"
        if not image.is_file():
            missing.append(patient_id)
            continue
        try:
            covid, severe = float(row["probCOVID"]), float(row["probSevere"])
        except ValueError as exc:
            raise TrainingError(f"{reference} line {line}: labels are not numbers") from exc
        if not (0 <= covid <= 1 and 0 <= severe <= 1):
            raise TrainingError(f"{reference} line {line}: labels must lie in [0, 1]")
        header = read_patient_info_from_file(image)
        info = PatientInfo(
            age_years=header.age_years
            if header.age_years is not None
            else parse_age(_column(row, "age", "PatientAge")),
            sex=header.sex
            if header.sex is not None
            else parse_sex(_column(row, "sex", "PatientSex")),
        )
        cases.append(Case(patient_id, covid, severe, image, info))
    if missing:
        shown = ", ".join(missing[:10]) + (" ..." if len(missing) > 10 else "")
        raise TrainingError(
            f"{len(missing)} case(s) in {reference} have no image in {data_dir}: {shown}"
        )
    return cases


def cached_volume(case: Case, config: PreprocessConfig, cache_dir: Path) -> Path:
    """Preprocess once per (image, config) and keep the cube as .npy in scratch."""
    stat = case.image.stat()
    key = hashlib.sha256(
        json.dumps(
            [config.to_dict(), str(case.image.resolve()), stat.st_size, stat.st_mtime_ns],
            sort_keys=True,
        ).encode()
    ).hexdigest()[:16]
    path = cache_dir / f"{case.patient_id}-{key}.npy"
    if not path.is_file():
        volume = preprocess(read_image(case.image), config)
        tmp = path.with_suffix(f".tmp{os.getpid()}.npy")
        np.save(tmp, volume.astype(np.float16 if config.cube > 128 else np.float32))
        os.replace(tmp, path)
    return path


class Augmenter:
    """Random flips, a small in-plane rotation and Gaussian noise, drawn from seeded
    generators so that a run is reproducible."""

    def __init__(
        self,
        seed: int,
        device: torch.device,
        max_rotation_deg: float = 10.0,
        noise_std: float = 0.02,
    ) -> None:
        self.cpu = torch.Generator().manual_seed(seed)
        self.device_gen = torch.Generator(device=device).manual_seed(seed + 1)
        self.max_rotation = math.radians(max_rotation_deg)
        self.noise_std = noise_std

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        b = batch.shape[0]
        flips = torch.rand(b, 3, generator=self.cpu) < 0.5
        out = torch.stack(
            [
                x.flip([d + 1 for d in range(3) if flips[i, d]]) if flips[i].any() else x
                for i, x in enumerate(batch)
            ]
        )
        angles = (torch.rand(b, generator=self.cpu) * 2 - 1) * self.max_rotation
        cos, sin = torch.cos(angles), torch.sin(angles)
        theta = torch.zeros(b, 3, 4)
        # affine_grid's coordinates are (x, y, z) = (W, H, D): rotate in the axial plane.
        theta[:, 0, 0], theta[:, 0, 1] = cos, -sin
        theta[:, 1, 0], theta[:, 1, 1] = sin, cos
        theta[:, 2, 2] = 1
        grid = F.affine_grid(theta.to(out.device, out.dtype), list(out.shape), align_corners=False)
        out = F.grid_sample(out, grid, mode="bilinear", padding_mode="border", align_corners=False)
        sigma = torch.rand(b, generator=self.cpu) * self.noise_std
        noise = torch.randn(out.shape, generator=self.device_gen, device=out.device)
        out = out + noise * sigma.to(out.device).view(b, 1, 1, 1, 1)
        return out.clamp_(0, 1)


def _load_batch(paths: Sequence[Path], device: torch.device) -> torch.Tensor:
    arrays = [np.load(p).astype(np.float32, copy=False) for p in paths]
    return torch.from_numpy(np.stack(arrays)[:, None]).to(device)


def train_model(
    cases: Sequence[Case],
    volumes: Sequence[Path],
    model: InflatedConvNet3D,
    device: torch.device,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    seed: int,
    augment: bool = True,
    log: bool = True,
) -> list[EpochStats]:
    model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=lr,
        total_steps=max(1, epochs * math.ceil(len(cases) / batch_size)),
        pct_start=0.2,
    )
    order_gen = torch.Generator().manual_seed(seed)
    augmenter = Augmenter(seed, device) if augment else None
    covid = torch.tensor([c.covid for c in cases], dtype=torch.float32)
    severe = torch.tensor([c.severe for c in cases], dtype=torch.float32)
    clinical = torch.tensor([c.info.features() for c in cases], dtype=torch.float32)
    history: list[EpochStats] = []
    for epoch in range(1, epochs + 1):
        start = time.perf_counter()
        order = torch.randperm(len(cases), generator=order_gen)
        totals = np.zeros(3)
        for first in range(0, len(cases), batch_size):
            idx = order[first : first + batch_size]
            batch = _load_batch([volumes[i] for i in idx], device)
            if augmenter is not None:
                batch = augmenter(batch)
            covid_logit, severe_logit = model(batch, clinical[idx].to(device))
            y_covid, y_severe = covid[idx].to(device), severe[idx].to(device)
            covid_loss = F.binary_cross_entropy_with_logits(covid_logit, y_covid)
            # Severity is only defined for COVID-19 positives (as in STOIC's evaluation).
            positive = (y_covid > 0.5).float()
            severe_terms = F.binary_cross_entropy_with_logits(
                severe_logit, y_severe, reduction="none"
            )
            severe_loss = (severe_terms * positive).sum() / positive.sum().clamp(min=1)
            loss = covid_loss + severe_loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            totals += len(idx) * np.array([loss.item(), covid_loss.item(), severe_loss.item()])
        loss_mean, covid_mean, severe_mean = totals / len(cases)
        stats = EpochStats(
            epoch,
            float(loss_mean),
            float(covid_mean),
            float(severe_mean),
            time.perf_counter() - start,
        )
        history.append(stats)
        if log:
            print(
                f"epoch {epoch}/{epochs} loss {stats.loss:.4f} "
                f"(covid {stats.covid_loss:.4f}, severe {stats.severe_loss:.4f}) "
                f"{stats.seconds:.1f} s",
                flush=True,
            )
    return history


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m baseline_algorithm.train", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--input", type=Path, default=Path("/input"))
    parser.add_argument("--data-dir", type=Path, help="default: INPUT/data/mha")
    parser.add_argument("--reference", type=Path, help="default: INPUT/metadata/reference.csv")
    parser.add_argument("--output", type=Path, default=Path("/output"))
    parser.add_argument("--scratch", type=Path, default=Path("/scratch"))
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--weight-decay", type=float, default=1e-2)
    parser.add_argument("--cube", type=int, default=240, help="voxels per side (STOIC: 240)")
    parser.add_argument("--spacing", type=float, default=1.6, help="isotropic mm (STOIC: 1.6)")
    parser.add_argument("--widths", type=int, nargs="+", default=list(ModelConfig().widths))
    parser.add_argument("--stem-stride", type=int, default=ModelConfig().stem_stride)
    parser.add_argument("--no-clinical", action="store_true", help="ignore age and sex")
    parser.add_argument("--no-augment", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--threads", type=int, help="CPU threads for torch (default: all)")
    args = parser.parse_args(argv)
    if args.epochs < 1 or args.batch_size < 1:
        parser.error("--epochs and --batch-size must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    data_dir = args.data_dir or args.input / "data" / "mha"
    reference = args.reference or args.input / "metadata" / "reference.csv"
    try:
        device = resolve_device(args.device)
        if args.threads:
            torch.set_num_threads(args.threads)
        seed_everything(args.seed)
        preprocess_config = PreprocessConfig(spacing_mm=args.spacing, cube=args.cube)
        model_config = ModelConfig(
            widths=tuple(args.widths),
            stem_stride=args.stem_stride,
            n_clinical=0 if args.no_clinical else ModelConfig().n_clinical,
        )
        cases = read_cases(data_dir, reference)
        print(
            f"{len(cases)} cases ({sum(c.covid > 0.5 for c in cases)} COVID-19, "
            f"{sum(c.severe > 0.5 for c in cases)} severe); device {device}",
            flush=True,
        )
        start = time.perf_counter()
        cache_dir = args.scratch / "preprocessed"
        cache_dir.mkdir(parents=True, exist_ok=True)
        volumes = [cached_volume(c, preprocess_config, cache_dir) for c in cases]
        prep_seconds = time.perf_counter() - start
        print(
            f"preprocessed to {args.cube}^3 at {args.spacing} mm in {prep_seconds:.1f} s",
            flush=True,
        )
        model = InflatedConvNet3D(model_config)
        print(f"model: {count_parameters(model)} parameters", flush=True)
        start = time.perf_counter()
        history = train_model(
            cases,
            volumes,
            model,
            device,
            args.epochs,
            args.batch_size,
            args.lr,
            args.weight_decay,
            args.seed,
            augment=not args.no_augment,
        )
        train_seconds = time.perf_counter() - start
        save_artifact(
            args.output,
            model,
            preprocess_config,
            {
                "training": {
                    "epochs": args.epochs,
                    "batch_size": args.batch_size,
                    "lr": args.lr,
                    "weight_decay": args.weight_decay,
                    "seed": args.seed,
                    "augment": not args.no_augment,
                    "device": str(device),
                    "cases": len(cases),
                    "preprocess_seconds": round(prep_seconds, 2),
                    "train_seconds": round(train_seconds, 2),
                },
                "history": [vars(h) for h in history],
            },
        )
    except (TrainingError, FileNotFoundError) as exc:
        print(f"training failed: {exc}", file=sys.stderr)
        return 1
    print(
        f"trained in {train_seconds:.1f} s; wrote weights and config to {args.output}", flush=True
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
