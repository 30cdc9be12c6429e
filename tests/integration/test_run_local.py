"""`heldout run-local` on the participant's own machine: it never removes an image it did not
create. Real engine."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import need
from tests.support import images
from tests.support.factories import stoic_bundle
from tests.support.workers import ROOT

pytestmark = [pytest.mark.docker]


UID = "1.2.826.0.1.3680043.8.498.1002562958136271957742347893116657470"


def _run_local(
    tmp: Path, image: str, *, as_json: bool = True, ids: tuple[str, str] = ("P000", "P001")
) -> subprocess.CompletedProcess[str]:
    bundle = tmp / "bundle.yaml"
    bundle.write_text(yaml.safe_dump(stoic_bundle(limits={"wall_time_s": 60})))
    cases = tmp / "mine"
    if not cases.exists():
        images.write_ct_dataset(cases, [(ids[0], 50, 1, 1), (ids[1], 60, 0, 0)])
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "server.cli",
            "run-local",
            "--bundle",
            str(bundle),
            "--phase",
            "qualification",
            "--image",
            image,
            "--cases",
            str(cases),
            *(["--json"] if as_json else []),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_run_local_keeps_the_participants_own_tags(tmp_path: Path) -> None:
    """The upstream flow: build, `docker save` (two tags of one image), then run-local on the
    archive. The participant's tags, and the image behind them, are still there afterwards;
    only the run's own `heldout/local-*` tag is gone."""
    client = images.client_or_none()
    need(client is not None, "a Docker engine")
    assert client is not None
    tag = images.build_image(client, "run-local-own", images.WELL_BEHAVED)
    image = client.images.get(tag)
    other = "heldout-test/run-local-own:submitted-last-week"
    image.tag("heldout-test/run-local-own", "submitted-last-week")
    try:
        archive = images.save_image(client, [tag], tmp_path / "algo.tar")
        proc = _run_local(tmp_path, str(archive))
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert json.loads(proc.stdout)["status"] == "succeeded"
        after = client.images.get(image.id)
        assert tag in after.tags and other in after.tags
        assert not [t for t in after.tags if t.startswith("heldout/local-")]
    finally:
        client.images.remove(other)


def test_run_local_shows_the_algorithms_stderr(tmp_path: Path) -> None:
    """The plain report (not only --json) shows what the algorithm wrote to stderr."""
    client = images.client_or_none()
    need(client is not None, "a Docker engine")
    assert client is not None
    script = "import sys\nsys.stderr.write('ModuleNotFoundError: no module named ct_net\\n')\n"
    tag = images.build_image(client, "run-local-stderr", script + "sys.exit(3)\n")
    proc = _run_local(tmp_path, tag, as_json=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = [line for line in proc.stdout.splitlines() if "stderr |" in line]
    assert len(lines) == 2  # one per case
    assert all("no module named ct_net" in line for line in lines)
    assert "result: failed" in proc.stdout


def test_run_local_names_cases_as_the_dataset_does(tmp_path: Path) -> None:
    """DICOM-UID-style case ids (dots inside) are one case each, as on the platform; a case
    with two files for one input (an .mhd/.zraw pair) is refused by name, not half-staged."""
    client = images.client_or_none()
    need(client is not None, "a Docker engine")
    assert client is not None
    tag = images.build_image(client, "run-local-uid", images.WELL_BEHAVED)
    ids = (f"{UID}1", f"{UID}2")
    proc = _run_local(tmp_path, tag, ids=ids)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = json.loads(proc.stdout)
    assert sorted(out["cases"]) == sorted(ids)
    (tmp_path / "mine" / "images" / "ct" / f"{ids[0]}.zraw").write_bytes(b"raw")
    proc = _run_local(tmp_path, tag, ids=ids)
    assert proc.returncode == 2
    message = " ".join(re.sub("[│╭╮╰╯─]", " ", proc.stderr).split())  # rich's error box
    assert f"case '{ids[0]}' has two files" in message


DICOM_UIDS = ("1.2.840.113654.2.70.1.97", "1.2.840.113654.2.70.1.98")


def _as_pair(mha: Path, compress: bool) -> None:
    """Rewrite a case's .mha as an .mhd header and its .zraw (zlib) or .raw data file."""
    import zlib

    raw = mha.read_bytes()
    cut = raw.index(b"ElementDataFile = LOCAL\n")
    header, data = raw[:cut], raw[cut + len(b"ElementDataFile = LOCAL\n") :]
    stem = mha.name[: -len(".mha")]
    ext = ".zraw" if compress else ".raw"
    if compress:
        data = zlib.compress(data)
        header += f"CompressedData = True\nCompressedDataSize = {len(data)}\n".encode()
    (mha.parent / f"{stem}.mhd").write_bytes(header + f"ElementDataFile = {stem}{ext}\n".encode())
    (mha.parent / f"{stem}{ext}").write_bytes(data)
    mha.unlink()


@pytest.mark.parametrize("labels", [True, False])
def test_run_local_stages_mhd_pairs_under_dicom_uid_names(tmp_path: Path, labels: bool) -> None:
    """STOIC's own layout: cases named by DICOM UIDs, one an .mhd/.zraw pair and one an
    .mhd/.raw pair. Each is one case, staged as one .mha with its header fields (the image
    reads PatientAge from it: the output is age/100), with or without labels.csv."""
    client = images.client_or_none()
    need(client is not None, "a Docker engine")
    assert client is not None
    tag = images.build_image(client, "run-local-uid", images.WELL_BEHAVED)
    cases = tmp_path / "mine"
    images.write_ct_dataset(cases, [(DICOM_UIDS[0], 50, 1, 1), (DICOM_UIDS[1], 60, 0, 0)])
    for uid, compress in zip(DICOM_UIDS, (True, False), strict=True):
        _as_pair(cases / "images" / "ct" / f"{uid}.mha", compress)
    if not labels:
        (cases / "labels.csv").unlink()
    proc = _run_local(tmp_path, tag)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = json.loads(proc.stdout)
    assert sorted(out["cases"]) == list(DICOM_UIDS)
    covid = {c: r["outputs"]["probability-covid-19"] for c, r in out["cases"].items()}
    assert covid == {DICOM_UIDS[0]: "0.5", DICOM_UIDS[1]: "0.6"}


def test_run_local_stages_nifti_and_dicom_series_as_mha(tmp_path: Path) -> None:
    """As the platform's ingest converts them: a .nii.gz case and a DICOM series directory
    reach the algorithm as one .mha each (the image reads only .mha; PatientAge absent: 0.5)."""
    from tests.support.medical import volume, write_dicom_series, write_nifti

    client = images.client_or_none()
    need(client is not None, "a Docker engine")
    assert client is not None
    tag = images.build_image(client, "run-local-uid", images.WELL_BEHAVED)
    cases = tmp_path / "mine"
    images.write_ct_dataset(cases, [("P000", 50, 1, 1), ("P001", 60, 0, 0)])
    folder = cases / "images" / "ct"
    for mha in folder.glob("*.mha"):
        mha.unlink()
    write_nifti(folder / "P000.nii.gz", volume(1))
    write_dicom_series(folder / "P001", volume(2), "1.2.826.0.1.3680043.8.498.5")
    proc = _run_local(tmp_path, tag)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = json.loads(proc.stdout)
    covid = {c: r["outputs"]["probability-covid-19"] for c, r in out["cases"].items()}
    assert covid == {"P000": "0.5", "P001": "0.5"}
