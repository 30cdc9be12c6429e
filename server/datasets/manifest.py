"""The on-disk layout of a dataset and its digest, shared by the CLI (to skip unchanged
uploads) and the server (to ingest).

    labels.csv                       first column: case id; then label columns
    images/<interface>/<case><ext>   one file per case and image interface
    ground-truth/<name>/<case><ext>  optional reference masks (segmentation metrics whose
                                     `label` is <name>): organizer-only, like labels.csv

A case file is one file (`.mha`, `.nii.gz`, ...), an `.mhd` header with the `.raw`/`.zraw`
data file it names, or a directory `<case>/` holding one DICOM series (every file in it a
slice). The digest covers every original file; ingest (server/datasets/convert.py) turns
the last three kinds into one `.mha` each.

A case id is a labels.csv row; a file belongs to the longest case id it starts with,
followed by a '.', so DICOM-UID-style ids (`1.2.826.0.1.3680043.8.498.1`) and compound
extensions (`.nii.gz`) both work. Without labels (a participant's own cases) the extension
is the known compound suffix or the last one.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

from server.datasets import metaimage
from server.errors import InvalidInput

# Dots allowed inside (DICOM UIDs), never at the end: an id is also a directory name.
CASE_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9_.-]{0,198}[A-Za-z0-9_-])?$")
COMPOUND_SUFFIXES = (".nii.gz", ".mha.gz", ".tar.gz")
SLUG_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1024 * 1024):
            h.update(block)
    return "sha256:" + h.hexdigest()


@dataclass(frozen=True)
class Part:
    """One original file of a case file made of several: its path in the dataset."""

    relpath: str
    digest: str
    size: int


@dataclass
class CaseFile:
    """relpath: the file, the .mhd header or the DICOM series' directory. ext: the
    original's extension ('' for a DICOM directory). parts: every original file where there
    are several (header and data file, the series' slices); empty for one file."""

    relpath: str
    digest: str
    size: int
    ext: str
    parts: list[Part] = field(default_factory=list)

    @property
    def originals(self) -> list[Part]:
        return self.parts or [Part(self.relpath, self.digest, self.size)]

    @property
    def is_series(self) -> bool:
        return self.ext == ""


@dataclass
class Manifest:
    root: Path
    label_columns: list[str]
    labels_digest: str
    rows: dict[str, dict[str, str]]
    # {case: {interface: CaseFile}}
    files: dict[str, dict[str, CaseFile]] = field(default_factory=dict)
    # {case: {ground-truth folder: CaseFile}}: reference masks, never given to algorithms
    truth: dict[str, dict[str, CaseFile]] = field(default_factory=dict)

    @property
    def digest(self) -> str:
        canon: dict[str, object] = {
            "labels": self.labels_digest,
            "files": _digests(self.files),
        }
        if self.truth:  # absent otherwise: digests of datasets without masks stay as they were
            canon["truth"] = _digests(self.truth)
        blob = json.dumps(canon, sort_keys=True, separators=(",", ":")).encode()
        return "sha256:" + hashlib.sha256(blob).hexdigest()

    @property
    def interfaces(self) -> set[str]:
        return {slug for per in self.files.values() for slug in per}


def _digests(files: dict[str, dict[str, CaseFile]]) -> dict[str, str]:
    """Every original file's digest by path (one file: as before parts existed)."""
    return {
        p.relpath: p.digest for per in files.values() for f in per.values() for p in f.originals
    }


def split_case_file(name: str, case_ids: Collection[str] | None = None) -> tuple[str, str] | None:
    """(case id, extension) of a case file's name, or None when it names no known case.

    With `case_ids`, the longest id that the name continues with a '.'; without, the name
    less its compound or last suffix."""
    if case_ids is not None:
        best: tuple[str, str] | None = None
        for i, ch in enumerate(name):
            if ch == "." and name[:i] in case_ids:
                best = (name[:i], name[i:])
        return best
    lower = name.lower()
    for suffix in COMPOUND_SUFFIXES:
        if lower.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)], name[-len(suffix) :]
    stem, dot, ext = name.rpartition(".")
    return (stem, dot + ext) if dot and stem else None


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
        for case, f in _folder(root, f"images/{slug_dir.name}", rows).items():
            manifest.files.setdefault(case, {})[slug_dir.name] = f
    if not manifest.files:
        raise InvalidInput(f"dataset {root}: no images under images/", field="images")
    _scan_truth(root, manifest)
    slugs = manifest.interfaces
    for case in rows:
        missing = slugs - set(manifest.files.get(case, {}))
        if missing:
            raise InvalidInput(
                f"dataset {root}: case {case!r} has no image for {sorted(missing)}",
                field="images",
            )
    return manifest


TRUTH_DIR = "ground-truth"


def _scan_truth(root: Path, manifest: Manifest) -> None:
    """ground-truth/<name>/<case><ext>: every case of a folder has exactly one mask."""
    top = root / TRUTH_DIR
    if not top.exists():
        return
    if top.is_symlink() or not top.is_dir():
        raise InvalidInput(f"dataset {root}: {TRUTH_DIR} is not a directory", field=TRUTH_DIR)
    for folder in sorted(top.iterdir()):
        if folder.is_symlink() or not folder.is_dir() or not SLUG_RE.match(folder.name):
            raise InvalidInput(
                f"dataset {root}: {TRUTH_DIR}/{folder.name} is not a mask folder "
                "(lower-case letters, digits, '-')",
                field=TRUTH_DIR,
            )
        found = _folder(root, f"{TRUTH_DIR}/{folder.name}", manifest.rows)
        for case, f in found.items():
            manifest.truth.setdefault(case, {})[folder.name] = f
        seen = set(found)
        missing = [c for c in manifest.rows if c not in seen]
        if missing:
            raise InvalidInput(
                f"dataset {root}: {TRUTH_DIR}/{folder.name} has no mask for {len(missing)} "
                f"case(s), e.g. {missing[0]!r}",
                field=TRUTH_DIR,
            )


def _companions(root: Path, rel: str) -> set[str]:
    """The data files that the folder's .mhd headers name (each is part of its header)."""
    names = set()
    top = rel.split("/")[0]
    for f in (root / rel).iterdir():
        if f.suffix.lower() == metaimage.HEADER_SUFFIX and f.is_file():
            try:
                name = metaimage.data_file(f)
            except metaimage.MetaImageError as exc:
                raise InvalidInput(f"dataset {root}: {rel}/{exc}", field=top) from exc
            if not (root / rel / name).is_file():
                raise InvalidInput(
                    f"dataset {root}: {rel}/{f.name} names its data file {name}, missing",
                    field=top,
                )
            names.add(name)
    return names


def _part(root: Path, path: Path) -> Part:
    return Part(path.relative_to(root).as_posix(), _sha256(path), path.stat().st_size)


def _series(root: Path, folder: Path) -> CaseFile:
    """A directory of DICOM slices (checked as a series at ingest, not here)."""
    rel = folder.relative_to(root).as_posix()
    parts = []
    for f in sorted(folder.iterdir()):
        if f.is_symlink() or not f.is_file():
            raise InvalidInput(
                f"dataset {root}: {rel}/{f.name} is not a regular file (a case directory "
                "holds the slices of one DICOM series, no folders)",
                field=rel.split("/")[0],
            )
        parts.append(_part(root, f))
    if not parts:
        raise InvalidInput(f"dataset {root}: {rel} is empty (no DICOM slices)", field=rel)
    blob = json.dumps([(p.relpath, p.digest) for p in parts]).encode()
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    return CaseFile(rel, digest, sum(p.size for p in parts), "", parts)


def _folder(root: Path, rel: str, rows: Collection[str]) -> dict[str, CaseFile]:
    """case -> its one case file in root/rel (a file, an .mhd pair or a series directory)."""
    found: dict[str, CaseFile] = {}
    companions = _companions(root, rel)
    top = rel.split("/")[0]
    for f in sorted((root / rel).iterdir()):
        if f.name in companions:
            continue
        if f.is_dir() and not f.is_symlink():
            if f.name not in rows:
                raise InvalidInput(
                    f"dataset {root}: {rel}/{f.name}/ has no row in labels.csv (a DICOM "
                    "series directory is named by its case id)",
                    field=top,
                )
            case, entry = f.name, _series(root, f)
        elif f.is_symlink() or not f.is_file():
            raise InvalidInput(f"dataset {root}: {f} is not a regular file", field=top)
        else:
            split = split_case_file(f.name, rows)
            if split is None:
                raise InvalidInput(
                    f"dataset {root}: {rel}/{f.name} has no row in labels.csv", field=top
                )
            case, ext = split
            entry = CaseFile(f"{rel}/{f.name}", _sha256(f), f.stat().st_size, ext)
            if ext.lower() == metaimage.HEADER_SUFFIX:
                data = f.parent / metaimage.data_file(f)
                entry.parts = [_part(root, f), _part(root, data)]
        if case in found:
            raise InvalidInput(
                f"dataset {root}: case {case!r} has two files in {rel} "
                f"({Path(found[case].relpath).name}, {f.name}): one per case (an .mhd header "
                "names its own .raw/.zraw in ElementDataFile)",
                field=top,
            )
        found[case] = entry
    return found
