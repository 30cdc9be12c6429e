"""The registry's settings: credentials go in pairs, and production refuses a registry
without them (it would serve every submission's images, trained models included, to a build
step that reaches it)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from server.config import Settings

# A production database password that is not one of the repository's defaults.
DB = "postgresql+psycopg://heldout:s3cret-Xq7@10.0.0.5:5432/heldout"


def test_user_and_password_go_together(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="HELDOUT_IMAGE_REGISTRY_USER and"):
        Settings(data_dir=tmp_path, image_registry="10.0.0.5:5000", image_registry_user="n")
    with pytest.raises(ValidationError, match="HELDOUT_IMAGE_REGISTRY_USER and"):
        Settings(data_dir=tmp_path, image_registry_password="pw")
    both = Settings(
        data_dir=tmp_path, image_registry="10.0.0.5:5000",
        image_registry_user="node", image_registry_password="pw",
    )  # fmt: skip
    assert both.registry_auth == ("node", "pw")
    assert "pw" not in repr(both)
    assert Settings(data_dir=tmp_path, image_registry="127.0.0.1:5000").registry_auth is None


@pytest.mark.parametrize(
    "registry", ["10.0.0.5:5000", "registry.example.org", "127.0.0.1:5000", "localhost:5000"]
)
def test_production_refuses_a_registry_without_credentials(tmp_path: Path, registry: str) -> None:
    """Loopback too: a build on the host network reaches it, and a node cannot see where
    the registry listens."""
    with pytest.raises(ValidationError, match="HELDOUT_IMAGE_REGISTRY_USER/_PASSWORD"):
        Settings(
            data_dir=tmp_path, environment="production", database_url=DB,
            image_registry=registry,
        )  # fmt: skip
    Settings(
        data_dir=tmp_path, environment="production", database_url=DB, image_registry=registry,
        image_registry_user="node", image_registry_password="pw",
    )  # fmt: skip
    # Development and single-machine installations without a registry need none.
    Settings(data_dir=tmp_path, image_registry=registry)
    Settings(data_dir=tmp_path, environment="production", database_url=DB)
