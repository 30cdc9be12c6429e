"""Inference time per CT for the baseline at STOIC's input size (240³ at 1.6 mm).

Times, separately: reading the .mha, preprocessing (resample + crop/pad + clip/scale),
the model forward pass on CPU (and on CUDA when visible), and the whole per-case
prediction. The CT is synthetic but of clinical size (512 x 512 in-plane, 0.8 mm).

    .venv/bin/python bench/bench_baseline.py                  # defaults: 240³, 3 repeats
    .venv/bin/python bench/bench_baseline.py --cube 128 --size 256 --repeats 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from baseline_algorithm import synthetic
from baseline_algorithm.artifact import load_artifact
from baseline_algorithm.inference import predict
from baseline_algorithm.model import InflatedConvNet3D, ModelConfig, count_parameters
from baseline_algorithm.preprocess import PreprocessConfig, preprocess, read_image, write_image


def timed(fn: Callable[[], object], repeats: int, warmup: int = 1) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def report(name: str, times: list[float]) -> None:
    mean = statistics.mean(times)
    spread = statistics.stdev(times) if len(times) > 1 else 0.0
    print(f"  {name:<42} {mean * 1000:9.1f} ms  (± {spread * 1000:.1f}, n={len(times)})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cube", type=int, default=240)
    parser.add_argument("--spacing-mm", type=float, default=1.6)
    parser.add_argument("--size", type=int, default=512, help="in-plane voxels of the CT")
    parser.add_argument("--ct-spacing", type=float, nargs=3, default=(0.8, 0.8, 1.25))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--artifact", type=Path, help="trained weights (default: random init)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    config = PreprocessConfig(spacing_mm=args.spacing_mm, cube=args.cube)
    if args.artifact:
        loaded = load_artifact(args.artifact)
        config = PreprocessConfig(
            **{
                **loaded.preprocess_config.to_dict(),
                "cube": args.cube,
                "spacing_mm": args.spacing_mm,
            }
        )
        model = loaded.build_model()
    else:
        model = InflatedConvNet3D(ModelConfig()).eval()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads "
        f"({os.cpu_count()} cores), model {count_parameters(model)} parameters"
    )

    with tempfile.TemporaryDirectory() as tmp:
        case = synthetic.SyntheticCase("bench", covid=1, severe=1, age=64, sex="M")
        start = time.perf_counter()
        image = synthetic.make_case_image(
            case, np.random.default_rng(0), args.size, args.ct_spacing
        )
        path = Path(tmp) / "ct.mha"
        write_image(image, path)
        print(
            f"CT {image.GetSize()} voxels at {tuple(args.ct_spacing)} mm, "
            f"{path.stat().st_size / 1e6:.0f} MB compressed .mha "
            f"(made in {time.perf_counter() - start:.1f} s)"
        )
        print(f"network input: {args.cube}^3 at {args.spacing_mm} mm")

        print("CPU")
        report("read .mha", timed(lambda: read_image(path), args.repeats))
        loaded_image = read_image(path)
        report(
            "preprocess (resample, crop/pad, scale)",
            timed(lambda: preprocess(loaded_image, config), args.repeats),
        )
        volume = torch.from_numpy(preprocess(loaded_image, config))[None, None]
        with torch.no_grad():
            report("model forward", timed(lambda: model(volume), args.repeats))

        cpu = torch.device("cpu")
        report(
            "whole case (read + preprocess + forward)",
            timed(lambda: predict(model, config, path, cpu), args.repeats),
        )

        if torch.cuda.is_available():
            gpu = torch.device("cuda")
            model_gpu = model.to(gpu)
            print(f"CUDA ({torch.cuda.get_device_name(0)})")

            def forward_gpu() -> None:
                with torch.no_grad():
                    model_gpu(volume.to(gpu))
                torch.cuda.synchronize()

            report("model forward (incl. host-to-device copy)", timed(forward_gpu, args.repeats))
            resident = volume.to(gpu)

            def forward_resident() -> None:
                with torch.no_grad():
                    model_gpu(resident)
                torch.cuda.synchronize()

            report("model forward (input on device)", timed(forward_resident, args.repeats))
            report(
                "whole case (read + preprocess + forward)",
                timed(lambda: predict(model_gpu, config, path, gpu), args.repeats),
            )
        else:
            print("CUDA: not available")
    return 0


if __name__ == "__main__":
    sys.exit(main())
