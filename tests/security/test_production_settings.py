"""Hole 6 of issue 10 (defaults): a production installation refuses to start with the
database password `heldout` or an empty one, or with test-only settings, and says which
setting is wrong; docker-compose.yml has no fallback password at all."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from server.config import Settings

ROOT = Path(__file__).resolve().parents[2]
PG = "postgresql+psycopg://heldout:{}@db:5432/heldout"


@pytest.mark.parametrize("password", ["heldout", ""])
def test_production_refuses_the_default_or_an_empty_database_password(password: str) -> None:
    with pytest.raises(ValidationError) as err:
        Settings(environment="production", database_url=PG.format(password))
    assert "HELDOUT_DATABASE_URL" in str(err.value)


def test_production_names_every_offending_setting() -> None:
    with pytest.raises(ValidationError) as err:
        Settings(
            environment="production",
            database_url=PG.format("heldout"),
            allow_loopback_repos=True,
            fake_gpus=True,
        )
    text = str(err.value)
    assert "HELDOUT_DATABASE_URL" in text and "HELDOUT_ALLOW_LOOPBACK_REPOS" in text
    assert "HELDOUT_FAKE_GPUS" in text


def test_production_with_real_settings_and_development_with_defaults_start() -> None:
    Settings(environment="production", database_url=PG.format("s3cr%40t-long"))
    Settings(environment="production")  # the embedded SQLite file has no password
    Settings(database_url=PG.format("heldout"), allow_loopback_repos=True)  # development


def test_the_server_refuses_to_start_and_says_why(tmp_path: Path) -> None:
    env = {
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": str(ROOT),
        "HELDOUT_DATA_DIR": str(tmp_path),
        "HELDOUT_ENVIRONMENT": "production",
        "HELDOUT_DATABASE_URL": PG.format("heldout"),
    }
    run = subprocess.run(
        [sys.executable, "-m", "server.cli", "server"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert run.returncode != 0
    assert "HELDOUT_DATABASE_URL" in run.stderr and "default" in run.stderr, run.stderr


def test_compose_has_no_fallback_password() -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    assert ":-heldout}" not in text
    compose = yaml.safe_load(text)
    env = compose["x-heldout"]["environment"]
    assert env["HELDOUT_ENVIRONMENT"] == "production"
    assert "${HELDOUT_DB_PASSWORD:?" in env["HELDOUT_DATABASE_URL"]
    assert (
        "${HELDOUT_DB_PASSWORD:?"
        in compose["services"]["postgres"]["environment"]["POSTGRES_PASSWORD"]
    )
    # The registry's password, and the htpasswd file it checks, have no fallback either.
    assert env["HELDOUT_IMAGE_REGISTRY_PASSWORD"].startswith("${HELDOUT_IMAGE_REGISTRY_PASSWORD:?")
    assert any(
        v.startswith("${HELDOUT_REGISTRY_HTPASSWD:?")
        for v in compose["services"]["registry"]["volumes"]
    )
