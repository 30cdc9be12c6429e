"""A backend without an engine, for unit tests of what drives the executor: the "container"
is a Python function given the staged /input and an empty /output. It goes through the same
interface as the Docker backend (provision → execute → collect → deprovision, cleanup_stale),
so code tested on it is the code that runs on Docker; the sandbox itself is proven only on
the real engine (tests/integration).

Images live in memory (`FakeImage`): `load_archive` reads a `docker save` tar's manifest,
config and layers, `build` makes an image from the context's Dockerfile (its FROM image's
config and files, the given labels), and inspect/tag/list/remove/read behave as on Docker.
`fail` makes the next call of a named operation raise a given error (an `EngineError` for
an engine that fails, an `ArchiveRefused` or `BuildError` for the image's own fault).
`registry` is the image registry, manifests by "name@digest": two fakes given the same
dict share one registry, as two nodes do."""

from __future__ import annotations

import fnmatch
import hashlib
import io
import json
import posixpath
import shutil
import tarfile
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from worker.executor.base import RunResult, RunSpec
from worker.executor.engine import (
    Backend,
    BuildError,
    BuiltImage,
    EngineError,
    ImageFile,
    ImageNotFound,
    ImageRef,
    RegistryError,
)


@dataclass
class Behaviour:
    """What the fake container does: `write` fills /output from /input, then the run ends
    with these figures (as the engine would report them)."""

    write: Callable[[Path, Path], None] = lambda inputs, output: None
    exit_code: int = 0
    timed_out: bool = False
    oom_killed: bool = False
    stdout: str = ""
    stderr: str = ""


@dataclass
class FakeHandle:
    spec: RunSpec
    output: Path
    removed: bool = False


@dataclass
class FakeImage:
    """An image as the fake engine keeps it: Docker's inspect record, tags, files by path."""

    attrs: dict[str, Any]
    files: dict[str, ImageFile] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def id(self) -> str:
        return str(self.attrs["Id"])

    @property
    def tags(self) -> list[str]:
        return list(self.attrs.setdefault("RepoTags", []))


def make_image(
    config: Mapping[str, Any] | None = None,
    files: Mapping[str, bytes] | None = None,
    *,
    size: int = 1000,
    uid: int = 0,
) -> FakeImage:
    """An image for `FakeExecutor.add_image`: USER 1000 with a passwd naming it, by default."""
    cfg = {"User": "1000", "Entrypoint": ["python3", "/opt/run.py"], **(config or {})}
    content = {"/etc/passwd": b"root:x:0:0::/root:/bin/sh\nalgo:x:1000:1000::/home:/bin/sh\n"}
    content.update(files or {})
    digest = hashlib.sha256(json.dumps([cfg, sorted(content)], sort_keys=True).encode())
    attrs = {
        "Id": f"sha256:{digest.hexdigest()}",
        "Os": "linux",
        "Architecture": "amd64",
        "Size": size,
        "Config": cfg,
        "RepoTags": [],
        "RepoDigests": [],
    }
    return FakeImage(attrs, {p: ImageFile(uid, uid, c) for p, c in content.items()})


@dataclass
class FakeExecutor(Backend[FakeHandle]):
    """`behaviour(spec)` picks what each run does (by image, say); `runs` records every spec
    in order and `live` the runs not yet deprovisioned, by name; `images` the engine's
    images by id and `calls` every image operation by name."""

    behaviour: Callable[[RunSpec], Behaviour] = lambda spec: Behaviour()
    runs: list[RunSpec] = field(default_factory=list)
    live: dict[str, FakeHandle] = field(default_factory=dict)
    images: dict[str, FakeImage] = field(default_factory=dict)
    engine_runtimes: set[str] = field(default_factory=lambda: {"runc"})
    failures: dict[str, list[Exception]] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)
    registry: dict[str, FakeImage] = field(default_factory=dict)
    storage: Path | None = None  # what storage_root() answers

    # -- test hooks -------------------------------------------------------------------------

    def fail(self, operation: str, error: Exception, times: int = 1) -> None:
        """The next `times` calls of `operation` ("load_archive", "build", "provision", ...)
        raise `error`."""
        self.failures.setdefault(operation, []).extend([error] * times)

    def add_image(self, image: FakeImage, *tags: str) -> str:
        self.images[image.id] = image
        for tag in tags:
            self.tag_image(image.id, tag)
        return image.id

    def _call(self, operation: str) -> None:
        self.calls.append(operation)
        pending = self.failures.get(operation)
        if pending:
            raise pending.pop(0)

    def _find(self, ref: str) -> FakeImage:
        if ref in self.images:
            return self.images[ref]
        full = ref if ":" in ref.rpartition("/")[2] else f"{ref}:latest"
        for image in self.images.values():
            if full in image.tags or ref in image.attrs.get("RepoDigests", []):
                return image
        raise ImageNotFound(ref)

    # -- Engine -----------------------------------------------------------------------------

    def storage_root(self) -> Path | None:
        return self.storage

    def runtimes(self) -> set[str]:
        return set(self.engine_runtimes)

    def load_archive(self, stream: Iterator[bytes]) -> set[str]:
        self._call("load_archive")
        with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
            members = {m.name: m for m in tar.getmembers()}

            def read(name: str) -> bytes:
                f = tar.extractfile(members[name])
                assert f is not None
                return f.read()

            loaded: set[str] = set()
            for entry in json.loads(read("manifest.json")):
                raw = read(entry["Config"])
                doc = json.loads(raw)
                files: dict[str, ImageFile] = {}
                size = 0
                for layer in entry.get("Layers") or []:
                    with tarfile.open(fileobj=io.BytesIO(read(layer))) as lt:
                        for m in lt.getmembers():
                            size += m.size
                            f = lt.extractfile(m) if m.isreg() else None
                            content = f.read() if f is not None else None
                            files["/" + m.name.lstrip("./")] = ImageFile(m.uid, m.gid, content)
                attrs = {
                    "Id": f"sha256:{hashlib.sha256(raw).hexdigest()}",
                    "Os": doc.get("os"),
                    "Architecture": doc.get("architecture"),
                    "Size": size,
                    "Config": doc.get("config") or {},
                    "RepoTags": [],
                    "RepoDigests": [],
                }
                image = self.images.setdefault(attrs["Id"], FakeImage(attrs, files))
                loaded.add(image.id)
        return loaded

    def inspect_image(self, ref: str) -> dict[str, Any]:
        self._call("inspect_image")
        attrs: dict[str, Any] = json.loads(json.dumps(self._find(ref).attrs))  # a copy
        return attrs

    def image_history(self, image_id: str) -> list[dict[str, Any]]:
        return list(self._find(image_id).history)

    def tag_image(self, image_id: str, tag: str) -> None:
        self._call("tag_image")
        tag = tag if ":" in tag.rpartition("/")[2] else f"{tag}:latest"
        for image in self.images.values():
            if tag in image.tags:
                image.attrs["RepoTags"].remove(tag)  # a tag names one image at a time
        self._find(image_id).attrs["RepoTags"].append(tag)

    def remove_image(self, ref: str, *, force: bool = False) -> None:
        self._call("remove_image")
        image = self._find(ref)
        in_use = any(h.spec.image in (image.id, *image.tags) for h in self.live.values())
        digests = image.attrs.setdefault("RepoDigests", [])
        if ref in digests and not force:  # a reference by digest goes like a tag
            digests.remove(ref)
            if image.tags or digests:
                return
        elif ref in image.tags and not force:
            image.attrs["RepoTags"].remove(ref)
            if image.tags:
                return
        elif len(image.tags) > 1 and not force:
            raise EngineError(f"conflict: image {ref} is referenced in multiple repositories")
        if in_use and not force:
            raise EngineError(f"conflict: image {ref} is being used by a running container")
        del self.images[image.id]

    def list_images(self, reference: str) -> list[ImageRef]:
        pattern = reference if ":" in reference.rpartition("/")[2] else f"{reference}:*"
        return [
            ImageRef(image.id, image.tags)
            for image in self.images.values()
            if any(fnmatch.fnmatchcase(t, pattern) for t in image.tags)
        ]

    def push_image(
        self, image_id: str, repository: str, auth: tuple[str, str] | None = None
    ) -> str:
        self._call("push_image")
        image = self._find(image_id)
        name, sep, tag = repository.rpartition(":")
        name = name if sep and "/" not in tag else repository
        # A manifest digest differs from the image id (the config's digest), as on Docker.
        digest = "sha256:" + hashlib.sha256(f"manifest {image.id}".encode()).hexdigest()
        ref = f"{name}@{digest}"
        self.registry[ref] = FakeImage(json.loads(json.dumps(image.attrs)), dict(image.files))
        self.registry[ref].attrs["RepoTags"] = []
        # As on Docker, the pushing engine keeps no reference to the registry: the tag it
        # pushed is removed again, and the digest reference goes with it.
        return ref

    def registry_holds(self, ref: str, auth: tuple[str, str] | None = None) -> bool:
        self._call("registry_holds")
        return ref in self.registry

    def pull_image(self, ref: str, auth: tuple[str, str] | None = None) -> str:
        self._call("pull_image")
        if ref not in self.registry:
            raise RegistryError(f"pull failed: manifest unknown: {ref}")
        pulled = self.registry[ref]
        image = self.images.setdefault(
            pulled.id, FakeImage(json.loads(json.dumps(pulled.attrs)), dict(pulled.files))
        )
        if ref not in image.attrs.setdefault("RepoDigests", []):
            image.attrs["RepoDigests"].append(ref)
        return image.id

    def read_image_files(
        self,
        image_id: str,
        paths: Sequence[str],
        *,
        labels: Mapping[str, str] | None = None,
        max_bytes: int = 1 << 20,
    ) -> dict[str, ImageFile | None]:
        self._call("read_image_files")
        files = self._find(image_id).files
        out: dict[str, ImageFile | None] = {}
        for path in paths:
            f = files.get(path)
            if f is not None and f.content is not None and len(f.content) > max_bytes:
                f = replace(f, content=None)
            out[path] = f
        return out

    def build(
        self,
        context: Path,
        dockerfile: str,
        tag: str,
        *,
        timeout_s: float,
        network: str | None = None,
        labels: Mapping[str, str] | None = None,
        memory_bytes: int | None = None,
        max_log_chars: int = 2_000_000,
    ) -> BuiltImage:
        """FROM names an image on this engine (no pulls); COPY adds context files (owned by
        --chown, else root), USER/ENTRYPOINT/CMD/ONBUILD set the config, anything else (RUN)
        shows in the log and history only. The image's size grows by the context's."""
        # long: a small Dockerfile interpreter, one branch per instruction
        self._call("build")
        lines = [ln.strip() for ln in (context / dockerfile).read_text().splitlines()]
        steps = [ln for ln in lines if ln and not ln.startswith("#")]
        log = "".join(f"Step {i}/{len(steps)} : {s}\n" for i, s in enumerate(steps, 1))
        base_ref = steps[0].split()[1] if steps and steps[0].upper().startswith("FROM ") else ""
        try:
            base = self._find(base_ref)
        except ImageNotFound:
            raise BuildError(f"No such image: {base_ref}", log[:max_log_chars]) from None
        config = json.loads(json.dumps(base.attrs["Config"]))
        config["Labels"] = {**(config.get("Labels") or {}), **(labels or {})}
        files = dict(base.files)
        history = list(base.history)
        workdir = "/"
        for step in steps[1:]:
            word, _, rest = step.partition(" ")
            word, rest = word.upper(), rest.strip()
            created = f"/bin/sh -c {rest}"
            if word == "COPY":
                uid = gid = 0
                if rest.startswith("--chown="):
                    chown, _, rest = rest.partition(" ")
                    u, _, g = chown[len("--chown=") :].partition(":")
                    uid, gid = int(u), int(g or u)
                args = json.loads(rest) if rest.startswith("[") else rest.split()
                *srcs, dest = args
                dest = posixpath.normpath(posixpath.join(workdir, dest))
                for src_name in srcs:
                    src = context / src_name
                    found = [src] if src.is_file() else sorted(src.rglob("*"))
                    for f in (f for f in found if f.is_file()):
                        rel = f.name if src.is_file() else f.relative_to(src).as_posix()
                        target = (
                            dest
                            if src.is_file() and not args[-1].endswith("/")
                            else (posixpath.join(dest, rel))
                        )
                        files[target] = ImageFile(uid, gid, f.read_bytes())
                created = f"/bin/sh -c #(nop) COPY dir:{len(files)} in {dest} "
            elif word == "WORKDIR":
                workdir = posixpath.normpath(posixpath.join(workdir, rest))
                created = f"/bin/sh -c #(nop) WORKDIR {rest}"
            elif word == "USER":
                config["User"] = rest
            elif word in ("ENTRYPOINT", "CMD"):
                config[word.title() if word == "ENTRYPOINT" else "Cmd"] = json.loads(rest)
            elif word == "ONBUILD":
                config["OnBuild"] = [*(config.get("OnBuild") or []), rest]
            history.insert(0, {"CreatedBy": created})
        size = sum(p.stat().st_size for p in context.rglob("*") if p.is_file())
        seed = json.dumps([base.id, config, steps, size], sort_keys=True).encode()
        attrs = {
            **base.attrs,
            "Id": f"sha256:{hashlib.sha256(seed).hexdigest()}",
            "Size": int(base.attrs.get("Size") or 0) + size,
            "Config": config,
            "RepoTags": [],
        }
        image = FakeImage(attrs, files, history)
        self.add_image(image, tag)
        return BuiltImage(image.id, log[:max_log_chars])

    def build_evaluation_image(self, tag: str) -> None:
        from evaluation.build_image import DIGEST_LABEL, code_digest

        self._call("build_evaluation_image")
        self.add_image(make_image({"Labels": {DIGEST_LABEL: code_digest()}}), tag)

    # -- Executor ---------------------------------------------------------------------------

    def provision(self, spec: RunSpec) -> FakeHandle:
        self._call("provision")
        self.live.pop(spec.name, None)  # a leftover of the same name goes first, as on Docker
        handle = FakeHandle(spec, Path(tempfile.mkdtemp(prefix="fake-output-")))
        self.runs.append(spec)
        self.live[spec.name] = handle
        return handle

    def execute(self, handle: FakeHandle) -> RunResult:
        b = self.behaviour(handle.spec)
        b.write(handle.spec.inputs, handle.output)
        return RunResult(
            exit_code=b.exit_code,
            timed_out=b.timed_out,
            oom_killed=b.oom_killed,
            duration_s=0.0,
            limits=handle.spec.limits,
            stdout_tail=b.stdout,
            stderr_tail=b.stderr,
            stdout_bytes=len(b.stdout.encode()),
            stderr_bytes=len(b.stderr.encode()),
        )

    def collect(self, handle: FakeHandle, result: RunResult, dest: Path) -> RunResult:
        shutil.copytree(handle.output, dest, dirs_exist_ok=True)
        return replace(result, output_dir=dest)

    def deprovision(self, handle: FakeHandle) -> None:
        shutil.rmtree(handle.output, ignore_errors=True)
        handle.removed = True
        self.live.pop(handle.spec.name, None)

    def running(self, labels: Mapping[str, str]) -> list[dict[str, str]]:
        return [
            h.spec.all_labels
            for h in self.live.values()
            if all(h.spec.all_labels.get(k) == v for k, v in labels.items())
        ]

    def cleanup_stale(self, labels: Mapping[str, str]) -> list[str]:
        names = [
            name
            for name, h in self.live.items()
            if all(h.spec.all_labels.get(k) == v for k, v in labels.items())
        ]
        for name in names:
            self.deprovision(self.live[name])
        return names
