"""Builder pieces that need neither git servers nor Docker: link rules, log capping, build
failure messages, and assembling the inference context from trained artifacts."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from worker.builder import (
    ArtifactError,
    _link_escapes,
    assemble_inference_context,
)
from worker.executor.docker_engine import _BuildOutcome, _CappedLog, _record
from worker.lfs import lfs_endpoint


@pytest.mark.parametrize(
    ("link", "target", "escapes"),
    [
        ("a", "b", False),
        ("dir/a", "../b", False),
        ("dir/sub/a", "../../b", False),
        ("dir/a", "./sub/../b", False),
        ("a", "..", True),
        ("a", "../b", True),
        ("dir/a", "../../b", True),
        ("dir/a", "sub/../../../b", True),
        ("a", "/etc/passwd", True),
        ("a", "", True),
    ],
)
def test_link_escapes(link: str, target: str, escapes: bool) -> None:
    assert _link_escapes(link, target) is escapes


def test_capped_log_keeps_head_and_tail() -> None:
    log = _CappedLog(max_chars=100)
    log.write("Step 1/9 : FROM base\n")
    for i in range(1000):
        log.write(f"line {i}\n")
    log.write("ERROR: the end\n")
    text = log.text()
    assert text.startswith("Step 1/9 : FROM base\n")
    assert text.endswith("ERROR: the end\n")
    assert "characters of build log left out" in text
    kept = text.replace(text[text.index("\n[...") : text.index("...]\n") + 5], "")
    assert len(kept) <= 100


def test_capped_log_under_the_cap_is_verbatim() -> None:
    log = _CappedLog(max_chars=1000)
    for part in ("a\n", "b\n", "c\n"):
        log.write(part)
    assert log.text() == "a\nb\nc\n"


def _feed(*items: dict[str, object]) -> _BuildOutcome:
    outcome = _BuildOutcome()
    log = _CappedLog(10_000)
    for item in items:
        _record(item, outcome, log)
    return outcome


def test_failure_message_names_the_step_and_the_telling_line() -> None:
    outcome = _feed(
        {"stream": "Step 1/3 : FROM heldout/base:bookworm\n"},
        {"stream": " ---> 17ecb55ec54b\n"},
        {"stream": "Step 2/3 : RUN pip install -r requirements.txt\n"},
        {"stream": " ---> Running in 1234\n"},
        {"stream": "\x1b[91mERROR: No matching distribution found for torch==9.9\n\x1b[0m"},
        {"stream": "Cleaning up\n"},
        {
            "errorDetail": {
                "code": 1,
                "message": "The command '/bin/sh -c pip install -r requirements.txt' "
                "returned a non-zero code: 1",
            },
            "error": "The command ... returned a non-zero code: 1",
        },
    )
    assert outcome.failure_message() == (
        "Step 2/3 : RUN pip install -r requirements.txt failed with exit code 1 "
        "(last output: ERROR: No matching distribution found for torch==9.9)"
    )


def test_failure_message_for_engine_errors() -> None:
    outcome = _feed(
        {"stream": "Step 1/2 : FROM nowhere/missing:1\n"},
        {"errorDetail": {"message": "pull access denied for nowhere/missing"}},
    )
    assert outcome.failure_message() == (
        "Step 1/2 : FROM nowhere/missing:1 failed: pull access denied for nowhere/missing"
    )


def test_image_id_comes_from_aux() -> None:
    outcome = _feed({"aux": {"ID": "sha256:" + "ab" * 32}}, {"stream": "Successfully built\n"})
    assert outcome.image_id == "sha256:" + "ab" * 32
    assert outcome.error is None


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    (repo / "inference" / "artifact").mkdir(parents=True)
    (repo / "inference" / "Dockerfile").write_text("FROM heldout/base:bookworm\n")
    (repo / "inference" / "process.py").write_text("print(1)\n")
    (repo / "inference" / "artifact" / "README").write_text("placeholder\n")
    (repo / "training").mkdir()
    (repo / "training" / "Dockerfile").write_text("FROM heldout/base:bookworm\n")
    return repo


@pytest.fixture
def artifacts(tmp_path: Path) -> Path:
    out = tmp_path / "output"
    (out / "fold0").mkdir(parents=True)
    (out / "model.pt").write_bytes(b"\x00weights")
    (out / "fold0" / "model.pt").write_bytes(b"fold0")
    (out / "latest.pt").symlink_to("model.pt")
    return out


def test_assemble_copies_inference_and_artifacts(
    repo: Path, artifacts: Path, tmp_path: Path
) -> None:
    dest = assemble_inference_context(repo, "inference", artifacts, tmp_path / "ctx")
    assert (dest / "Dockerfile").read_text() == "FROM heldout/base:bookworm\n"
    assert (dest / "process.py").is_file()
    assert (dest / "artifact" / "README").read_text() == "placeholder\n"
    assert (dest / "artifact" / "model.pt").read_bytes() == b"\x00weights"
    assert (dest / "artifact" / "fold0" / "model.pt").read_bytes() == b"fold0"
    assert os.readlink(dest / "artifact" / "latest.pt") == "model.pt"
    assert not (dest / "training").exists()
    # The repository is left as it was.
    assert sorted(p.name for p in (repo / "inference" / "artifact").iterdir()) == ["README"]


def test_assemble_does_not_write_through_repository_links(
    repo: Path, artifacts: Path, tmp_path: Path
) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("untouched")
    (repo / "inference" / "artifact" / "model.pt").symlink_to(victim)
    dest = assemble_inference_context(repo, "inference", artifacts, tmp_path / "ctx")
    assert victim.read_text() == "untouched"
    assert not (dest / "artifact" / "model.pt").is_symlink()
    assert (dest / "artifact" / "model.pt").read_bytes() == b"\x00weights"


@pytest.mark.parametrize("target", ["/etc/passwd", "../../secret", "../.."])
def test_assemble_refuses_artifact_links_leaving_the_artifacts(
    repo: Path, artifacts: Path, tmp_path: Path, target: str
) -> None:
    (artifacts / "fold0" / "leak").symlink_to(target)
    with pytest.raises(ArtifactError, match="fold0/leak"):
        assemble_inference_context(repo, "inference", artifacts, tmp_path / "ctx")


def test_assemble_refuses_special_files(repo: Path, artifacts: Path, tmp_path: Path) -> None:
    os.mkfifo(artifacts / "pipe")  # reading it would hang the worker
    with pytest.raises(ArtifactError, match="'pipe' is not a regular file"):
        assemble_inference_context(repo, "inference", artifacts, tmp_path / "ctx")


@pytest.mark.parametrize(
    ("inference_dir", "fragment"),
    [
        ("../repo/inference", "must be a relative path"),
        ("/abs/inference", "must be a relative path"),
        ("missing", "has no 'missing/' directory"),
        ("training/..", "must be a relative path"),
    ],
)
def test_assemble_refuses_bad_inference_dirs(
    repo: Path, artifacts: Path, tmp_path: Path, inference_dir: str, fragment: str
) -> None:
    with pytest.raises(ArtifactError, match=fragment):
        assemble_inference_context(repo, inference_dir, artifacts, tmp_path / "ctx")


def test_assemble_needs_a_dockerfile(repo: Path, artifacts: Path, tmp_path: Path) -> None:
    (repo / "inference" / "Dockerfile").unlink()
    with pytest.raises(ArtifactError, match="no Dockerfile in 'inference/'"):
        assemble_inference_context(repo, "inference", artifacts, tmp_path / "ctx")


def test_assemble_refuses_an_artifact_file_in_the_repository(
    repo: Path, artifacts: Path, tmp_path: Path
) -> None:
    placeholder = repo / "inference" / "artifact"
    for p in placeholder.iterdir():
        p.unlink()
    placeholder.rmdir()
    placeholder.write_text("not a directory")
    with pytest.raises(ArtifactError, match="must be a directory"):
        assemble_inference_context(repo, "inference", artifacts, tmp_path / "ctx")


@pytest.mark.parametrize(
    ("url", "endpoint"),
    [
        ("https://github.com/team/repo.git", "https://github.com/team/repo.git/info/lfs"),
        ("https://github.com/team/repo", "https://github.com/team/repo.git/info/lfs"),
        ("https://github.com/team/repo/", "https://github.com/team/repo.git/info/lfs"),
        ("git://example.org/team/repo.git", "https://example.org/team/repo.git/info/lfs"),
        ("file:///srv/repos/team.git", None),
    ],
)
def test_lfs_endpoint_follows_the_clone_url(url: str, endpoint: str | None) -> None:
    assert lfs_endpoint(url) == endpoint
