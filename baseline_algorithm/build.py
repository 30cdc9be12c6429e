"""Assemble Docker build contexts for the baseline, and its T3 codebase repository.

Standard library only, so the control plane and workers can call it without torch.

Images (all start from heldout's own base images; nothing is pulled):
- ``training``: T3 training image, entrypoint ``python -m baseline_algorithm.train``.
- ``inference``: T3 inference image; ``artifact/`` (the training output) is baked into
  ``/opt/algorithm/artifact/``; may be empty when the package ships default weights.
- ``algorithm``: a T2 algorithm image: the inference image with given weights baked in.

Python dependencies are installed from wheels placed in the context (``pip --no-index``),
downloaded once on the host by ``download_wheels``::

    wheels = download_wheels(Path("var/wheels"))
    assemble_context("algorithm", Path("build/ctx"), wheels, artifact_dir=Path("out"))
    build_image(Path("build/ctx"), "heldout/baseline-algorithm:latest")
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
_SOURCE_IGNORE = (
    "__pycache__",
    "*.pyc",
    "build.py",
    "training",
    "inference",
    "runtime",
    "README.md",
)


class BuildError(RuntimeError):
    """A context cannot be assembled or an image cannot be built; the message says why."""


def _dockerfile(kind: ImageKind) -> Path:
    folder = {"training": "training", "runtime": "runtime"}.get(kind, "inference")
    return PACKAGE_DIR / folder / "Dockerfile"


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


def _write_image_files(kind: ImageKind, dest: Path) -> None:
    shutil.copy2(_dockerfile(kind), dest / "Dockerfile")
    (dest / "requirements.txt").write_text("\n".join(REQUIREMENTS) + "\n")
    if kind != "runtime":
        _copy_source(dest)
    (dest / ".dockerignore").write_text("**/__pycache__\n**/*.pyc\n")


def _copy_source(dest: Path) -> None:
    shutil.copytree(
        PACKAGE_DIR, dest / PACKAGE_NAME, ignore=shutil.ignore_patterns(*_SOURCE_IGNORE)
    )


def assemble_context(
    kind: ImageKind,
    dest: Path,
    wheel_dir: Path | None,
    artifact_dir: Path | None = None,
) -> Path:
    """Write a complete build context for ``kind`` into ``dest`` (emptied first).

    Layout: ``Dockerfile``, ``requirements.txt``, ``wheels/``, ``baseline_algorithm/`` and,
    for inference and algorithm images, ``artifact/``. ``wheel_dir`` None leaves
    ``wheels/`` empty (only useful for a codebase that a networked builder completes).
    """
    if kind not in IMAGE_KINDS:
        raise BuildError(f"unknown image kind {kind!r}; expected one of {IMAGE_KINDS}")
    dest = Path(dest)
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    _write_image_files(kind, dest)
    if wheel_dir is not None:
        _copy_wheels(wheel_dir, dest / "wheels")
    else:
        (dest / "wheels").mkdir()
        (dest / "wheels" / ".gitkeep").write_text("")
    if kind in ("inference", "algorithm"):
        _copy_artifact(artifact_dir, dest / "artifact", required=kind == "algorithm")
        if not any((dest / "artifact").iterdir()):
            (dest / "artifact" / ".gitkeep").write_text("")
    return dest


_CODEBASE_README = """\
# heldout baseline (STOIC2021-style codebase)

- `training/`: build context of the training image. It reads
  `/input/data/mha/<PatientID>.mha` and `/input/metadata/reference.csv`, caches to
  `/scratch` and writes `model.pt` + `config.json` to `/output`.
- `inference/`: build context of the inference image. The platform copies the training
  `/output` into `inference/artifact/` before building; the image serves it from
  `/opt/algorithm/artifact/` and writes `/output/probability-covid-19.json` and
  `/output/probability-severe-covid-19.json`.

Both install their Python packages from `wheels/` with `pip --no-index`, so they build
without network access, from heldout's `heldout/python:bookworm` and `heldout/base:bookworm`.
"""


_ON_RUNTIME = """\
# The heldout baseline, built on the organizers' runtime image (torch, SimpleITK, numpy).
FROM {runtime}
COPY baseline_algorithm/ /opt/algorithm/baseline_algorithm/
{extra}ENTRYPOINT ["python", "-m", "baseline_algorithm.{module}"]
{cmd}"""


def assemble_on_runtime(
    kind: ImageKind,
    dest: Path,
    runtime_image: str,
    artifact_dir: Path | None = None,
    train_args: Sequence[str] = (),
) -> Path:
    """A small build context ``FROM runtime_image``: the source (and weights), no wheels.
    ``train_args`` become the training image's CMD (e.g. a small cube for the demo)."""
    if kind not in ("training", "inference", "algorithm"):
        raise BuildError(f"{kind!r} images cannot be built on the runtime")
    dest = Path(dest)
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    _copy_source(dest)
    extra = ""
    if kind != "training":
        _copy_artifact(artifact_dir, dest / "artifact", required=kind == "algorithm")
        if not any((dest / "artifact").iterdir()):
            (dest / "artifact" / ".gitkeep").write_text("")
        extra = "COPY artifact/ /opt/algorithm/artifact/\n"
    cmd = f"CMD {json.dumps(list(train_args))}\n" if kind == "training" and train_args else ""
    module = "train" if kind == "training" else "inference"
    (dest / "Dockerfile").write_text(
        _ON_RUNTIME.format(runtime=runtime_image, extra=extra, module=module, cmd=cmd)
    )
    (dest / ".dockerignore").write_text("**/__pycache__\n**/*.pyc\n")
    return dest


def write_codebase(
    dest: Path,
    wheel_dir: Path | None,
    include_wheels: bool = True,
    runtime_image: str | None = None,
    train_args: Sequence[str] = (),
) -> Path:
    """A git-repository-ready T3 codebase: ``training/`` and ``inference/`` (each a
    self-contained build context with its own copy of the source), and a README. With
    ``runtime_image`` both build ``FROM`` it and carry no wheels."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    if runtime_image is not None:
        assemble_on_runtime("training", dest / "training", runtime_image, train_args=train_args)
        assemble_on_runtime("inference", dest / "inference", runtime_image)
        (dest / "README.md").write_text(_CODEBASE_README)
        (dest / ".gitignore").write_text("__pycache__/\n*.pyc\n")
        return dest
    wheels = wheel_dir if include_wheels else None
    assemble_context("training", dest / "training", wheels)
    assemble_context("inference", dest / "inference", wheels)
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
    context.add_argument("--wheels", type=Path, required=True)
    context.add_argument("--artifact", type=Path)
    context.add_argument("--tag", help="also docker build it with this tag")
    codebase = sub.add_parser("codebase", help="write the T3 codebase repository")
    codebase.add_argument("dest", type=Path)
    codebase.add_argument("--wheels", type=Path)
    args = parser.parse_args(argv)
    try:
        if args.command == "wheels":
            print(download_wheels(args.dest, args.torch_wheel, torch_index=args.torch_index))
        elif args.command == "context":
            path = assemble_context(args.kind, args.dest, args.wheels, args.artifact)
            print(path)
            if args.tag:
                print(build_image(path, args.tag))
        else:
            print(write_codebase(args.dest, args.wheels, include_wheels=args.wheels is not None))
    except BuildError as exc:
        print(f"build failed: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
