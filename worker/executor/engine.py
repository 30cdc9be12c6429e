"""The engine interface: every image operation the worker needs, backend-neutral.

An `Engine` is what the worker asks of a container engine besides running participant
containers: load an uploaded image archive, inspect, tag, list and remove images, read a
file out of an image, build an image from a context directory. A `Backend` is an `Engine`
that also runs containers (the `Executor` interface of `base`):

    backend = steps.backend(settings)                    # worker/executor/docker.py
    ids = backend.load_archive(stream)                   # intake
    built = backend.build(context, "Dockerfile", tag, timeout_s=600, network="host")
    result = backend.run(spec, dest)                     # provision → ... → deprovision

The Docker backend (`worker/executor/docker*.py`) is the only module that imports the
Docker SDK; a second backend (a Kubernetes Job runner, a remote site) is one more module
implementing `Backend`, and the fake (`fake.py`) implements it in memory for unit tests.
Engine failures surface as the exceptions below, never as an SDK's own.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from worker.executor.base import Executor


class EngineError(Exception):
    """The engine failed or refused an operation for a reason of its own (the platform's)."""


class ImageNotFound(EngineError):
    """No image of that id or tag on the engine."""


class RegistryError(EngineError):
    """A push to or pull from the image registry failed (unreachable, refused, unknown
    digest); `str()` says why."""


class ArchiveRefused(Exception):
    """The engine could not load an image archive (the archive's fault); `str()` says why."""


class BuilderError(Exception):
    """A failure caused by the codebase; `message` is shown to the participant."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BuildError(BuilderError):
    """`docker build` failed; `log` is the (capped) build log, kept for the participant."""

    def __init__(self, message: str, log: str) -> None:
        super().__init__(message)
        self.log = log


@dataclass(frozen=True)
class BuiltImage:
    """What `Engine.build` produced: the image id and the (capped) build log."""

    image_id: str
    log: str


@dataclass(frozen=True)
class ImageFile:
    """A path read out of an image: its owner and, for a small regular file, its bytes."""

    uid: int
    gid: int
    content: bytes | None  # None: not a regular file, or larger than asked for

    def text(self) -> str | None:
        return None if self.content is None else self.content.decode("utf-8", "replace")


@dataclass(frozen=True)
class ImageRef:
    id: str
    tags: list[str]


def resolve_user(user: str, passwd: str | None, group: str | None) -> tuple[int, int] | None:
    """Numeric (uid, gid) of a Docker USER string ("name", "uid", "name:group", ...) given
    the image's /etc/passwd and /etc/group; None when a name is not found there."""
    name, _, grp = user.strip().partition(":")
    users = {f[0]: (int(f[2]), int(f[3])) for f in _db_rows(passwd, 4)}
    if name.isdigit():
        # Docker's rule: a numeric uid without a passwd entry gets gid 0.
        uid, gid = int(name), next((g for u, g in users.values() if u == int(name)), 0)
    elif name in users:
        uid, gid = users[name]
    else:
        return None
    if grp:
        groups = {f[0]: int(f[2]) for f in _db_rows(group, 3)}
        if grp.isdigit():
            gid = int(grp)
        elif grp in groups:
            gid = groups[grp]
        else:
            return None
    return uid, gid


def _db_rows(text: str | None, min_fields: int) -> Iterator[list[str]]:
    for line in (text or "").splitlines():
        f = line.split(":")
        if len(f) >= min_fields and all(f[i].isdigit() for i in range(2, min_fields)):
            yield f


class Engine(ABC):
    """Image operations on one container engine."""

    @abstractmethod
    def storage_root(self) -> Path | None:
        """Where the engine keeps its images on this host (its free space is measured before
        a load); None when that is not a local directory."""

    @abstractmethod
    def runtimes(self) -> set[str]:
        """The container runtimes the engine has registered ("runc", "runsc", ...)."""

    @abstractmethod
    def load_archive(self, stream: Iterator[bytes]) -> set[str]:
        """Load an uncompressed `docker save` tar; the distinct image ids it held. Raises
        `ArchiveRefused` when the engine cannot load it, `EngineError` when the engine fails."""

    @abstractmethod
    def inspect_image(self, ref: str) -> dict[str, Any]:
        """The engine's record of an image (Docker's `inspect` layout: Id, Size, Config,
        RepoTags, RepoDigests, Os, Architecture). Raises `ImageNotFound`."""

    def has_image(self, ref: str) -> bool:
        """Whether the engine holds an image of that id or tag."""
        try:
            self.inspect_image(ref)
            return True
        except ImageNotFound:
            return False

    @abstractmethod
    def image_history(self, image_id: str) -> list[dict[str, Any]]:
        """The image's layers, newest first (each with CreatedBy)."""

    @abstractmethod
    def tag_image(self, image_id: str, tag: str) -> None:
        """Tag an image "repo:tag"."""

    @abstractmethod
    def remove_image(self, ref: str, *, force: bool = False) -> None:
        """Remove a tag (an image once its last tag goes) or, forced, the image. Raises
        `ImageNotFound`, or `EngineError` (a container still uses it, say)."""

    @abstractmethod
    def list_images(self, reference: str) -> list[ImageRef]:
        """Images with a tag matching `reference` ("repo", "repo/*")."""

    @abstractmethod
    def push_image(
        self, image_id: str, repository: str, auth: tuple[str, str] | None = None
    ) -> str:
        """Push the image to `repository` ("registry/name:tag"; tag "latest" if none) and
        return the reference by digest, "registry/name@sha256:...". The engine keeps no tag
        of `repository` unless the image had no other (so removing its own tags still
        removes it). `auth`: the registry's (user, password). Raises `ImageNotFound`, or
        `RegistryError` when the push fails."""

    @abstractmethod
    def registry_holds(self, ref: str, auth: tuple[str, str] | None = None) -> bool:
        """Whether the registry serves `ref` ("registry/name@sha256:...") now; False when
        it does not, or cannot be asked."""

    @abstractmethod
    def pull_image(self, ref: str, auth: tuple[str, str] | None = None) -> str:
        """Pull `ref` ("registry/name@sha256:...") and return the id of the image it gave;
        the caller checks that id. Raises `RegistryError` when the pull fails."""

    @abstractmethod
    def read_image_files(
        self,
        image_id: str,
        paths: Sequence[str],
        *,
        labels: Mapping[str, str] | None = None,
        max_bytes: int = 1 << 20,
    ) -> dict[str, ImageFile | None]:
        """Read `paths` from the image's filesystem without running it (None: no such path).
        Raises `EngineError` for any other failure."""

    @abstractmethod
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
        max_log_chars: int,
    ) -> BuiltImage:
        """Build `context/dockerfile` (a relative path) and tag it `tag`, honouring the
        context's .dockerignore; no base image is pulled. `network`: the build's network mode
        ("host", "none", None for the engine's default). Raises `BuildError` for what the
        build's author must fix (including a build over `timeout_s`); engine failures raise."""

    @abstractmethod
    def build_evaluation_image(self, tag: str) -> None:
        """Build heldout's own evaluation image (evaluation/build_image.py) as `tag`."""


H = TypeVar("H")


class Backend(Engine, Executor[H]):
    """An engine that also runs participant containers: what the pipeline drives."""
