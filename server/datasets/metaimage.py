"""MetaImage pairs (an `.mhd` header with its `.raw`/`.zraw` data file) as one `.mha`.

An `.mha` is the same header with `ElementDataFile = LOCAL`, the data bytes following it; so
the conversion copies the header line by line (spacing, origin, direction, PatientAge and
every other field kept as written) and appends the data file unchanged (compressed data
stays compressed: `CompressedData` and `CompressedDataSize` still describe it). No image
library is needed and nothing is decoded."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

HEADER_SUFFIX = ".mhd"
DATA_SUFFIXES = (".raw", ".zraw")
MAX_HEADER_BYTES = 64 * 1024
_FIELD = re.compile(rb"^\s*ElementDataFile\s*=\s*(.*?)\s*$")


class MetaImageError(ValueError):
    """The header cannot be turned into one file; the message names the header file."""


def _header_lines(header: Path) -> list[bytes]:
    raw = header.read_bytes()[: MAX_HEADER_BYTES + 1]
    if len(raw) > MAX_HEADER_BYTES:
        raise MetaImageError(f"{header.name}: a MetaImage header over 64 KiB")
    lines = raw.splitlines(keepends=True)
    if not any(_FIELD.match(line) for line in lines):
        raise MetaImageError(f"{header.name}: the header has no ElementDataFile line")
    return lines


def data_file(header: Path) -> str:
    """The name of the data file the header refers to (in the header's own folder)."""
    for line in _header_lines(header):
        m = _FIELD.match(line)
        if m:
            name = m.group(1).decode("utf-8", "replace")
            if name.upper() == "LOCAL":
                raise MetaImageError(
                    f"{header.name}: ElementDataFile = LOCAL (the data is in the header: "
                    "name it .mha)"
                )
            if name.upper() == "LIST" or "%" in name or " " in name:
                raise MetaImageError(
                    f"{header.name}: data in several files (ElementDataFile = {name}) is not "
                    "supported; write the image as one .mha"
                )
            if "/" in name or "\\" in name or name in (".", ".."):
                raise MetaImageError(
                    f"{header.name}: ElementDataFile must name a file next to the header, "
                    f"not {name!r}"
                )
            return name
    raise AssertionError("unreachable: _header_lines checked the field")


def to_mha(header: Path, dest: Path) -> Path:
    """Write header + its data file as one .mha at dest; returns dest."""
    lines = _header_lines(header)
    data = header.parent / data_file(header)
    if not data.is_file():
        raise MetaImageError(f"{header.name}: its data file {data.name} is missing")
    out: list[bytes] = []
    for line in lines:
        if _FIELD.match(line):
            out.append(b"ElementDataFile = LOCAL\n")
            break  # the data file field ends the header
        out.append(line)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with dest.open("wb") as f, data.open("rb") as src:
        f.write(b"".join(out))
        shutil.copyfileobj(src, f, 1 << 20)
    return dest
