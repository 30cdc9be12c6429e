"""docs/bundle.md is generated from the bundle schema and matches it; its example is a
valid bundle; every field says what it means."""

from __future__ import annotations

from pathlib import Path

import yaml

from server.challenges import reference
from server.challenges.bundle import parse_spec

DOC = Path(__file__).resolve().parents[3] / "docs" / "bundle.md"


def test_docs_bundle_md_matches_the_schema() -> None:
    assert DOC.read_text() == reference.render(), (
        "docs/bundle.md is stale: python -m server.challenges.reference > docs/bundle.md"
    )


def test_every_field_is_documented() -> None:
    missing = [
        f"{model.__name__}.{name}"
        for _, model in reference._SECTIONS
        for name in model.model_fields
        if not reference.meaning_of(model, name)
    ]
    assert missing == []


def test_every_model_of_the_bundle_has_a_section() -> None:
    from pydantic import BaseModel

    documented = {model for _, model in reference._SECTIONS}
    seen: set[type[BaseModel]] = set()
    todo: list[type[BaseModel]] = [reference.schemas.ChallengeSpec]
    while todo:
        model = todo.pop()
        seen.add(model)
        for info in model.model_fields.values():
            for sub in _models(info.annotation):
                if sub not in seen:
                    todo.append(sub)
    assert seen <= documented


def _models(annotation: object) -> list[type]:
    import typing

    from pydantic import BaseModel

    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for a in typing.get_args(annotation) for m in _models(a)]


def test_the_example_is_a_valid_bundle() -> None:
    spec = parse_spec(yaml.safe_load(reference.EXAMPLE))
    assert spec.slug == "stoic-demo" and spec.phases[0].metrics.ci_level == 0.95
    assert "```yaml\n" + reference.EXAMPLE in DOC.read_text()
