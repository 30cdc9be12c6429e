"""T3 inference image in two builds, so no step the participant wrote ever runs with the
trained artifacts (and the private training data a training run may have copied into them)
present.

1. Before training (`build_inference_base`): the participant's inference/Dockerfile is built
   as any build is (with the build network), its `artifact/` directory holding only a
   placeholder file with a random name. Where that placeholder landed in the image is where
   the Dockerfile copies `artifact/` to (contracts.md: /output lands in inference/artifact/).
2. After training (`add_artifacts`): a platform-written Dockerfile, `FROM <that image>` and one
   `COPY` of the trained artifacts per place found, no RUN, built with no network. Its
   failures are told in fixed words (`AFTER_TRAINING`); the detail goes to the held log.

An ONBUILD trigger would run participant instructions in the second build: refused in step 1.
"""

from __future__ import annotations

import json
import posixpath
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from worker.builder import (
    ARTIFACT_DIRNAME,
    assemble_inference_context,
    build_image,
    copy_artifacts,
)
from worker.executor.engine import BuildError, Engine, EngineError

PLACEHOLDER_PREFIX = ".heldout-artifact-"
AFTER_TRAINING = (
    "The trained artifacts could not be added to the inference image. What went wrong is "
    "in the training job's log, held until the organizers review it."
)
_COPY_RE = re.compile(r"#\(nop\)\s+(?:COPY|ADD)\s+\S+\s+in\s+(.+?)\s*$")
_WORKDIR_RE = re.compile(r"#\(nop\)\s+WORKDIR\s+(.+?)\s*$")


@dataclass(frozen=True)
class ArtifactPlace:
    path: str  # absolute directory in the image that receives the artifacts' contents
    uid: int
    gid: int

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "uid": self.uid, "gid": self.gid}


@dataclass(frozen=True)
class InferenceBase:
    image_id: str
    places: list[ArtifactPlace]
    log: str


def build_inference_base(
    engine: Engine,
    repo: Path,
    inference_dir: str,
    work: Path,
    tag: str,
    *,
    timeout_s: float,
    max_image_bytes: int,
    network: str | None,
    labels: dict[str, str],
) -> InferenceBase:
    """Step 1. Raises `ArtifactError`/`BuildError` with messages for the participant (no
    private data exists yet, so build logs and details may be shown)."""
    placeholder = f"{PLACEHOLDER_PREFIX}{secrets.token_hex(8)}"
    empty = work / "no-artifacts"
    empty.mkdir(parents=True, exist_ok=True)
    (empty / placeholder).write_bytes(b"")
    context = assemble_inference_context(repo, inference_dir, empty, work / "inference-base")
    res = build_image(
        engine,
        context,
        context,
        tag,
        timeout_s=timeout_s,
        max_image_bytes=max_image_bytes,
        network=network,
        labels=labels,
    )
    config = engine.inspect_image(res.image_id).get("Config") or {}
    if config.get("OnBuild"):
        engine.remove_image(tag)
        raise BuildError(
            "the inference image declares ONBUILD instructions, which heldout does not allow "
            "(they would run after training, next to the trained artifacts)",
            res.log,
        )
    places = _find_places(engine, res.image_id, placeholder)
    return InferenceBase(res.image_id, places, res.log)


def _candidates(engine: Engine, image_id: str) -> list[str]:
    """Directories COPY/ADD wrote to (and their artifact/ subdirectory, for `COPY . dir`)."""
    workdir = "/"
    out: list[str] = []
    for entry in reversed(engine.image_history(image_id)):  # oldest first
        created = str(entry.get("CreatedBy") or "")
        if m := _WORKDIR_RE.search(created):
            workdir = posixpath.normpath(posixpath.join(workdir, m.group(1)))
        elif m := _COPY_RE.search(created):
            dest = posixpath.normpath(posixpath.join(workdir, m.group(1)))
            for cand in (dest, posixpath.join(dest, ARTIFACT_DIRNAME)):
                if cand not in out:
                    out.append(cand)
    return out


def _find_places(engine: Engine, image_id: str, placeholder: str) -> list[ArtifactPlace]:
    places: list[ArtifactPlace] = []
    for cand in _candidates(engine, image_id):
        path = posixpath.join(cand, placeholder)
        try:
            found = engine.read_image_files(image_id, [path])[path]
        except EngineError:  # the candidate is a file, say
            continue
        if found is not None:  # None: not there
            places.append(ArtifactPlace(cand, found.uid, found.gid))
    return places


def add_artifacts(
    engine: Engine,
    base_image_id: str,
    places: list[dict[str, Any]],
    artifacts: Path,
    work: Path,
    tag: str,
    *,
    timeout_s: float,
    max_image_bytes: int,
    labels: dict[str, str],
) -> tuple[str, str]:
    """Step 2: (image id, build log). Raises `ArtifactError`/`BuildError`; the caller shows
    `AFTER_TRAINING` only, as their messages may quote what training wrote."""
    context = work / "with-artifacts"
    context.mkdir(parents=True)
    (context / ARTIFACT_DIRNAME).mkdir()
    copy_artifacts(artifacts, context / ARTIFACT_DIRNAME)
    lines = [f"FROM {base_image_id}"]
    for place in places:
        dest = str(place["path"]).rstrip("/") + "/"
        chown = f"{int(place['uid'])}:{int(place['gid'])}"
        lines.append(f"COPY --chown={chown} {json.dumps([ARTIFACT_DIRNAME + '/', dest])}")
    (context / "Dockerfile").write_text("\n".join(lines) + "\n")
    (context / ".dockerignore").write_text("")
    res = build_image(
        engine,
        context,
        context,
        tag,
        timeout_s=timeout_s,
        max_image_bytes=max_image_bytes,
        network="none",
        labels=labels,
    )
    return res.image_id, res.log
