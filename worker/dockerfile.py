"""Which images a Dockerfile builds from, read before the engine sees it.

Builds share the engine with every other team's images, so each image a Dockerfile names
must be one the organizers allow (`check_images`). Read as the engine's parser reads it:
parser directives (`# escape=`), line continuations, comment lines inside them, keywords in
any case, `FROM [--platform=...] <image> [AS <name>]` after global `ARG`s with their
defaults substituted (`$NAME`, `${NAME}`; anything fancier is refused: the engine's
expansion is not ours to imitate), references to earlier stages by name or index,
`COPY --from=<image|stage>`, `RUN --mount=...,from=<image|stage>`, and the same inside
`ONBUILD` (they run in a later stage built on this one).
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass

from server.codebases.baseimages import ImageReference, ReferenceError, parse_reference

_DIRECTIVE_RE = re.compile(r"^#\s*([a-zA-Z][a-zA-Z0-9]*)\s*=\s*(.+?)\s*$")
_VAR_RE = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))")


class DockerfileError(Exception):
    """A Dockerfile heldout refuses to build; `message` is for the participant."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class Instruction:
    line: int  # 1-based line where it starts
    keyword: str  # upper case
    args: str


@dataclass(frozen=True)
class ImageUse:
    """An image a Dockerfile builds from: `FROM x` or `COPY --from=x` / `--mount=from=x`."""

    line: int
    what: str  # "FROM", "COPY --from", "RUN --mount from", "ONBUILD COPY --from"...
    image: ImageReference
    written: str  # as the Dockerfile writes it (after ARG substitution)


def instructions(text: str) -> list[Instruction]:
    lines = text.splitlines()
    escape = "\\"
    start = 0
    # Parser directives: only at the very top, before any other comment, blank or instruction.
    for i, raw in enumerate(lines):
        match = _DIRECTIVE_RE.match(raw.strip())
        if not match:
            break
        if match[1].lower() == "escape":
            if match[2] not in ("\\", "`"):
                raise DockerfileError(f"Dockerfile line {i + 1}: invalid escape {match[2]!r}")
            escape = match[2]
        start = i + 1
    out: list[Instruction] = []
    i = start
    while i < len(lines):
        stripped = lines[i].strip()
        if not stripped or stripped.startswith("#"):
            i += 1
            continue
        first = i
        parts: list[str] = []
        line = lines[i].rstrip()
        while True:
            continued = line.endswith(escape)
            parts.append(line[:-1] if continued else line)
            i += 1
            if not continued:
                break
            # Comment and blank lines inside a continued instruction are dropped.
            while i < len(lines) and (not lines[i].strip() or lines[i].lstrip().startswith("#")):
                i += 1
            if i >= len(lines):
                break
            line = lines[i].rstrip()
        joined = " ".join(p.strip() for p in parts).strip()
        match = re.fullmatch(r"([A-Za-z]+)(?:\s+(.*))?", joined, re.DOTALL)
        if not match:
            raise DockerfileError(f"Dockerfile line {first + 1}: cannot read {joined[:40]!r}")
        out.append(Instruction(first + 1, match[1].upper(), (match[2] or "").strip()))
    return out


def image_uses(text: str) -> list[ImageUse]:
    """Every image (not stage) the Dockerfile names, in order; `DockerfileError` when a
    reference cannot be read for sure."""
    uses: list[ImageUse] = []
    global_args: dict[str, str | None] = {}
    stages: list[str | None] = []  # stage names, lower case (the engine folds them)
    for ins in instructions(text):
        if ins.keyword == "ARG" and not stages:
            for word in _words(ins):
                name, eq, default = word.partition("=")
                global_args[name] = default if eq else None
        elif ins.keyword == "FROM":
            uses.extend(_from(ins, global_args, stages))
        elif not stages and ins.keyword not in ("ARG",):
            raise DockerfileError(
                f"Dockerfile line {ins.line}: {ins.keyword} before the first FROM"
            )
        else:
            uses.extend(_sources(ins, ins.keyword, ins.args, stages))
    if not stages:
        raise DockerfileError("the Dockerfile has no FROM instruction")
    return uses


def _words(ins: Instruction, args: str | None = None) -> list[str]:
    try:
        return shlex.split(ins.args if args is None else args, comments=False, posix=True)
    except ValueError:
        raise DockerfileError(f"Dockerfile line {ins.line}: unbalanced quotes") from None


def _from(
    ins: Instruction, global_args: dict[str, str | None], stages: list[str | None]
) -> list[ImageUse]:
    words = _words(ins)
    while words and words[0].startswith("--"):
        if not words[0].lower().startswith("--platform="):
            raise DockerfileError(f"Dockerfile line {ins.line}: FROM {words[0]} is not supported")
        words.pop(0)
    name: str | None = None
    if len(words) == 3 and words[1].lower() == "as":
        name = words[2].lower()
    elif len(words) != 1:
        raise DockerfileError(f"Dockerfile line {ins.line}: FROM takes an image and 'AS <name>'")
    image = _substitute(ins, words[0], global_args)
    earlier = image.lower() in stages
    stages.append(name)
    if earlier or image.lower() == "scratch":  # scratch is the empty image, nobody's
        return []
    return [ImageUse(ins.line, "FROM", _reference(ins, "FROM", image), image)]


def _substitute(ins: Instruction, value: str, global_args: dict[str, str | None]) -> str:
    def one(match: re.Match[str]) -> str:
        var = match[1] or match[2]
        default = global_args.get(var)
        if default is None or "$" in default:
            raise DockerfileError(
                f"Dockerfile line {ins.line}: FROM uses ${var}, which is not an ARG with a "
                "plain default before the first FROM"
            )
        return default

    result = _VAR_RE.sub(one, value)
    if "$" in result or "\\" in result:
        raise DockerfileError(
            f"Dockerfile line {ins.line}: FROM {value} uses a variable form heldout cannot "
            "read; write ${NAME} or $NAME with an ARG default, or the image name itself"
        )
    return result


def _sources(ins: Instruction, what: str, args: str, stages: list[str | None]) -> list[ImageUse]:
    if what.endswith("ONBUILD"):
        keyword, _, rest = args.strip().partition(" ")
        return _sources(ins, f"{what} {keyword.upper()}", rest, stages)
    keyword = what.rsplit(" ", 1)[-1]
    if keyword not in ("COPY", "ADD", "RUN"):
        return []
    uses: list[ImageUse] = []
    for word in _flags(args):
        flag, _, value = word.partition("=")
        flag = flag.lower()
        if flag == "--from":
            uses.extend(_source(ins, f"{what} --from", value, stages))
        elif flag == "--mount":
            for option in value.split(","):
                key, _, val = option.partition("=")
                if key.strip().lower() == "from":
                    uses.extend(_source(ins, f"{what} --mount from", val, stages))
    return uses


_FLAG_RE = re.compile(r"""--(?:[^\s"']|"[^"]*"|'[^']*')+""")


def _flags(args: str) -> list[str]:
    """The leading `--flag=value` words (the rest, a command or paths, is not ours to read),
    with quotes taken out as the engine does."""
    flags: list[str] = []
    rest = args.lstrip()
    while match := _FLAG_RE.match(rest):
        flags.append(re.sub(r"""["']""", "", match[0]))
        rest = rest[match.end() :].lstrip()
    return flags


def _source(ins: Instruction, what: str, value: str, stages: list[str | None]) -> list[ImageUse]:
    if "$" in value or not value:
        raise DockerfileError(
            f"Dockerfile line {ins.line}: {what}={value} must name a stage or an image "
            "without variables"
        )
    if value.isdigit() and int(value) < len(stages) - (0 if what.startswith("ONBUILD") else 1):
        return []
    if value.lower() in stages[:-1] or (what.startswith("ONBUILD") and value.lower() in stages):
        return []
    return [ImageUse(ins.line, what, _reference(ins, what, value), value)]


def _reference(ins: Instruction, what: str, image: str) -> ImageReference:
    sep = " " if what == "FROM" else "="
    try:
        ref = parse_reference(image)
    except ReferenceError:
        raise DockerfileError(
            f"Dockerfile line {ins.line}: {what}{sep}{image} is not an image name"
        ) from None
    if ref.digest:
        raise DockerfileError(
            f"Dockerfile line {ins.line}: {what}{sep}{image}: name the image by its tag "
            "(the organizers pin allowed base images)"
        )
    return ref


def check_images(text: str, allowed: list[list[ImageReference]]) -> list[ImageUse]:
    """The Dockerfile's image uses, each allowed by every list in `allowed` (the
    installation's, then the phase's); else `DockerfileError` naming the line and the rule.
    Pins are the caller's to check against the engine."""
    uses = image_uses(text)
    for use in uses:
        for rule in allowed:
            if use.image.name not in {ref.name for ref in rule}:
                sep = " " if use.what == "FROM" else "="
                names = ", ".join(ref.name for ref in rule)
                raise DockerfileError(
                    f"Dockerfile line {use.line}: {use.what}{sep}{use.written} is not an "
                    f"allowed base image; allowed: {names}"
                )
    return uses
