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
import SimpleITK as sitk  # a server dependency: missing, the test fails (never skips)

from tests.support import images
from tests.support.factories import apply_bundle, auth, upload_bytes, user_token
from tests.support.workers import celery_worker, wait_final

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
def live(pg_live: Any) -> Any:
    # Slow (real images, every case run): once, on PostgreSQL; the pipeline's database
    # paths are those of test_pipeline_t2.py, run on both.
    return pg_live


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


# The organizer's own evaluation image, evalutils-style and pure Python (the base image has
# no numpy): reads /input/predictions.json, each job's mask in the newer layout under
# /input/<pk>/output/images/lung-mask/, the reference masks under
# /opt/ml/input/data/ground_truth/lungs/, and writes per-case and aggregate Dice and HD95.
# Surfaces and HD95 by brute force over surface voxels: an independent computation of what
# evaluation/segmentation.py does with distance transforms.
ORGANIZER_EVALUATION = """
import json, math, os

GT = "/opt/ml/input/data/ground_truth/lungs"

def read(path):
    raw = open(path, "rb").read()
    header, _, data = raw.partition(b"ElementDataFile = LOCAL\\n")
    f = dict(l.split(" = ", 1) for l in header.decode().splitlines() if " = " in l)
    assert f["ElementType"] == "MET_UCHAR", (path, f["ElementType"])
    size = tuple(int(v) for v in f["DimSize"].split())
    spacing = tuple(float(v) for v in f["ElementSpacing"].split())
    return size, spacing, data[: size[0] * size[1] * size[2]]

def surface(size, mask):
    nx, ny, nz = size
    out = []
    for i in mask:
        x, y, z = i % nx, (i // nx) % ny, i // (nx * ny)
        near = ((x - 1, y, z), (x + 1, y, z), (x, y - 1, z), (x, y + 1, z),
                (x, y, z - 1), (x, y, z + 1))
        if any(not (0 <= a < nx and 0 <= b < ny and 0 <= c < nz)
               or (a + nx * (b + ny * c)) not in mask for a, b, c in near):
            out.append((x, y, z))
    return out

def q95(values):
    v = sorted(values)
    pos = 0.95 * (len(v) - 1)
    lo = int(math.floor(pos))
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)

def directed(a, b, spacing):
    sx, sy, sz = spacing
    pts = [(x * sx, y * sy, z * sz) for x, y, z in b]
    return [math.sqrt(min((x * sx - px) ** 2 + (y * sy - py) ** 2 + (z * sz - pz) ** 2
                          for px, py, pz in pts)) for x, y, z in a]

dice, hd95 = {}, {}
for job in json.load(open("/input/predictions.json")):
    case = job["inputs"][0]["image"]["name"].rsplit(".", 1)[0]
    (out,) = job["outputs"]
    folder = out["interface"]["relative_path"]
    mask = os.path.join("/input", str(job["pk"]), "output", folder, out["image"]["name"])
    pred_size, pred_spacing, pred = read(mask)
    size, spacing, ref = read(os.path.join(GT, case + ".mha"))
    assert pred_size == size and all(abs(a - b) < 1e-6 for a, b in zip(pred_spacing, spacing))
    d, h = [], []
    for label in (1, 2):
        p = {i for i, v in enumerate(pred) if v == label}
        g = {i for i, v in enumerate(ref) if v == label}
        assert p and g, (case, label)
        d.append(2 * len(p & g) / (len(p) + len(g)))
        sp, sg = surface(size, p), surface(size, g)
        h.append(max(q95(directed(sp, sg, spacing)), q95(directed(sg, sp, spacing))))
    dice[case], hd95[case] = sum(d) / 2, sum(h) / 2

mean = lambda values: sum(values.values()) / len(values)
json.dump({"case": {"dice": dice, "hd95": hd95},
           "aggregates": {"dice": {"mean": mean(dice)}, "hd95": {"mean": mean(hd95)}}},
          open("/output/metrics.json", "w"))
"""


def test_an_organizers_image_scores_the_masks_as_the_built_in_metrics_do(
    live: Any, tmp_path: Path
) -> None:
    """The same participant image and model on two phases of one test set: one scored by
    heldout's Dice/HD95, one by the organizer's evaluation image reading the newer mask
    layout. Both boards agree, and each has bootstrap intervals."""
    settings, api, client = live
    admin = user_token(settings, "admin", admin=True)
    evaluator = images.build_image(
        client, "segmentation-evaluation", ORGANIZER_EVALUATION, user="algorithm"
    )
    evaluator_archive = images.save_image(
        client, [evaluator], tmp_path / "evaluation.tar.gz", gz=True
    )
    bundle = _bundle()
    organizer_phase = {
        **{k: v for k, v in bundle["phases"][0].items() if k != "metrics"},
        "slug": "organizer",
        "title": "Scored by the organizers' image",
        "evaluation": {
            "image": upload_bytes(api, admin, evaluator_archive.read_bytes(), "evaluation.tar.gz"),
            "name": "dice",
            "score": "aggregates.dice.mean",
            "higher_is_better": True,
            "per_case": "case",
            "columns": {"hd95": "aggregates.hd95.mean"},
        },
    }
    bundle["phases"].append(organizer_phase)
    r = apply_bundle(api, admin, bundle, {"test": _dataset(tmp_path / "test")})
    assert r.status_code == 200, r.text
    tag = images.build_image(client, "segmenter", SEGMENTER)
    archive = images.save_image(client, [tag], tmp_path / "segmenter.tar.gz", gz=True)
    alice = user_token(settings, "alice")
    model = _model_tarball({"low": -950, "high": -700})
    boards: dict[str, Any] = {}
    with celery_worker(settings):
        for phase in ("segmentation", "organizer"):
            r = api.post(
                f"/api/v1/challenges/lungseg/phases/{phase}/submissions",
                json={
                    "upload": upload_bytes(api, alice, archive.read_bytes()),
                    "model_upload": upload_bytes(api, alice, model, "model.tar.gz"),
                },
                headers=auth(alice),
            )
            assert r.status_code == 201, r.text
            final = wait_final(api, alice, r.json()["id"])
            assert final["status"] == "succeeded", (phase, final)
            boards[phase] = api.get(
                f"/api/v1/challenges/lungseg/phases/{phase}/leaderboard", headers=auth(alice)
            ).json()
    (builtin,) = boards["segmentation"]["entries"]
    (organizer,) = boards["organizer"]["entries"]
    assert boards["organizer"]["primary_metric"] == "dice"
    assert boards["organizer"]["higher_is_better"] is True
    assert organizer["value"] == pytest.approx(builtin["metrics"]["dice"]["value"], rel=1e-9)
    assert organizer["metrics"]["hd95"]["value"] == pytest.approx(
        builtin["metrics"]["hd95"]["value"], rel=1e-6
    )
    assert 0.4 < organizer["value"] < 0.99 and 1.0 < organizer["metrics"]["hd95"]["value"] < 10
    lo, hi = organizer["ci"]
    assert lo is not None and lo < organizer["value"] < hi
    hd = organizer["metrics"]["hd95"]
    assert hd["ci_lower"] is not None and hd["ci_lower"] < hd["value"] < hd["ci_upper"]
