"""Docker backend, image side: `DockerEngine` implements `Engine` (engine.py) on the Docker
SDK. With `docker.py` (containers) this is the only place the worker touches Docker.

Builds use the classic builder through the engine API: the HTTP response is the build, so
closing it at the deadline makes the engine stop the build and remove its intermediate
container (`forcerm`).
"""

from __future__ import annotations

import io
import json
import logging
import re
import tarfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import docker
import docker.errors
import docker.types
import docker.utils
import requests
from docker.utils.json_stream import json_stream

from worker.executor.engine import (
    ArchiveRefused,
    BuildError,
    BuiltImage,
    Engine,
    EngineError,
    ImageFile,
    ImageNotFound,
    ImageRef,
    RegistryError,
)

log = logging.getLogger(__name__)

DEFAULT_MAX_LOG_CHARS = 2_000_000
READ_TIMEOUT_MARGIN_S = 60
_NONZERO_RE = re.compile(r"^The command .* returned a non-zero code: (\d+)$", re.DOTALL)
_ANSI_RE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")  # the engine colours stderr lines
_LOADED = re.compile(r"^Loaded image(?: ID)?: (\S+)$", re.MULTILINE)


def connect(timeout: int = 300) -> docker.DockerClient:
    """A client of the engine named by the environment (DOCKER_HOST, else the socket).
    Raises `EngineError` when there is none to reach."""
    try:
        return docker.from_env(timeout=timeout)
    except docker.errors.DockerException as exc:
        raise EngineError(str(exc)) from exc


class DockerEngine(Engine):
    def __init__(self, client: docker.DockerClient) -> None:
        self.client = client

    @classmethod
    def from_env(cls, timeout: int = 300) -> DockerEngine:
        return cls(connect(timeout))

    def storage_root(self) -> Path | None:
        root = Path(self.client.info().get("DockerRootDir") or "/var/lib/docker")
        return root if root.exists() else None  # a remote engine: its disk is not ours

    def runtimes(self) -> set[str]:
        return set((self.client.info().get("Runtimes") or {}).keys())

    def load_archive(self, stream: Iterator[bytes]) -> set[str]:
        """A manifest naming one image once per tag (newer engines' `docker save REPO`)
        loads it once per entry, and the engine may send those lines in one message, which
        the SDK's parser then misses."""
        ids: set[str] = set()
        try:
            for chunk in self.client.api.load_image(stream):
                if "errorDetail" in chunk:
                    raise ArchiveRefused(chunk["errorDetail"]["message"])
                ids.update(_LOADED.findall(str(chunk.get("stream", ""))))
            # A name (tags are stripped, so not expected) is resolved to the image it names.
            return {i if i.startswith("sha256:") else self.client.images.get(i).id for i in ids}
        except docker.errors.ImageLoadError as e:
            raise ArchiveRefused(str(e)) from e
        except (docker.errors.APIError, requests.RequestException) as e:
            raise EngineError(str(e)) from e

    def inspect_image(self, ref: str) -> dict[str, Any]:
        try:
            return dict(self.client.api.inspect_image(ref))
        except docker.errors.ImageNotFound as e:
            raise ImageNotFound(ref) from e

    def image_history(self, image_id: str) -> list[dict[str, Any]]:
        return list(self.client.api.history(image_id))

    def tag_image(self, image_id: str, tag: str) -> None:
        repo, _, version = tag.rpartition(":")
        self.client.api.tag(image_id, repo or tag, version if repo else "latest")

    def remove_image(self, ref: str, *, force: bool = False) -> None:
        try:
            self.client.api.remove_image(ref, force=force)
        except docker.errors.ImageNotFound as e:
            raise ImageNotFound(ref) from e
        except docker.errors.APIError as e:
            raise EngineError(str(e)) from e

    def list_images(self, reference: str) -> list[ImageRef]:
        return [
            ImageRef(str(image.id), list(image.tags))
            for image in self.client.images.list(filters={"reference": reference})
        ]

    def push_image(
        self, image_id: str, repository: str, auth: tuple[str, str] | None = None
    ) -> str:
        name, tag = _split_tag(repository)
        held = self.inspect_image(image_id)  # ImageNotFound before anything is tagged
        try:
            self.client.api.tag(image_id, name, tag)
        except docker.errors.APIError as e:
            raise EngineError(f"could not tag {image_id} as {repository}: {e}") from e
        try:
            aux = _follow(
                lambda: self.client.api.push(
                    name, tag=tag, stream=True, decode=True, auth_config=_auth_config(auth)
                ),
                "push",
            )
        finally:
            # The registry's name must not hold the image: releasing a submission's own
            # tags has to remove it from the engine.
            if held.get("RepoTags") and f"{name}:{tag}" not in held["RepoTags"]:
                with suppress(docker.errors.APIError):
                    self.client.api.remove_image(f"{name}:{tag}")
        digest = aux.get("Digest")
        if not isinstance(digest, str) or not digest.startswith("sha256:"):
            raise RegistryError(f"the registry gave no digest for {repository}")
        return f"{name}@{digest}"

    def registry_holds(self, ref: str, auth: tuple[str, str] | None = None) -> bool:
        digest = ref.partition("@")[2]
        try:
            found = self.client.api.inspect_distribution(ref, auth_config=_auth_config(auth))
        except (docker.errors.APIError, requests.RequestException) as e:
            log.info("the registry does not serve %s: %s", ref, e)
            return False
        return bool(digest) and (found.get("Descriptor") or {}).get("digest") == digest

    def pull_image(self, ref: str, auth: tuple[str, str] | None = None) -> str:
        name, _, digest = ref.partition("@")
        if not name or not digest.startswith("sha256:"):
            raise RegistryError(f"{ref!r} is not a reference by digest (name@sha256:...)")
        _follow(
            lambda: self.client.api.pull(
                ref, stream=True, decode=True, auth_config=_auth_config(auth)
            ),
            "pull",
        )
        try:
            return str(self.client.api.inspect_image(ref)["Id"])
        except docker.errors.ImageNotFound as e:
            raise RegistryError(f"the engine pulled {ref} but does not hold it") from e

    def read_image_files(
        self,
        image_id: str,
        paths: Sequence[str],
        *,
        labels: Mapping[str, str] | None = None,
        max_bytes: int = 1 << 20,
    ) -> dict[str, ImageFile | None]:
        try:
            container = self.client.containers.create(
                image_id, network_disabled=True, entrypoint=["/"], labels=dict(labels or {})
            )
        except (docker.errors.APIError, requests.RequestException) as e:
            raise EngineError(str(e)) from e
        try:
            return {path: _read_file(container, path, max_bytes) for path in paths}
        finally:
            container.remove(force=True)

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
        max_log_chars: int = DEFAULT_MAX_LOG_CHARS,
    ) -> BuiltImage:
        return _build(
            self.client,
            context,
            dockerfile,
            tag,
            timeout_s=timeout_s,
            network=network,
            labels=labels,
            memory_bytes=memory_bytes,
            max_log_chars=max_log_chars,
        )

    def build_evaluation_image(self, tag: str) -> None:
        from evaluation.build_image import build_evaluation_image

        build_evaluation_image(self.client, tag=tag)


def _auth_config(auth: tuple[str, str] | None) -> dict[str, str] | None:
    return {"username": auth[0], "password": auth[1]} if auth else None


def _split_tag(repository: str) -> tuple[str, str]:
    """("registry:5000/a/b", "tag") of "registry:5000/a/b:tag"; a port is not a tag."""
    name, sep, tag = repository.rpartition(":")
    if not sep or "/" in tag:
        return repository, "latest"
    return name, tag


def _follow(start: Callable[[], Iterator[Any]], what: str) -> dict[str, Any]:
    """Drain a push or pull progress stream; the last `aux` it carried. An error message
    in the stream (the engine answers 200 and reports failures inside) raises."""
    aux: dict[str, Any] = {}
    try:
        for item in start():
            if not isinstance(item, dict):
                continue
            if "error" in item or "errorDetail" in item:
                detail = item.get("errorDetail") or {}
                raise RegistryError(f"{what} failed: {detail.get('message') or item.get('error')}")
            if isinstance(item.get("aux"), dict):
                aux = item["aux"]
    except (docker.errors.APIError, requests.RequestException) as e:
        raise RegistryError(f"{what} failed: {e}") from e
    return aux


def _read_file(container: Any, path: str, max_bytes: int) -> ImageFile | None:
    try:
        chunks, st = container.get_archive(path)
    except docker.errors.NotFound:
        return None
    except (docker.errors.APIError, requests.RequestException) as e:
        raise EngineError(str(e)) from e
    too_big = st.get("size", 0) > max_bytes
    with tarfile.open(fileobj=io.BytesIO(b"".join(chunks))) as tar:
        member = tar.next()
        if member is None:
            return None
        f = tar.extractfile(member) if member.isreg() and not too_big else None
        return ImageFile(member.uid, member.gid, f.read() if f is not None else None)


def _build(
    client: docker.DockerClient,
    context: Path,
    dockerfile_rel: str,
    tag: str,
    *,
    timeout_s: float,
    network: str | None,
    labels: Mapping[str, str] | None,
    memory_bytes: int | None,
    max_log_chars: int,
) -> BuiltImage:
    # long: a build's whole life (params, streamed log, timeout, cleanup) in one try
    started = time.monotonic()
    params: dict[str, Any] = {
        "t": tag,
        "dockerfile": dockerfile_rel,
        "rm": True,
        "forcerm": True,
        "pull": False,
        "nocache": False,
        "q": False,
    }
    if network:
        params["networkmode"] = network
    if labels:
        params["labels"] = json.dumps(dict(labels))
    if memory_bytes:
        params["memory"] = memory_bytes
        params["memswap"] = memory_bytes  # no swap on top

    log = _CappedLog(max_log_chars)
    with _context_archive(context, dockerfile_rel) as archive:
        url = f"{client.api.base_url}/v{client.api.api_version}/build"
        remaining = max(timeout_s - (time.monotonic() - started), 0.001)
        try:
            response = client.api.post(
                url,
                params=params,
                data=archive,
                headers={"Content-Type": "application/x-tar"},
                stream=True,
                # The read timeout only bounds an engine that never answers: while the build
                # streams, the timer in _follow_build (same deadline, no margin) ends it first.
                timeout=(30, remaining + READ_TIMEOUT_MARGIN_S),
            )
        except requests.exceptions.ReadTimeout as exc:
            # Other connection errors are the platform's (engine down) and propagate.
            raise BuildError(f"the build did not start within {timeout_s:g} s", "") from exc
        with response:
            if 400 <= response.status_code < 500:  # e.g. a Dockerfile that does not parse
                raise BuildError(f"the engine refused the build: {_api_message(response)}", "")
            response.raise_for_status()  # an engine failure is the platform's, not the team's
            outcome = _follow_build(response, log, timeout_s - (time.monotonic() - started))

    if outcome.timed_out:
        raise BuildError(f"the build took longer than its limit of {timeout_s:g} s", log.text())
    if outcome.error:
        raise BuildError(outcome.failure_message(), log.text())
    if not outcome.image_id:
        raise BuildError("the build ended without producing an image", log.text())
    return BuiltImage(outcome.image_id, log.text())


@dataclass
class _CappedLog:
    """Keeps the head and the tail of a log: the start says what ran, the end what broke."""

    max_chars: int
    head: list[str] = field(default_factory=list)
    head_chars: int = 0
    tail: deque[str] = field(default_factory=deque)
    tail_chars: int = 0
    dropped: int = 0

    def write(self, text: str) -> None:
        head_cap = self.max_chars // 4
        if self.head_chars < head_cap:
            part = text[: head_cap - self.head_chars]
            self.head.append(part)
            self.head_chars += len(part)
            text = text[len(part) :]
        if not text:
            return
        self.tail.append(text)
        self.tail_chars += len(text)
        tail_cap = self.max_chars - head_cap
        while self.tail_chars > tail_cap and self.tail:
            first = self.tail[0]
            excess = self.tail_chars - tail_cap
            if len(first) <= excess:
                self.tail.popleft()
                self.tail_chars -= len(first)
                self.dropped += len(first)
            else:
                self.tail[0] = first[excess:]
                self.tail_chars -= excess
                self.dropped += excess

    def text(self) -> str:
        middle = f"\n[... {self.dropped} characters of build log left out ...]\n"
        return "".join(self.head) + (middle if self.dropped else "") + "".join(self.tail)


class _context_archive:  # lower case: used like a function in a with statement
    """The build context as a tar file, honoring .dockerignore (as `docker build` does)."""

    def __init__(self, context: Path, dockerfile_rel: str) -> None:
        exclude = None
        ignore = context / ".dockerignore"
        if ignore.is_file():
            lines = (ln.strip() for ln in ignore.read_text(errors="replace").splitlines())
            exclude = [ln for ln in lines if ln and not ln.startswith("#")]
        self._file: IO[bytes] = docker.utils.tar(
            str(context), exclude=exclude, dockerfile=(dockerfile_rel, None), gzip=False
        )

    def __enter__(self) -> IO[bytes]:
        return self._file

    def __exit__(self, *exc: object) -> None:
        self._file.close()


@dataclass
class _BuildOutcome:
    image_id: str | None = None
    error: str | None = None
    timed_out: bool = False
    step: str | None = None  # "Step 3/5 : RUN false" for the step that was running
    step_output: list[str] = field(default_factory=list)

    def failure_message(self) -> str:
        message = (self.error or "the build failed").strip()
        exit_code = _NONZERO_RE.match(message)
        if self.step and exit_code:
            # The engine repeats the whole command; the step line already shows it.
            message = f"{self.step.strip()} failed with exit code {exit_code.group(1)}"
        elif self.step:
            message = f"{self.step.strip()} failed: {message}"
        telling = _telling_line(self.step_output)
        if telling and telling not in message:
            message = f"{message} (last output: {telling})"
        return message[:1000]


def _follow_build(response: Any, log: _CappedLog, timeout_s: float) -> _BuildOutcome:
    """Read the engine's JSON stream into `log` until it ends or the deadline passes."""
    outcome = _BuildOutcome()
    stream = docker.types.CancellableStream(iter(()), response)
    cancelled = threading.Event()

    def cancel() -> None:
        cancelled.set()
        # Shuts the socket: the engine sees the client leave and stops the build. A socket
        # the stream already closed may raise anything; it no longer matters then.
        with suppress(Exception):
            stream.close()

    timer = threading.Timer(max(timeout_s, 0.001), cancel)
    timer.daemon = True
    timer.start()
    try:
        for item in _messages(response):
            _record(item, outcome, log)
    except Exception:
        if not cancelled.is_set():
            raise
    finally:
        timer.cancel()
    # A build that produced its image just as the timer fired did finish in time.
    outcome.timed_out = cancelled.is_set() and outcome.image_id is None
    return outcome


def _messages(response: Any) -> Iterator[dict[str, Any]]:
    chunks: Iterable[bytes] = response.iter_content(chunk_size=None)
    for item in json_stream(chunks):
        if isinstance(item, dict):
            yield item


def _record(item: dict[str, Any], outcome: _BuildOutcome, log: _CappedLog) -> None:
    if "stream" in item:
        text = str(item["stream"])
        log.write(text)
        for line in _ANSI_RE.sub("", text).splitlines():
            if line.startswith("Step "):
                outcome.step = line
                outcome.step_output = []
            elif line.strip() and not line.startswith((" ---> ", "Removing intermediate")):
                outcome.step_output.append(line.strip())
                del outcome.step_output[:-50]
    elif "status" in item and not item.get("progressDetail"):
        log.write(f"{item['status']} {item.get('id', '')}".rstrip() + "\n")
    if "error" in item or "errorDetail" in item:
        detail = item.get("errorDetail") or {}
        outcome.error = str(detail.get("message") or item.get("error") or "the build failed")
        log.write(f"ERROR: {outcome.error}\n")
    aux = item.get("aux")
    if isinstance(aux, dict) and isinstance(aux.get("ID"), str):
        outcome.image_id = aux["ID"]


def _telling_line(lines: list[str]) -> str | None:
    """The line of a failed step's output most likely to say why: the last error-ish one."""
    keywords = ("error", "exception", "not found", "denied", "fatal", "failed", "no such")
    for line in reversed(lines):
        if any(k in line.lower() for k in keywords):
            return line[:300]
    return lines[-1][:300] if lines else None


def _api_message(response: Any) -> str:
    try:
        return str(response.json().get("message", response.text))
    except ValueError:
        return str(response.text)[:500]
