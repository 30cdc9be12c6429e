"""Small `docker save`-layout archives built without an engine: what the client's and
intake's engine-free checks read (manifest.json, the image config, a layer)."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path
from typing import Any


def image_archive(
    path: Path,
    *,
    user: str = "algorithm",
    os_name: str = "linux",
    arch: str = "amd64",
    entrypoint: list[str] | None = None,
    layer_bytes: int = 4096,
) -> Path:
    """An archive intake's archive pass accepts (the engine would refuse its empty layer);
    `layer_bytes` of random-looking data make an upload that takes measurable time."""
    config: dict[str, Any] = {
        "architecture": arch,
        "os": os_name,
        "config": {"User": user, "Entrypoint": entrypoint or ["python3", "-m", "process"]},
    }
    raw = json.dumps(config).encode()
    digest = hashlib.sha256(raw).hexdigest()
    manifest = [{"Config": f"{digest}.json", "RepoTags": None, "Layers": ["l1/layer.tar"]}]
    # Incompressible filler: a gzip of zeros would trip no check, but keep uploads honest.
    layer = b"".join(
        hashlib.sha256(i.to_bytes(8, "big")).digest() for i in range(layer_bytes // 32 + 1)
    )[:layer_bytes]
    with tarfile.open(path, "w") as tar:
        for name, data in (
            (f"{digest}.json", raw),
            ("l1/layer.tar", layer),
            ("manifest.json", json.dumps(manifest).encode()),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path
