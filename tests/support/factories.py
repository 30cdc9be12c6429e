"""Build test data through the public services, never by poking tables."""

from __future__ import annotations

import csv
import textwrap
from pathlib import Path
from typing import Any

import yaml

from server.accounts import service as accounts
from server.config import Settings
from server.db import session_scope


def user_token(settings: Settings, username: str, *, admin: bool = False) -> str:
    with session_scope(settings) as session:
        user = accounts.get_or_create_user(session, username, is_admin=admin)
        _, token = accounts.create_token(session, user, "test")
    return token


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def write_dataset(
    root: Path,
    cases: dict[str, dict[str, Any]],
    *,
    payload: bytes | None = None,
    slug: str = "ct",
    ext: str = ".mha",
) -> Path:
    """A dataset directory: labels.csv plus one image file per case."""
    (root / "images" / slug).mkdir(parents=True, exist_ok=True)
    columns = list(next(iter(cases.values())).keys())
    with (root / "labels.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["PatientID", *columns])
        for name, labels in cases.items():
            w.writerow([name, *(labels[c] for c in columns)])
    for name in cases:
        data = payload if payload is not None else f"fake image of {name}".encode()
        (root / "images" / slug / f"{name}{ext}").write_bytes(data)
    return root


def stoic_cases(n: int = 6) -> dict[str, dict[str, Any]]:
    return {
        f"P{i:03d}": {"probCOVID": int(i % 2 == 0), "probSevere": int(i % 4 == 0)} for i in range(n)
    }


STOIC_PHASE = textwrap.dedent(
    """
    inputs: [{slug: ct, kind: image, extension: .mha}]
    outputs:
      - {slug: probability-covid-19, kind: json, value_type: number, minimum: 0, maximum: 1}
      - {slug: probability-severe-covid-19, kind: json, value_type: number, minimum: 0, maximum: 1}
    metrics:
      primary: auc-severity
      metrics:
        - {name: auc-severity, kind: auc, output: probability-severe-covid-19, label: probSevere,
           subset_label: probCOVID, subset_value: 1}
        - {name: auc-covid, kind: auc, output: probability-covid-19, label: probCOVID}
    """
)


def stoic_bundle(
    slug: str = "stoic",
    *,
    rules: dict[str, Any] | None = None,
    dataset_path: str = "test",
    limits: dict[str, Any] | None = None,
    extra_phase: dict[str, Any] | None = None,
) -> dict[str, Any]:
    phase: dict[str, Any] = yaml.safe_load(STOIC_PHASE)
    phase.update(
        slug="qualification",
        title="Qualification",
        kind="algorithm",
        test_dataset="test",
        rules=rules or {},
        limits=limits or {"wall_time_s": 120},
    )
    phase.update(extra_phase or {})
    return {
        "version": 1,
        "slug": slug,
        "title": "STOIC-style test challenge",
        "datasets": [{"slug": "test", "path": dataset_path}],
        "phases": [phase],
    }


def upload_bytes(api: Any, token: str, data: bytes, filename: str = "blob.tar") -> str:
    """Upload through the API in two chunks (exercising resume offsets); returns the key."""
    up = api.post(
        "/api/v1/uploads", json={"filename": filename, "size": len(data)}, headers=auth(token)
    )
    assert up.status_code == 201, up.text
    key = up.json()["key"]
    half = len(data) // 2
    for offset, chunk in ((0, data[:half]), (half, data[half:])):
        r = api.put(
            f"/api/v1/uploads/{key}", params={"offset": offset}, content=chunk, headers=auth(token)
        )
        assert r.status_code == 200, r.text
    assert r.json()["status"] == "complete"
    return str(key)


def tar_dir(root: Path) -> bytes:
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for path in sorted(root.rglob("*")):
            tar.add(path, arcname=str(path.relative_to(root)), recursive=False)
    return buf.getvalue()


def apply_bundle(
    api: Any, token: str, bundle: dict[str, Any], datasets: dict[str, Path] | None = None
) -> Any:
    keys = {
        slug: upload_bytes(api, token, tar_dir(path)) for slug, path in (datasets or {}).items()
    }
    return api.post(
        "/api/v1/challenges/apply", json={"bundle": bundle, "datasets": keys}, headers=auth(token)
    )


def submit_blob(
    api: Any,
    token: str,
    challenge: str = "stoic",
    phase: str = "qualification",
    data: bytes = b"not really an image archive",
) -> Any:
    key = upload_bytes(api, token, data)
    return api.post(
        f"/api/v1/challenges/{challenge}/phases/{phase}/submissions",
        json={"upload": key},
        headers=auth(token),
    )


def codebase_challenge(api: Any, settings: Settings, root: Path) -> tuple[str, str]:
    """A challenge `stoic` with one codebase phase `final` (fake images: nothing is trained).

    Returns (organizer token, participant token)."""
    phase: dict[str, Any] = yaml.safe_load(STOIC_PHASE)
    phase.update(
        slug="final",
        title="Final",
        kind="codebase",
        test_dataset="test",
        training_dataset="train",
        limits={"wall_time_s": 60},
    )
    bundle = {
        "version": 1,
        "slug": "stoic",
        "title": "STOIC final",
        "datasets": [{"slug": "test", "path": "test"}, {"slug": "train", "path": "train"}],
        "phases": [phase],
    }
    admin = user_token(settings, "organizer", admin=True)
    datasets = {slug: write_dataset(root / slug, stoic_cases()) for slug in ("test", "train")}
    r = apply_bundle(api, admin, bundle, datasets)
    assert r.status_code == 200, r.text
    return admin, user_token(settings, "alice")


def stoic_challenge(api: Any, settings: Settings, tmp_path: Path, **bundle: Any) -> str:
    """The STOIC-style challenge applied by a new admin (its token is returned), with six
    cases in tmp_path/test; keywords go to `stoic_bundle`."""
    admin = user_token(settings, "admin", admin=True)
    ds = write_dataset(tmp_path / "test", stoic_cases())
    r = apply_bundle(api, admin, stoic_bundle(**bundle), {"test": ds})
    assert r.status_code == 200, r.text
    return admin
