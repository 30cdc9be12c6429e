"""Build heldout's default evaluation image without network access at build time.

Nothing can be pulled from a registry here, so the image starts from the locally built
`heldout/python:bookworm` (scripts/base-image.sh) and installs numpy, scipy, scikit-learn
and SimpleITK (segmentation masks) from wheels that this module downloads on the host,
once, into a cache under the build directory. The build itself runs with `network_mode="none"`.

    python -m evaluation.build_image [--tag TAG] [--build-dir DIR]

The image is named by the digest of its own code (`code_digest`): the Dockerfile, the pinned
requirements and every module of the package. A result records that digest, so a board can
tell a score of the present evaluator from one of an older heldout, and an upgrade builds a
new image instead of reusing a stale tag.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from evaluation import EVALUATOR_VERSION

REPOSITORY = "heldout/evaluation"
DIGEST_LABEL = "org.heldout.evaluator-digest"
BASE_IMAGE = "heldout/python:bookworm"
PACKAGE_DIR = Path(__file__).resolve().parent
# Pinned to the versions heldout is tested with, so in-image and server-side results agree.
REQUIREMENTS = ("numpy==2.4.6", "scipy==1.17.1", "scikit-learn==1.9.1", "SimpleITK==2.5.7")
# Debian bookworm's interpreter and C library, which the wheels must match.
PYTHON_VERSION = "3.11"
GLIBC = (2, 36)
_ARCHES = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64"}


class ImageBuildError(RuntimeError):
    pass


def code_digest(package_dir: Path = PACKAGE_DIR) -> str:
    """`sha256:<hex>` over everything that goes into the image from heldout itself: the
    Dockerfile, the pinned requirements and each module (by name and content)."""
    h = hashlib.sha256()
    h.update(b"requirements\0" + "\n".join(REQUIREMENTS).encode() + b"\0")
    files = [package_dir / "Dockerfile", *sorted(package_dir.glob("*.py"))]
    for path in files:
        data = path.read_bytes()
        h.update(f"{path.name}\0{len(data)}\0".encode() + data)
    return "sha256:" + h.hexdigest()


def default_tag(package_dir: Path = PACKAGE_DIR) -> str:
    """`heldout/evaluation:<first 16 hex digits of the code digest>`."""
    return f"{REPOSITORY}:{code_digest(package_dir).removeprefix('sha256:')[:16]}"


def default_build_dir() -> Path:
    return Path(tempfile.gettempdir()) / "heldout-evaluation-build"


def platforms(docker_client: Any) -> list[str]:
    """Wheel platform tags the image can run: every manylinux tag up to bookworm's glibc
    (`pip download` does not widen an explicit --platform by itself)."""
    arch = str(docker_client.info().get("Architecture", "x86_64"))
    if arch not in _ARCHES:
        raise ImageBuildError(f"no wheels for the Docker host's architecture {arch!r}")
    tags = [f"manylinux_2_{minor}_{_ARCHES[arch]}" for minor in range(GLIBC[1], 16, -1)]
    return [*tags, f"manylinux2014_{_ARCHES[arch]}"]


def download_wheels(cache: Path, platform_tags: Sequence[str]) -> Path:
    """Download the pinned wheels (and their dependencies) for the image's Python.

    A marker records what the cache was filled for; a filled cache is reused without
    touching the network, so later builds work offline.
    """
    stamp = hashlib.sha256(" ".join([*REQUIREMENTS, *platform_tags]).encode()).hexdigest()
    marker = cache / ".complete"
    if marker.is_file() and marker.read_text() == stamp:
        return cache
    if cache.exists():
        shutil.rmtree(cache)
    cache.mkdir(parents=True)
    cmd = [
        sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
        "--only-binary=:all:", "--python-version", PYTHON_VERSION, "--implementation", "cp",
        "--abi", "cp" + PYTHON_VERSION.replace(".", ""),
        *(arg for tag in platform_tags for arg in ("--platform", tag)),
        "--dest", str(cache), *REQUIREMENTS,
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise ImageBuildError(
            f"downloading the evaluation image's wheels failed: {done.stderr.strip()[-2000:]}"
        )
    marker.write_text(stamp)
    return cache


def prepare_context(build_dir: Path, platform_tags: Sequence[str]) -> Path:
    """Lay out the build context: Dockerfile, the package's sources, the wheels."""
    wheels = download_wheels(build_dir / "wheels", platform_tags)
    context = build_dir / "context"
    if context.exists():
        shutil.rmtree(context)
    (context / "evaluation").mkdir(parents=True)
    shutil.copy2(PACKAGE_DIR / "Dockerfile", context / "Dockerfile")
    for src in PACKAGE_DIR.glob("*.py"):
        shutil.copy2(src, context / "evaluation" / src.name)
    (context / "requirements.txt").write_text("\n".join(REQUIREMENTS) + "\n")
    (context / "wheels").mkdir()
    for whl in wheels.glob("*.whl"):
        try:
            os.link(whl, context / "wheels" / whl.name)
        except OSError:  # another filesystem: copy instead
            shutil.copy2(whl, context / "wheels" / whl.name)
    return context


def build_evaluation_image(
    docker_client: Any, tag: str | None = None, *, build_dir: Path | None = None
) -> str:
    """Build the evaluation image with a `docker.DockerClient` (tagged by its code digest
    unless `tag` is given); returns the image id."""
    if not docker_client.images.list(name=BASE_IMAGE):
        raise ImageBuildError(f"base image {BASE_IMAGE} is missing: run scripts/base-image.sh")
    context = prepare_context(build_dir or default_build_dir(), platforms(docker_client))
    image, _ = docker_client.images.build(
        path=str(context),
        tag=tag or default_tag(),
        rm=True,
        forcerm=True,
        pull=False,
        network_mode="none",
        labels={"org.heldout.evaluator-version": EVALUATOR_VERSION, DIGEST_LABEL: code_digest()},
    )
    return str(image.id)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m evaluation.build_image")
    ap.add_argument("--tag", default=None, help="default: heldout/evaluation:<code digest>")
    ap.add_argument("--build-dir", type=Path, default=None)
    args = ap.parse_args(argv)
    import docker  # the host's SDK; the image itself does not need it

    image_id = build_evaluation_image(docker.from_env(), args.tag, build_dir=args.build_dir)
    print(f"{args.tag or default_tag()} {image_id} code {code_digest()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
