"""Bundles through the API: created, applied again without change, refused with the field."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from server.config import Settings
from tests.support.factories import (
    apply_bundle,
    auth,
    stoic_bundle,
    stoic_cases,
    user_token,
    write_dataset,
)


def test_apply_twice_changes_nothing(api: TestClient, settings: Settings, tmp_path: Path) -> None:
    admin = user_token(settings, "admin", admin=True)
    ds = write_dataset(tmp_path / "test", stoic_cases())
    first = apply_bundle(api, admin, stoic_bundle(), {"test": ds})
    assert first.status_code == 200, first.text
    assert first.json()["changed"] is True
    assert "phase qualification" in first.json()["created"]
    before = api.get("/api/v1/challenges/stoic", headers=auth(admin)).json()

    second = apply_bundle(api, admin, stoic_bundle(), {"test": ds})
    assert second.status_code == 200
    assert second.json()["changed"] is False
    assert second.json()["created"] == second.json()["updated"] == []
    assert api.get("/api/v1/challenges/stoic", headers=auth(admin)).json() == before
    datasets = api.get("/api/v1/challenges/stoic/datasets", headers=auth(admin)).json()
    assert [d["version"] for d in datasets] == [1]
    assert datasets[0]["digest"].startswith("sha256:")

    # A metric change updates the phase and bumps its metrics version (re-evaluation key).
    changed = stoic_bundle()
    changed["phases"][0]["metrics"]["primary"] = "auc-covid"
    third = apply_bundle(api, admin, changed)
    assert third.json()["updated"] == ["phase qualification"]
    phase = api.get("/api/v1/challenges/stoic/phases/qualification", headers=auth(admin)).json()
    assert phase["metrics_version"] == 2


def test_changed_dataset_gets_new_version(
    api: TestClient, settings: Settings, tmp_path: Path
) -> None:
    admin = user_token(settings, "admin", admin=True)
    ds = write_dataset(tmp_path / "test", stoic_cases())
    apply_bundle(api, admin, stoic_bundle(), {"test": ds})
    (ds / "labels.csv").write_text((ds / "labels.csv").read_text().replace("P000,1,1", "P000,1,0"))
    r = apply_bundle(api, admin, stoic_bundle(), {"test": ds})
    assert "dataset test" in r.json()["updated"]
    datasets = api.get("/api/v1/challenges/stoic/datasets", headers=auth(admin)).json()
    assert datasets[0]["version"] == 2


def test_malformed_bundles_name_the_field(
    api: TestClient, settings: Settings, tmp_path: Path
) -> None:
    admin = user_token(settings, "admin", admin=True)
    ds = write_dataset(tmp_path / "test", stoic_cases())

    typo = stoic_bundle(limits={"wall_time_s": 60, "memroy_mb": 100})
    r = apply_bundle(api, admin, typo, {"test": ds})
    assert r.status_code == 422
    assert r.json()["field"] == "phases[0].limits.memroy_mb"
    assert "memroy_mb" in r.json()["detail"]

    bad_metric = stoic_bundle()
    bad_metric["phases"][0]["metrics"]["metrics"][0]["output"] = "nope"
    r = apply_bundle(api, admin, bad_metric, {"test": ds})
    assert r.status_code == 422 and "'nope'" in r.json()["detail"]

    bad_primary = stoic_bundle()
    bad_primary["phases"][0]["metrics"]["primary"] = "missing"
    r = apply_bundle(api, admin, bad_primary, {"test": ds})
    assert r.status_code == 422 and "primary metric 'missing'" in r.json()["detail"]

    no_content = apply_bundle(api, admin, stoic_bundle())
    assert no_content.status_code == 422
    assert no_content.json()["field"] == "datasets.test"

    undeclared = stoic_bundle()
    undeclared["phases"][0]["test_dataset"] = "ghost"
    r = apply_bundle(api, admin, undeclared, {"test": ds})
    assert r.status_code == 422 and "'ghost'" in r.json()["detail"]

    r = api.post("/api/v1/challenges/apply", json={"bundle": "x"}, headers=auth(admin))
    assert r.status_code == 422 and r.json()["field"] == "bundle"

    r = api.post("/api/v1/challenges/apply", json={"bundel": {}}, headers=auth(admin))
    assert r.status_code == 422 and r.json()["field"] in ("bundel", "bundle")

    # Nothing was created by any of the refused bundles.
    assert api.get("/api/v1/challenges", headers=auth(admin)).json() == []


def test_bad_dataset_layout_is_refused(api: TestClient, settings: Settings, tmp_path: Path) -> None:
    admin = user_token(settings, "admin", admin=True)
    ds = write_dataset(tmp_path / "test", stoic_cases())
    (ds / "images" / "ct" / "P999.mha").write_bytes(b"orphan")
    r = apply_bundle(api, admin, stoic_bundle(), {"test": ds})
    assert r.status_code == 422
    assert "P999.mha has no row in labels.csv" in r.json()["detail"]


def test_only_admins_create_and_only_organizers_update(
    api: TestClient, settings: Settings, tmp_path: Path
) -> None:
    admin = user_token(settings, "admin", admin=True)
    alice = user_token(settings, "alice")
    ds = write_dataset(tmp_path / "test", stoic_cases())
    r = apply_bundle(api, alice, stoic_bundle(), {"test": ds})
    assert r.status_code == 403
    assert apply_bundle(api, admin, stoic_bundle(), {"test": ds}).status_code == 200
    assert apply_bundle(api, alice, stoic_bundle()).status_code == 403
    # Named organizers may update.
    user_token(settings, "olga")
    bundle = stoic_bundle()
    bundle["organizers"] = ["olga"]
    assert apply_bundle(api, admin, bundle).status_code == 200
    olga = user_token(settings, "olga")
    r = apply_bundle(api, olga, bundle)
    assert r.status_code == 200 and r.json()["changed"] is False
