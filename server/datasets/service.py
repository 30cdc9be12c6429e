"""Dataset ingest: an archive or directory of cases becomes content-addressed artifacts plus
Case rows. Ground truth (labels.csv) is stored as an artifact that no endpoint serves.
Case files given as an .mhd pair, NIfTI or a DICOM series are stored as one .mha each
(convert.py), their original files beside it by digest (`originals` in the file record)."""

from __future__ import annotations

import tarfile
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from server.datasets import convert, repository
from server.datasets import manifest as mf
from server.datasets.models import Case, Dataset
from server.db import utcnow
from server.errors import InvalidInput
from server.storage import ArtifactStore, extract_tar


@dataclass
class CaseChanges:
    """What an ingest did to a dataset's cases (ids). `content`: the digest changed (cases,
    images or labels). Added or changed cases need inference; removals and label edits only
    need evaluation."""

    added: set[int] = field(default_factory=set)
    changed: set[int] = field(default_factory=set)
    removed: set[int] = field(default_factory=set)
    content: bool = False

    @property
    def needs_inference(self) -> set[int]:
        return self.added | self.changed


def ingest_directory(
    session: Session,
    store: ArtifactStore,
    *,
    challenge_id: int,
    slug: str,
    root: Path,
    title: str = "",
    public: bool = False,
) -> tuple[Dataset, str, CaseChanges]:
    # long: manifest, files, digests and case rows, each check with its error
    """Create or update a dataset from a directory. Returns it, 'created', 'updated' or
    'unchanged' (same digest: nothing is written), and what happened to its cases. A case
    the new version lacks is retired, never deleted: jobs that ran on it refer to it."""
    manifest = mf.scan(root)
    existing = repository.get_dataset(session, challenge_id, slug)
    if existing is not None and existing.digest == manifest.digest:
        changed = existing.title != title or existing.public != public
        existing.title, existing.public = title, public
        return existing, "updated" if changed else "unchanged", CaseChanges()

    stored = stored_files(store, manifest, slug)

    if existing is None:
        dataset = Dataset(challenge_id=challenge_id, slug=slug, version=1)
        session.add(dataset)
        outcome = "created"
    else:
        dataset = existing
        dataset.version += 1
        dataset.updated_at = utcnow()
        outcome = "updated"
    dataset.title, dataset.public = title, public
    dataset.digest = manifest.digest
    dataset.labels_digest = manifest.labels_digest
    dataset.label_columns = manifest.label_columns
    dataset.n_cases = len(manifest.rows)
    session.flush()

    # Keep each case's public UUID across versions so re-uploads don't reshuffle names.
    changes = CaseChanges(content=True)
    old = {c.name: c for c in repository.list_cases(session, dataset.id, retired=True)}
    added: list[Case] = []
    for name in manifest.rows:
        files = {slug: stored[f.relpath] for slug, f in manifest.files[name].items()}
        # Reference masks ride along under keys no interface slug can take ("truth:<name>");
        # only the evaluation step reads them.
        files |= {
            f"{TRUTH_PREFIX}{folder}": stored[f.relpath]
            for folder, f in manifest.truth.get(name, {}).items()
        }
        case = old.pop(name, None)
        if case is None:
            case = Case(
                dataset_id=dataset.id, name=name, public_name=str(uuid.uuid4()), files=files
            )
            session.add(case)
            added.append(case)
        elif case.retired:
            case.retired, case.files = False, files
            changes.added.add(case.id)
        elif case.files != files:
            if input_files(case.files) != input_files(files):
                changes.changed.add(case.id)  # a changed mask alone needs evaluation only
            case.files = files
    for gone in old.values():
        if not gone.retired:
            gone.retired = True
            changes.removed.add(gone.id)
    session.flush()
    changes.added |= {c.id for c in added}
    return dataset, outcome, changes


def stored_files(
    store: ArtifactStore, manifest: mf.Manifest, slug: str
) -> dict[str, dict[str, Any]]:
    """Store labels.csv and every case file; returns each case file's record by relpath:
    {"digest", "ext", "size"} of what algorithms get, plus for a converted one "originals":
    [{"name" (under its interface or mask folder), "digest", "size"}]. Every conversion is
    done (and may refuse) before anything is stored."""
    root = manifest.root
    every = [
        f for per in [*manifest.files.values(), *manifest.truth.values()] for f in per.values()
    ]
    with tempfile.TemporaryDirectory(dir=store.root / "tmp") as tmp:
        try:
            converted = convert.convert_all(root, every, Path(tmp))
        except convert.ConversionError as exc:
            where = mf.TRUTH_DIR if str(exc).startswith(mf.TRUTH_DIR) else "images"
            raise InvalidInput(f"dataset {slug!r}: {exc}", field=where) from exc
        store.put_file(root / "labels.csv")
        records: dict[str, dict[str, Any]] = {}
        for f in every:
            mha = converted.get(f.relpath)
            if mha is None:
                store.put_file(root / f.relpath)
                records[f.relpath] = {"digest": f.digest, "ext": f.ext, "size": f.size}
                continue
            digest, size = store.put_file(mha)
            folder = f.relpath.rsplit("/", 1)[0]  # images/<interface> or ground-truth/<name>
            originals = []
            for part in f.originals:
                store.put_file(root / part.relpath)
                originals.append(
                    {
                        "name": part.relpath.removeprefix(folder + "/"),
                        "digest": part.digest,
                        "size": part.size,
                    }
                )
            records[f.relpath] = {
                "digest": digest,
                "ext": convert.MHA,
                "size": size,
                "originals": originals,
            }
    return records


def ingest_archive(
    session: Session,
    store: ArtifactStore,
    *,
    archive_digest: str,
    challenge_id: int,
    slug: str,
    title: str = "",
    public: bool = False,
) -> tuple[Dataset, str, CaseChanges]:
    """Ingest an uploaded tar (optionally gzip) archive of a dataset directory."""
    with tempfile.TemporaryDirectory(dir=store.root / "tmp") as tmp:
        dest = Path(tmp)
        try:
            extract_tar(store.path(archive_digest), dest)
        except (tarfile.TarError, OSError) as exc:
            raise InvalidInput(
                f"dataset {slug!r}: the archive could not be unpacked: {exc}", field="archive"
            ) from exc
        root = dest
        entries = [p for p in dest.iterdir()]
        if not (dest / "labels.csv").exists() and len(entries) == 1 and entries[0].is_dir():
            root = entries[0]
        return ingest_directory(
            session,
            store,
            challenge_id=challenge_id,
            slug=slug,
            root=root,
            title=title,
            public=public,
        )


TRUTH_PREFIX = "truth:"


def input_files(files: dict[str, Any]) -> dict[str, Any]:
    """A case's files less its reference masks: what an algorithm may be given."""
    return {k: v for k, v in files.items() if not k.startswith(TRUTH_PREFIX)}


def truth_files(files: dict[str, Any]) -> dict[str, Any]:
    """A case's reference masks by ground-truth folder name."""
    return {k.removeprefix(TRUTH_PREFIX): v for k, v in files.items() if k.startswith(TRUTH_PREFIX)}


def check_interfaces(dataset: Dataset, cases: list[Case], inputs: dict[str, str | None]) -> None:
    """A phase's inputs (slug -> declared extension) must all be present in its dataset's
    cases, stored with that extension: images are converted to .mha at upload, so an input
    declared as .nii.gz would hand containers .mha bytes under a .nii.gz name."""
    for case in cases:
        missing = set(inputs) - set(case.files)
        if missing:
            raise InvalidInput(
                f"dataset {dataset.slug!r} lacks images for inputs {sorted(missing)} "
                f"(case {case.name!r})",
                field="inputs",
            )
        for slug, extension in inputs.items():
            stored = case.files[slug].get("ext")
            if extension and stored and stored != extension:
                raise InvalidInput(
                    f"input {slug!r} declares extension {extension!r}, but dataset "
                    f"{dataset.slug!r} holds it as {stored!r} (case {case.name!r}; images "
                    "given as .mhd, .nii, .nii.gz or DICOM are stored as .mha): declare "
                    f"extension {stored!r}",
                    field="inputs",
                )
