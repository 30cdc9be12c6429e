"""Reading a challenge bundle (YAML) into a validated ChallengeSpec, with errors that name the
offending field the way an organizer wrote it (`phases[0].limits.memroy_mb`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from server.challenges.schemas import ChallengeSpec
from server.errors import InvalidInput


def _loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "bundle"


def validation_message(exc: ValidationError) -> tuple[str, str]:
    """The first error's field path and a readable message listing all errors."""
    errors = exc.errors()
    lines = [f"{_loc(e['loc'])}: {e['msg']}" for e in errors]
    return _loc(errors[0]["loc"]) if errors else "bundle", "; ".join(lines)


def parse_spec(data: Any) -> ChallengeSpec:
    if not isinstance(data, dict):
        raise InvalidInput("a bundle must be a mapping with slug, title and phases", field="bundle")
    data = dict(data)
    version = data.pop("version", 1)
    if version != 1:
        raise InvalidInput(f"unsupported bundle version {version!r} (expected 1)", field="version")
    try:
        return ChallengeSpec.model_validate(data)
    except ValidationError as exc:
        field, message = validation_message(exc)
        raise InvalidInput(f"invalid bundle: {message}", field=field) from exc


def load_bundle(path: Path) -> ChallengeSpec:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InvalidInput(f"cannot read bundle {path}: {exc.strerror}", field="bundle") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise InvalidInput(f"bundle {path} is not valid YAML{where}", field="bundle") from exc
    return parse_spec(data)
