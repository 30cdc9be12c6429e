"""A segmentation challenge end to end on the real engine, Redis and a Celery worker:
generated lung phantoms (CT-like volumes, two ellipsoid lungs labelled 1 and 2, written as
.mha with anisotropic spacing), a participant "U-Net-style" image (a threshold program)
writing masks in grand-challenge's newer layout `/output/images/<slug>/<uuid>.mha`, its
"weights" in a model tarball mounted at /opt/ml/model, scored with Dice and HD95 per label
with bootstrap intervals on the leaderboard."""

from __future__ import annotations

import csv
import io
import json
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
from fastapi.testclient import TestClient

from server.app import create_app
from server.config import Settings
from tests.conftest import REDIS_URL, need
from tests.support import images
from tests.support.factories import apply_bundle, auth, upload_bytes, user_token
from tests.support.workers import celery_worker, wait_final

sitk = pytest.importorskip("SimpleITK")

pytestmark = [pytest.mark.docker, pytest.mark.redis, pytest.mark.slow]

N_CASES = 4
SHAPE = (24, 32, 32)  # z, y, x
SPACING_XYZ = (1.2, 1.2, 2.5)

# Reads the uncompressed MetaImage it is given (the platform serves the file byte for
# byte), thresholds air-like voxels inside the body, labels them by side (left of the
# midline 1, right 2) and writes the mask where grand-challenge's newer containers do.
SEGMENTER = """
import glob, json, os, struct, sys, uuid

# The "weights": thresholds from the model tarball, unpacked read-only at /opt/ml/model.
model = json.load(open("/opt/ml/model/weights/thresholds.json"))
low, high = model["low"], model["high"]
(path,) = glob.glob("/input/images/ct/*.mha")
raw = open(path, "rb").read()
header, _, data = raw.partition(b"ElementDataFile = LOCAL\\n")
fields = dict(l.split(" = ", 1) for l in header.decode().splitlines() if " = " in l)
nx, ny, nz = (int(v) for v in fields["DimSize"].split())
assert fields["ElementType"] == "MET_SHORT", fields["ElementType"]
values = struct.unpack("<%dh" % (nx * ny * nz), data[: 2 * nx * ny * nz])
mask = bytearray(nx * ny * nz)
for i, v in enumerate(values):
    if low < v < high:
        mask[i] = 1 if (i % nx) < nx // 2 else 2
out = "/output/images/lung-mask"
os.makedirs(out, exist_ok=True)
keep = ("NDims", "DimSize", "ElementSpacing", "Offset", "TransformMatrix", "CenterOfRotation")
lines = ["ObjectType = Image"] + ["%s = %s" % (k, fields[k]) for k in keep if k in fields]
lines += ["BinaryData = True", "BinaryDataByteOrderMSB = False", "ElementType = MET_UCHAR",
          "ElementDataFile = LOCAL"]
with open(os.path.join(out, "%s.mha" % uuid.uuid4()), "wb") as f:
    f.write(("\\n".join(lines) + "\\n").encode() + bytes(mask))
print("segmented", nx, ny, nz, file=sys.stderr)
"""


def _phantom(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(CT in HU, label mask): a body of soft tissue with two air-filled ellipsoid lungs."""
    z, y, x = np.indices(SHAPE).astype(float)
    ct = np.full(SHAPE, -1000, np.int16)
    body = ((y - 16) / 14) ** 2 + ((x - 16) / 15) ** 2 <= 1
    ct[body] = 40
    labels = np.zeros(SHAPE, np.uint8)
    for label, cx in ((1, 9.0), (2, 23.0)):
        c = (12 + rng.uniform(-1, 1), 16 + rng.uniform(-1, 1), cx + rng.uniform(-0.5, 0.5))
        r = (8 + rng.uniform(-1, 1), 9 + rng.uniform(-1, 1), 5 + rng.uniform(-0.5, 0.5))
        d = ((z - c[0]) / r[0]) ** 2 + ((y - c[1]) / r[1]) ** 2 + ((x - c[2]) / r[2]) ** 2
        lung = d <= 1
        labels[lung & body] = label
        ct[lung & body] = -850
        # A partial-volume rim, thicker in some cases, that the threshold misses.
        ct[lung & body & (d > rng.uniform(0.6, 0.9))] = -600
    noise = rng.normal(0, 10, SHAPE).astype(np.int16)
    return (ct + noise).astype(np.int16), labels


def _write(path: Path, array: np.ndarray) -> None:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(SPACING_XYZ)
    sitk.WriteImage(image, str(path), False)  # uncompressed, as the segmenter reads it


def _dataset(root: Path) -> Path:
    rng = np.random.default_rng(17)
    (root / "images" / "ct").mkdir(parents=True)
    (root / "ground-truth" / "lungs").mkdir(parents=True)
    with (root / "labels.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["PatientID", "site"])
        for i in range(N_CASES):
            w.writerow([f"L{i:03d}", "phantom"])
    for i in range(N_CASES):
        ct, labels = _phantom(rng)
        _write(root / "images" / "ct" / f"L{i:03d}.mha", ct)
        _write(root / "ground-truth" / "lungs" / f"L{i:03d}.mha", labels)
    return root


def _bundle() -> dict[str, Any]:
    seg = {"output": "lung-mask", "label": "lungs", "classes": [1, 2]}
    return {
        "version": 1,
        "slug": "lungseg",
        "title": "Lung segmentation on phantoms",
        "datasets": [{"slug": "test", "path": "test"}],
        "phases": [
            {
                "slug": "segmentation",
                "title": "Segmentation",
                "kind": "algorithm",
                "test_dataset": "test",
                "limits": {"wall_time_s": 120},
                "inputs": [{"slug": "ct", "kind": "image", "extension": ".mha"}],
                "outputs": [{"slug": "lung-mask", "kind": "image", "extension": ".mha"}],
                "metrics": {
                    "primary": "hd95",
                    "metrics": [
                        {"name": "hd95", "kind": "hd95", **seg},
                        {"name": "dice", "kind": "dice", **seg},
                        {"name": "dice-left", "kind": "dice", **seg, "classes": [1]},
                    ],
                },
            }
        ],
    }


def _model_tarball(thresholds: dict[str, int]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        data = json.dumps(thresholds).encode()
        info = tarfile.TarInfo("weights/thresholds.json")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.fixture
def live(pg_settings: Settings) -> Any:
    # Slow (real images, every case run): once, on PostgreSQL; the pipeline's database
    # paths are those of test_pipeline_t2.py, run on both.
    settings = pg_settings
    need(REDIS_URL is not None, "Redis (HELDOUT_TEST_REDIS_URL)")
    client = images.client_or_none()
    need(client is not None, "a Docker engine")
    redis.Redis.from_url(settings.broker_url).flushdb()
    settings = settings.model_copy(update={"heartbeat_s": 1})
    with TestClient(create_app(settings)) as api:
        yield settings, api, client


def test_segmentation_masks_are_scored_with_dice_and_hd95(live: Any, tmp_path: Path) -> None:
    settings, api, client = live
    admin = user_token(settings, "admin", admin=True)
    r = apply_bundle(api, admin, _bundle(), {"test": _dataset(tmp_path / "test")})
    assert r.status_code == 200, r.text
    tag = images.build_image(client, "segmenter", SEGMENTER)
    archive = images.save_image(client, [tag], tmp_path / "segmenter.tar.gz", gz=True)
    alice = user_token(settings, "alice")
    model = _model_tarball({"low": -950, "high": -700})
    with celery_worker(settings):
        r = api.post(
            "/api/v1/challenges/lungseg/phases/segmentation/submissions",
            json={
                "upload": upload_bytes(api, alice, archive.read_bytes()),
                "model_upload": upload_bytes(api, alice, model, "model.tar.gz"),
            },
            headers=auth(alice),
        )
        assert r.status_code == 201, r.text
        final = wait_final(api, alice, r.json()["id"])
    assert final["status"] == "succeeded", final
    board = api.get(
        "/api/v1/challenges/lungseg/phases/segmentation/leaderboard", headers=auth(alice)
    ).json()
    (entry,) = board["entries"]
    assert entry["rank"] == 1
    metrics = entry["metrics"]
    # The threshold misses each lung's partial-volume rim, of a thickness that varies by
    # case: Dice below 1, HD95 of a voxel or two (mm), intervals of non-zero width.
    assert 0.4 < metrics["dice"]["value"] < 0.99
    assert 0.4 < metrics["dice-left"]["value"] < 0.99
    assert 1.0 < metrics["hd95"]["value"] < 10.0
    for name in ("dice", "hd95"):
        m = metrics[name]
        assert m["ci_lower"] is not None and m["ci_lower"] < m["ci_upper"]
        assert m["ci_lower"] <= m["value"] <= m["ci_upper"]
    assert entry["value"] == metrics["hd95"]["value"]
    assert board.get("higher_is_better", False) is False
