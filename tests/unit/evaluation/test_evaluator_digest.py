"""The evaluation image is named by the digest of its own code: any change to a module, the
Dockerfile or the pinned requirements gives another digest and another tag."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from evaluation import build_image
from evaluation.build_image import PACKAGE_DIR, code_digest, default_tag


@pytest.fixture
def package(tmp_path: Path) -> Path:
    copy = tmp_path / "evaluation"
    shutil.copytree(PACKAGE_DIR, copy, ignore=shutil.ignore_patterns("__pycache__"))
    return copy


def test_the_digest_is_the_code_and_only_the_code(package: Path) -> None:
    assert code_digest(package) == code_digest(PACKAGE_DIR)
    assert default_tag(package) == default_tag()
    assert default_tag().startswith("heldout/evaluation:") and default_tag() != (
        "heldout/evaluation:latest"
    )
    (package / "__pycache__").mkdir(exist_ok=True)
    (package / "__pycache__" / "x.pyc").write_bytes(b"\0")
    (package / "notes.txt").write_text("not part of the image")
    assert code_digest(package) == code_digest(PACKAGE_DIR)


@pytest.mark.parametrize("name", ["metrics.py", "evaluate.py", "Dockerfile"])
def test_any_change_to_a_file_of_the_image_changes_the_digest(package: Path, name: str) -> None:
    before = code_digest(package)
    with (package / name).open("a") as f:
        f.write("\n# changed\n")
    assert code_digest(package) != before
    assert default_tag(package) != default_tag()


def test_a_new_module_or_requirement_changes_the_digest(
    package: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = code_digest(package)
    (package / "extra.py").write_text("X = 1\n")
    assert code_digest(package) != before
    pinned = code_digest(PACKAGE_DIR)
    monkeypatch.setattr(build_image, "REQUIREMENTS", (*build_image.REQUIREMENTS, "six==1.16.0"))
    assert code_digest(PACKAGE_DIR) != pinned
