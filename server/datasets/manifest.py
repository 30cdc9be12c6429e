"""The on-disk layout of a dataset and its digest, shared by the CLI (to skip unchanged
uploads) and the server (to ingest).

    labels.csv                       first column: case id; then label columns
    images/<interface>/<case><ext>   one file per case and image interface

A case id is the file name up to its first '.', so `.nii.gz` works.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from server.errors import InvalidInput

CASE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,199}$")
SLUG_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1024 * 1024):
            h.update(block)
    return "sha256:" + h.hexdigest()


@dataclass
class CaseFile:
    relpath: str
    digest: str
    size: int
    ext: str


@dataclass
class Manifest:
    root: Path
    label_columns: list[str]
    labels_digest: str
    rows: dict[str, dict[str, str]]
    # {case: {interface: CaseFile}}
    files: dict[str, dict[str, CaseFile]] = field(default_factory=dict)

    @property
    def digest(self) -> str:
        canon = {
            "labels": self.labels_digest,
            "files": {f.relpath: f.digest for per in self.files.values() for f in per.values()},
        }
        blob = json.dumps(canon, sort_keys=True, separators=(",", ":")).encode()
        return "sha256:" + hashlib.sha256(blob).hexdigest()

    @property
    def interfaces(self) -> set[str]:
        return {slug for per in self.files.values() for slug in per}


def read_labels(
    text: str, source: str = "labels.csv"
) -> tuple[list[str], dict[str, dict[str, str]]]:
    reader = csv.reader(io.StringIO(text))
    try:
        header = next(reader)
    except StopIteration:
        raise InvalidInput(f"{source} is empty: it needs a header row", field=source) from None
    header = [h.strip() for h in header]
    if len(header) < 2 or not header[0]:
        raise InvalidInput(
            f"{source} needs a case-id column followed by at least one label column",
            field=source,
        )
    if len(set(header)) != len(header):
        raise InvalidInput(f"{source} repeats a column name: {header}", field=source)
    rows: dict[str, dict[str, str]] = {}
    for lineno, row in enumerate(reader, start=2):
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) != len(header):
            raise InvalidInput(
                f"{source} line {lineno}: {len(row)} fields, the header has {len(header)}",
                field=source,
            )
        case = row[0].strip()
        if not CASE_RE.match(case):
            raise InvalidInput(f"{source} line {lineno}: bad case id {case!r}", field=source)
        if case in rows:
            raise InvalidInput(f"{source} line {lineno}: case {case!r} repeated", field=source)
        rows[case] = dict(zip(header[1:], (c.strip() for c in row[1:]), strict=True))
    if not rows:
        raise InvalidInput(f"{source} holds no cases", field=source)
    return header, rows


def scan(root: Path) -> Manifest:
    """Read a dataset directory, checking that labels and images match one to one."""
    labels = root / "labels.csv"
    if not labels.is_file():
        raise InvalidInput(f"dataset {root}: labels.csv is missing", field="labels.csv")
    header, rows = read_labels(labels.read_text(encoding="utf-8-sig"))
    manifest = Manifest(root, header, _sha256(labels), rows)
    images = root / "images"
    if not images.is_dir():
        raise InvalidInput(f"dataset {root}: the images/ directory is missing", field="images")
    for slug_dir in sorted(p for p in images.iterdir()):
        if not slug_dir.is_dir() or not SLUG_RE.match(slug_dir.name):
            raise InvalidInput(
                f"dataset {root}: images/{slug_dir.name} is not an interface directory",
                field="images",
            )
        for f in sorted(slug_dir.iterdir()):
            if f.is_symlink() or not f.is_file():
                raise InvalidInput(f"dataset {root}: {f} is not a regular file", field="images")
            case, dot, ext = f.name.partition(".")
            if not dot or case not in rows:
                raise InvalidInput(
                    f"dataset {root}: images/{slug_dir.name}/{f.name} has no row in labels.csv",
                    field="images",
                )
            per = manifest.files.setdefault(case, {})
            if slug_dir.name in per:
                raise InvalidInput(
                    f"dataset {root}: case {case!r} has two files for {slug_dir.name!r}",
                    field="images",
                )
            per[slug_dir.name] = CaseFile(
                f"images/{slug_dir.name}/{f.name}", _sha256(f), f.stat().st_size, "." + ext
            )
    if not manifest.files:
        raise InvalidInput(f"dataset {root}: no images under images/", field="images")
    slugs = manifest.interfaces
    for case in rows:
        missing = slugs - set(manifest.files.get(case, {}))
        if missing:
            raise InvalidInput(
                f"dataset {root}: case {case!r} has no image for {sorted(missing)}",
                field="images",
            )
    return manifest
