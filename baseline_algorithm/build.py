"""Assemble Docker build contexts for the baseline, and its T3 codebase repository.

Standard library only, so the control plane and workers can call it without torch.

One image holds the environment; the others add code on top of it (nothing is pulled):
- ``runtime``: torch, SimpleITK and numpy in /opt/venv and the non-root user ``algorithm``,
  installed from wheels in the context (``pip --no-index``). Organizers provide it on their
  worker nodes, the way real codebases start ``FROM`` a registry's pytorch image.
- ``training``: ``FROM`` the runtime, entrypoint ``python -m baseline_algorithm.train``.
- ``inference``: ``FROM`` the runtime; ``artifact/`` (the training output) is baked into
  ``/opt/algorithm/artifact/``.
- ``algorithm``: a T2 algorithm image: the inference image with given weights baked in.

    wheels = download_wheels(Path("var/wheels"))
    ensure_runtime(wheels, Path("var/ctx-runtime"))
    assemble_context("algorithm", Path("var/ctx"), artifact_dir=Path("out"))
    build_image(Path("var/ctx"), "stoic-baseline/algorithm:latest")
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

ImageKind = Literal["training", "inference", "algorithm", "runtime"]
IMAGE_KINDS: tuple[ImageKind, ...] = ("training", "inference", "algorithm", "runtime")

PACKAGE_DIR = Path(__file__).resolve().parent
PACKAGE_NAME = PACKAGE_DIR.name
# Must match baseline_algorithm.artifact (checked by a unit test; not imported: no torch here).
ARTIFACT_FILES = ("model.pt", "config.json")
DEFAULT_TORCH_WHEEL = Path("/opt/wheels/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl")
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
# Installed in the image; torch==2.13.0 also matches the local version 2.13.0+cpu.
REQUIREMENTS = ("torch==2.13.0", "SimpleITK>=2.3", "numpy>=1.26")
# The images run Debian bookworm's CPython 3.11 on x86-64.
WHEEL_PLATFORM_ARGS = (
    "--only-binary=:all:",
    "--implementation",
    "cp",
    "--python-version",
    "3.11",
    "--platform",
    "manylinux_2_28_x86_64",
    "--platform",
    "manylinux_2_17_x86_64",
    "--platform",
    "manylinux2014_x86_64",
)
_WHEELS_STAMP = ".complete"
# Host-side or template-only parts of the package that images do not need.
_SOURCE_IGNORE = ("__pycache__", "*.pyc", "build.py", "demo.py", "runtime", "README.md")
RUNTIME_IMAGE = "heldout/baseline-runtime:latest"
RUNTIME_DOCKERFILE = PACKAGE_DIR / "runtime" / "Dockerfile"


class BuildError(RuntimeError):
    """A context cannot be assembled or an image cannot be built; the message says why."""


def download_wheels(
    dest: Path,
    torch_wheel: Path | None = DEFAULT_TORCH_WHEEL,
    requirements: Sequence[str] = REQUIREMENTS,
    torch_index: str = TORCH_CPU_INDEX,
    pip: Sequence[str] = (sys.executable, "-m", "pip"),
) -> Path:
    """Download the image's wheels (with dependencies) into ``dest`` once; later calls with
    the same request return at once. ``torch_wheel``: a local wheel to use instead of
    ``torch_index`` (None, or a path that does not exist, uses the index; a CUDA index such
    as https://download.pytorch.org/whl/cu128 gives GPU images)."""
    dest = Path(dest)
    use_local = torch_wheel is not None and Path(torch_wheel).is_file()
    specs = [str(torch_wheel) if use_local and r.startswith("torch") else r for r in requirements]
    stamp = hashlib.sha256(
        json.dumps([specs, WHEEL_PLATFORM_ARGS, use_local or torch_index]).encode()
    ).hexdigest()
    stamp_file = dest / _WHEELS_STAMP
    if stamp_file.is_file() and stamp_file.read_text().strip() == stamp:
        return dest
    dest.mkdir(parents=True, exist_ok=True)
    command = [*pip, "download", "--quiet", "--dest", str(dest), *WHEEL_PLATFORM_ARGS]
    if not use_local:
        command += ["--extra-index-url", torch_index]
    result = subprocess.run([*command, *specs], capture_output=True, text=True)
    if result.returncode != 0:
        raise BuildError(f"pip download failed ({result.returncode}): {result.stderr[-2000:]}")
    stamp_file.write_text(stamp + "\n")
    return dest


def _link_or_copy(src: Path, dst: Path) -> None:
    # Hard links keep a 250 MB wheel set from being copied into every context.
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _copy_wheels(wheel_dir: Path, dest: Path) -> None:
    wheels = sorted(Path(wheel_dir).glob("*.whl"))
    if not any(w.name.startswith("torch-") for w in wheels):
        raise BuildError(f"{wheel_dir} holds no torch wheel; run download_wheels first")
    dest.mkdir(parents=True, exist_ok=True)
    for wheel in wheels:
        _link_or_copy(wheel, dest / wheel.name)


def _copy_artifact(artifact_dir: Path | None, dest: Path, required: bool) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    if artifact_dir is None:
        if required:
            raise BuildError("an algorithm image needs trained weights: pass artifact_dir")
        return
    artifact_dir = Path(artifact_dir)
    missing = [name for name in ARTIFACT_FILES if not (artifact_dir / name).is_file()]
    if missing:
        raise BuildError(f"{artifact_dir} lacks {', '.join(missing)}")
    shutil.copytree(artifact_dir, dest, dirs_exist_ok=True)


def _copy_source(dest: Path) -> None:
    shutil.copytree(
        PACKAGE_DIR, dest / PACKAGE_NAME, ignore=shutil.ignore_patterns(*_SOURCE_IGNORE)
    )


_ON_RUNTIME = """\
# {title} of the heldout baseline (STOIC2021 interfaces), on the runtime image.
# Runs: {runs}
FROM {runtime}
COPY baseline_algorithm/ /opt/algorithm/baseline_algorithm/
{extra}ENTRYPOINT ["python", "-m", "baseline_algorithm.{module}"]
{cmd}"""
_RUNS = {
    "train": "/input/data/mha + /input/metadata/reference.csv -> /output (weights), /scratch.",
    "inference": "/input/images/ct/<uuid>.mha -> /output/probability-covid-19.json and "
    "/output/probability-severe-covid-19.json (batch: /input/<case>/ -> /output/<case>/).",
}


def assemble_context(
    kind: ImageKind,
    dest: Path,
    wheel_dir: Path | None = None,
    artifact_dir: Path | None = None,
    *,
    runtime_image: str = RUNTIME_IMAGE,
    train_args: Sequence[str] = (),
) -> Path:
    """Write a complete build context for ``kind`` into ``dest`` (emptied first).

    ``runtime``: ``Dockerfile``, ``requirements.txt`` and ``wheels/`` from ``wheel_dir``.
    The others: a ``Dockerfile`` ``FROM runtime_image``, ``baseline_algorithm/`` and, for
    inference and algorithm images, ``artifact/``. ``train_args`` become the training
    image's CMD (e.g. a small cube for the demo).
    """
    if kind not in IMAGE_KINDS:
        raise BuildError(f"unknown image kind {kind!r}; expected one of {IMAGE_KINDS}")
    dest = Path(dest)
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    (dest / ".dockerignore").write_text("**/__pycache__\n**/*.pyc\n")
    if kind == "runtime":
        if wheel_dir is None:
            raise BuildError("the runtime image is installed from wheels: pass wheel_dir")
        shutil.copy2(RUNTIME_DOCKERFILE, dest / "Dockerfile")
        (dest / "requirements.txt").write_text("\n".join(REQUIREMENTS) + "\n")
        _copy_wheels(wheel_dir, dest / "wheels")
        return dest
    _copy_source(dest)
    extra = ""
    if kind != "training":
        _copy_artifact(artifact_dir, dest / "artifact", required=kind == "algorithm")
        if not any((dest / "artifact").iterdir()):
            (dest / "artifact" / ".gitkeep").write_text("")
        extra = "COPY artifact/ /opt/algorithm/artifact/\n"
    module = "train" if kind == "training" else "inference"
    cmd = f"CMD {json.dumps(list(train_args))}\n" if module == "train" and train_args else ""
    (dest / "Dockerfile").write_text(
        _ON_RUNTIME.format(
            title=f"The {kind} image",
            runs=_RUNS[module],
            runtime=runtime_image,
            extra=extra,
            module=module,
            cmd=cmd,
        )
    )
    return dest


def ensure_runtime(
    wheel_dir: Path, context_dir: Path, tag: str = RUNTIME_IMAGE, docker: str = "docker"
) -> str:
    """The runtime image's id, built from the wheels unless the engine has it already."""
    present = subprocess.run(
        [docker, "image", "inspect", "--format", "{{.Id}}", tag], capture_output=True, text=True
    )
    if present.returncode == 0:
        return present.stdout.strip()
    return build_image(assemble_context("runtime", context_dir, wheel_dir), tag, docker)


_CODEBASE_README = """\
# heldout baseline (STOIC2021-style codebase)

- `training/`: build context of the training image. It reads
  `/input/data/mha/<PatientID>.mha` and `/input/metadata/reference.csv`, caches to
  `/scratch` and writes `model.pt` + `config.json` to `/output`.
- `inference/`: build context of the inference image. The platform copies the training
  `/output` into `inference/artifact/` before building; the image serves it from
  `/opt/algorithm/artifact/` and writes `/output/probability-covid-19.json` and
  `/output/probability-severe-covid-19.json`.

Both build `FROM heldout/baseline-runtime` (torch, SimpleITK, numpy), which the organizers
provide on their worker nodes, so neither needs the network to build.
"""


def write_codebase(
    dest: Path, runtime_image: str = RUNTIME_IMAGE, train_args: Sequence[str] = ()
) -> Path:
    """A git-repository-ready T3 codebase: ``training/`` and ``inference/`` (each a build
    context with its own copy of the source, ``FROM`` the runtime image) and a README."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    assemble_context(
        "training", dest / "training", runtime_image=runtime_image, train_args=train_args
    )
    assemble_context("inference", dest / "inference", runtime_image=runtime_image)
    (dest / "README.md").write_text(_CODEBASE_README)
    (dest / ".gitignore").write_text("__pycache__/\n*.pyc\n")
    return dest


def build_image(context: Path, tag: str, docker: str = "docker", quiet: bool = True) -> str:
    """``docker build`` the context; returns the image id. Raises BuildError with the
    tail of the build log on failure."""
    command = [docker, "build", "--tag", tag, str(context)]
    if quiet:
        command.insert(2, "--quiet")
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        log = (result.stdout + result.stderr)[-4000:]
        raise BuildError(f"docker build of {context} as {tag} failed:\n{log}")
    inspect = subprocess.run(
        [docker, "image", "inspect", "--format", "{{.Id}}", tag],
        capture_output=True,
        text=True,
        check=True,
    )
    return inspect.stdout.strip()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m baseline_algorithm.build")
    sub = parser.add_subparsers(dest="command", required=True)
    wheels = sub.add_parser("wheels", help="download the images' wheels")
    wheels.add_argument("dest", type=Path)
    wheels.add_argument("--torch-wheel", type=Path, default=DEFAULT_TORCH_WHEEL)
    wheels.add_argument("--torch-index", default=TORCH_CPU_INDEX)
    context = sub.add_parser("context", help="assemble a build context")
    context.add_argument("kind", choices=IMAGE_KINDS)
    context.add_argument("dest", type=Path)
    context.add_argument("--wheels", type=Path, help="runtime images: the wheel directory")
    context.add_argument("--artifact", type=Path)
    context.add_argument("--tag", help="also docker build it with this tag")
    codebase = sub.add_parser("codebase", help="write the T3 codebase repository")
    codebase.add_argument("dest", type=Path)
    runtime = sub.add_parser("runtime", help="build the runtime image unless present")
    runtime.add_argument("--wheels", type=Path, required=True)
    runtime.add_argument("--context", type=Path, required=True)
    args = parser.parse_args(argv)
    try:
        if args.command == "wheels":
            print(download_wheels(args.dest, args.torch_wheel, torch_index=args.torch_index))
        elif args.command == "context":
            path = assemble_context(args.kind, args.dest, args.wheels, args.artifact)
            print(path)
            if args.tag:
                print(build_image(path, args.tag))
        elif args.command == "runtime":
            print(ensure_runtime(args.wheels, args.context))
        else:
            print(write_codebase(args.dest))
    except BuildError as exc:
        print(f"build failed: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
