"""The Dockerfile reader that decides which images a build may start from."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from server.challenges.schemas import PhaseSpec
from server.codebases.baseimages import ReferenceError, parse_allowed, parse_reference
from server.config import Settings
from worker.dockerfile import DockerfileError, check_images, image_uses, instructions
from worker.images import submission_tag

ALLOWED = [parse_allowed(["heldout/base:bookworm", "heldout/python:bookworm"])]


def refused(text: str, allowed: list[list[object]] | None = None) -> str:
    with pytest.raises(DockerfileError) as info:
        check_images(text, allowed or ALLOWED)  # type: ignore[arg-type]
    return info.value.message


def names(text: str) -> list[tuple[int, str, str]]:
    return [(u.line, u.what, u.image.name) for u in image_uses(text)]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("heldout/python:bookworm", "heldout/python:bookworm"),
        ("ubuntu", "ubuntu:latest"),
        ("docker.io/library/ubuntu:22.04", "ubuntu:22.04"),
        ("index.docker.io/heldout/base:bookworm", "heldout/base:bookworm"),
        ("localhost:5000/a/b", "localhost:5000/a/b:latest"),
    ],
)
def test_references_in_familiar_form(text: str, expected: str) -> None:
    assert parse_reference(text).name == expected


@pytest.mark.parametrize("text", ["Heldout/base", "a b", "", "x:", "x@sha256:12"])
def test_bad_references(text: str) -> None:
    with pytest.raises(ReferenceError):
        parse_reference(text)


def test_plain_stages_and_earlier_stage_references() -> None:
    text = (
        "# syntax=docker/dockerfile:1\n"
        "ARG BASE=heldout/python:bookworm VERSION=1\n"
        "FROM --platform=linux/amd64 ${BASE} AS Deps\n"
        "RUN pip install x\n"
        "from heldout/base:bookworm\n"
        "COPY --from=deps /venv /venv\n"
        "COPY --from=0 /a /b\n"
        "FROM deps\n"
        "COPY --from=1 /c /d\n"
    )
    assert names(text) == [
        (3, "FROM", "heldout/python:bookworm"),
        (5, "FROM", "heldout/base:bookworm"),
    ]
    check_images(text, ALLOWED)  # type: ignore[arg-type]


def test_from_another_image_names_the_line_and_the_rule() -> None:
    message = refused("# hi\n\nFROM heldout/submission-3\nRUN cat /secret\n")
    assert message == (
        "Dockerfile line 3: FROM heldout/submission-3 is not an allowed base image; "
        "allowed: heldout/base:bookworm, heldout/python:bookworm"
    )


def test_keywords_in_any_case_and_continuations() -> None:
    text = "FrOm \\\n  # a comment inside\n\n  heldout/base:bookworm \\\n AS a\nfrom evil/x\n"
    assert refused(text).startswith("Dockerfile line 6: FROM evil/x is not an allowed")


def test_escape_directive() -> None:
    text = "# escape=`\nFROM heldout/base:bookworm\nRUN echo `\nFROM evil/x\n"
    assert names(text) == [(2, "FROM", "heldout/base:bookworm")]  # line 4 continues RUN
    text = "# escape=`\nFROM heldout/base:bookworm\nRUN echo \\\nFROM evil/x\n"
    assert refused(text).startswith("Dockerfile line 4: FROM evil/x")


@pytest.mark.parametrize(
    ("text", "line", "what"),
    [
        ("FROM heldout/base:bookworm\nCOPY --from=evil/x /s /s\n", 2, "COPY --from=evil/x"),
        ("FROM heldout/base:bookworm\nCOPY --chown=1 --FROM=evil/x /s /s\n", 2, "COPY --from"),
        (
            "FROM heldout/base:bookworm\nRUN --mount=type=bind,from=evil/x,target=/m cat /m\n",
            2,
            "RUN --mount from=evil/x",
        ),
        ("FROM heldout/base:bookworm\nONBUILD COPY --from=evil/x /s /s\n", 2, "ONBUILD COPY"),
        # A stage may only name stages before it.
        ("FROM heldout/base:bookworm AS a\nCOPY --from=a /s /s\n", 2, "COPY --from=a"),
        ("FROM heldout/base:bookworm\nCOPY --from=0 /s /s\n", 2, "COPY --from=0"),
        ("FROM later\nFROM heldout/base:bookworm AS later\n", 1, "FROM later"),
    ],
)
def test_images_named_outside_from(text: str, line: int, what: str) -> None:
    message = refused(text)
    assert message.startswith(f"Dockerfile line {line}: {what}"), message
    assert "not an allowed base image" in message


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("ARG X\nFROM $X\n", "not an ARG with a plain default"),
        ("FROM ${X:-heldout/base:bookworm}\n", "variable form"),
        ("ARG X=heldout/base:bookworm\nFROM heldout/base:bookworm\nARG Y=e/x\nFROM $Y\n", "ARG"),
        ("ARG A=e/x\nARG B=$A\nFROM $B\n", "plain default"),
        ("FROM heldout/base:bookworm\nCOPY --from=$S /a /b\n", "without variables"),
        ("FROM heldout/base:bookworm@sha256:" + "a" * 64 + "\n", "by its tag"),
        ("FROM Evil/X\n", "not an image name"),
        ("RUN cat /x\n", "before the first FROM"),
        ("# nothing\n", "no FROM"),
        ("FROM --network=host heldout/base:bookworm\n", "not supported"),
        ("FROM a b c d\n", "FROM takes"),
        ("FROM 'heldout/base:bookworm\n", "unbalanced quotes"),
    ],
)
def test_unreadable_image_references_are_refused(text: str, why: str) -> None:
    assert why in refused(text)


def test_scratch_and_allowed_image_in_copy() -> None:
    text = "FROM scratch\nCOPY --from=heldout/python:bookworm /usr/bin/python3 /p\n"
    assert names(text) == [(2, "COPY --from", "heldout/python:bookworm")]


def test_phase_rule_narrows() -> None:
    phase = [parse_allowed(["heldout/python:bookworm"])]
    message = refused("FROM heldout/base:bookworm\n", [*ALLOWED, *phase])
    assert message.endswith("allowed: heldout/python:bookworm")


def test_instruction_lines() -> None:
    ins = instructions("\n# c\nRUN a \\\n b\n\tcopy x y\n")
    assert [(i.line, i.keyword, i.args) for i in ins] == [(3, "RUN", "a b"), (5, "COPY", "x y")]


def test_settings_and_bundle_entries_are_validated() -> None:
    pinned = "heldout/base:bookworm@sha256:" + "b" * 64
    assert Settings(allowed_base_images=[pinned]).allowed_base_images == [pinned]
    with pytest.raises(ValidationError, match="at least one"):
        Settings(allowed_base_images=[])
    with pytest.raises(ValidationError, match="not an image reference"):
        Settings(allowed_base_images=["heldout/base@sha256:12"])
    with pytest.raises(ValidationError, match="twice"):
        Settings(allowed_base_images=["ubuntu", "docker.io/library/ubuntu:latest"])
    with pytest.raises(ValidationError, match="not an image reference"):
        PhaseSpec.model_validate(
            {"allowed_base_images": ["Bad Name"]}  # other fields missing too
        )


def test_submission_tags_are_keyed_and_per_installation(tmp_path: object) -> None:
    a = Settings(database_url="sqlite:///a.db", image_tag_key="k1")
    b = Settings(database_url="sqlite:///b.db", image_tag_key="k1")
    other_key = Settings(database_url="sqlite:///a.db", image_tag_key="k2")
    tag = submission_tag(a, 3, "inference")
    assert tag == submission_tag(a, 3, "inference")
    repo, _, what = tag.partition(":")
    assert what == "inference" and repo.startswith("heldout-") and "/sub-3-" in repo
    assert (
        len({tag, submission_tag(b, 3, "inference"), submission_tag(other_key, 3, "inference")})
        == 3
    )
    assert "submission-3" not in tag
