"""Image references and the allowed-base-image entries of settings and phase bundles.

An entry is an image name, optionally pinned to the engine's image id (or a repository
digest) with `@sha256:<64 hex>`: `heldout/python:bookworm@sha256:...`. Names are compared
in their familiar form (`docker.io/library/x` is `x`, a missing tag is `latest`), as the
engine resolves them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DEFAULT_ALLOWED_BASE_IMAGES = ("heldout/base:bookworm", "heldout/python:bookworm")

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_DOMAIN = r"(?:[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*(?::[0-9]+)?)"
_REFERENCE_RE = re.compile(
    rf"^(?:(?P<domain>{_DOMAIN})/)?(?P<path>{_COMPONENT}(?:/{_COMPONENT})*)"
    r"(?::(?P<tag>[\w][\w.-]{0,127}))?(?:@(?P<digest>sha256:[0-9a-f]{64}))?$"
)
DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")


class ReferenceError(ValueError):
    pass


@dataclass(frozen=True)
class ImageReference:
    name: str  # familiar name with its tag: "heldout/python:bookworm", "ubuntu:latest"
    digest: str | None = None  # "sha256:..." when the reference pins one

    def __str__(self) -> str:
        return f"{self.name}@{self.digest}" if self.digest else self.name


def parse_reference(text: str) -> ImageReference:
    """The familiar form of an image reference; `ReferenceError` when it is not one."""
    match = _REFERENCE_RE.match(text)
    if not match:
        raise ReferenceError(f"{text!r} is not an image reference")
    domain, path = match["domain"], match["path"]
    # As the engine reads it: a first component without '.' or ':' (nor "localhost") is a
    # path component on Docker Hub, not a registry.
    if domain and "." not in domain and ":" not in domain and domain != "localhost":
        path, domain = f"{domain}/{path}", None
        if not re.fullmatch(rf"{_COMPONENT}(?:/{_COMPONENT})*", path):
            raise ReferenceError(f"{text!r} is not an image reference")
    if domain in ("docker.io", "index.docker.io", "registry-1.docker.io"):
        domain = None
    if domain is None and path.startswith("library/") and path.count("/") == 1:
        path = path[len("library/") :]
    name = f"{domain}/{path}" if domain else path
    return ImageReference(f"{name}:{match['tag'] or 'latest'}", match["digest"])


def parse_allowed(entries: list[str]) -> list[ImageReference]:
    """Settings and bundle entries, validated; duplicates and empty lists are refused."""
    if not entries:
        raise ValueError("list at least one base image (an empty list would allow none)")
    parsed = [parse_reference(entry.strip()) for entry in entries]
    names = [p.name for p in parsed]
    if len(set(names)) != len(names):
        raise ValueError(f"base images are listed twice: {sorted(names)}")
    return parsed
