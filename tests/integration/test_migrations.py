"""Migrations run up and down cleanly on SQLite and PostgreSQL, and agree with the models."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text

from server.config import Settings
from server.db import make_engine
from server.embedded import alembic_config
from server.models import Base
from tests.conftest import POSTGRES_URL, need


def _url(kind: str, tmp_path: Path) -> str:
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'm.db'}"
    need(bool(POSTGRES_URL), "PostgreSQL")
    assert POSTGRES_URL is not None
    return POSTGRES_URL.rsplit("/", 1)[0] + "/heldout_migrations"


@pytest.fixture
def engine_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    url = _url(request.param, tmp_path)
    if request.param == "postgres":
        admin = make_engine(POSTGRES_URL)  # type: ignore[arg-type]
        with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("DROP DATABASE IF EXISTS heldout_migrations"))
            conn.execute(text("CREATE DATABASE heldout_migrations"))
        admin.dispose()
    return url


@pytest.mark.parametrize("engine_url", ["sqlite", "postgres"], indirect=True)
def test_upgrade_check_downgrade(engine_url: str, tmp_path: Path) -> None:
    engine = make_engine(engine_url)
    cfg = alembic_config(Settings(data_dir=tmp_path))
    with engine.connect() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
        conn.commit()
        tables = set(inspect(conn).get_table_names())
        assert {t.name for t in Base.metadata.sorted_tables} <= tables
        # Models and migrations agree: autogenerate would produce nothing.
        diff = compare_metadata(
            MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata
        )
        assert diff == []
        command.downgrade(cfg, "base")
        conn.commit()
        assert set(inspect(conn).get_table_names()) <= {"alembic_version"}
        command.upgrade(cfg, "head")
        conn.commit()
    engine.dispose()
