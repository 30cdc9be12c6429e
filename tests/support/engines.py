"""A second worker node's Docker engine on this machine, for the many-node tests.

It is a test-owned dockerd (`services.DockerEngine`: its own data root, exec root, socket,
pid file, bridge and configuration file, the shared engine's runtimes registered) and shares
no image store with the shared engine, so node B has none of the images node A loaded or
built. Nothing can be pulled from outside here: what a node holds before any submission
arrives (the base images builds start from, heldout's evaluation image) is copied in from
the shared engine, and everything else must reach it the way it reaches a real node.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import docker

from tests.conftest import need
from tests.support.services import DockerEngine, docker_engine

# scripts/base-image.sh: algorithm images start from base, codebase builds and the
# evaluation image from python.
BASE_IMAGES = ("heldout/base:bookworm", "heldout/python:bookworm")


def node_config(registry: str | None = None) -> dict[str, Any]:
    """dockerd settings beyond the defaults: the installation's registry over plain HTTP.
    The engine already trusts 127.0.0.0/8 so; naming it also covers a `localhost:` or
    non-loopback address."""
    return {"insecure-registries": [registry]} if registry else {}


def node_images(shared: docker.DockerClient) -> list[str]:
    """What every node's engine holds from its installation: the base images and heldout's
    evaluation image (built on the shared engine the first time, as a worker there would)."""
    from evaluation.build_image import build_evaluation_image, default_tag

    for tag in BASE_IMAGES:
        shared.images.get(tag)  # scripts/base-image.sh builds them; missing is a setup error
    try:
        shared.images.get(default_tag())
    except docker.errors.ImageNotFound:
        build_evaluation_image(shared, tag=default_tag())
    return [*BASE_IMAGES, default_tag()]


@contextmanager
def node_engine(shared: docker.DockerClient, registry: str | None = None) -> Iterator[DockerEngine]:
    """A started second engine holding `node_images`; stopped, unmounted and deleted after
    (its containers with it)."""
    need(shutil.which("dockerd") is not None and os.geteuid() == 0, "dockerd, as root")
    tags = node_images(shared)
    with docker_engine(node_config(registry)) as engine:
        engine.load(*tags)
        yield engine
