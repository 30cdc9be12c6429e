"""Case files given as an `.mhd` pair, `.nii`/`.nii.gz` or a DICOM series become one `.mha`
at ingest: what an algorithm (and the evaluator, for reference masks) is given.

An `.mhd` pair is joined byte for byte (metaimage.py: every header field kept, as run-local
stages it). NIfTI and DICOM are decoded with SimpleITK and written with their voxels,
pixel type, spacing, origin and direction only: NIfTI header extras and DICOM tags (patient
data among them) do not travel; the originals stay in the artifact store. Every image is
read (an `.mhd` pair's result too) before anything is stored, so a bad one refuses the
whole ingest, naming its file."""

from __future__ import annotations

import gzip
import re
import zlib
from pathlib import Path
from typing import Any

from server.datasets import metaimage
from server.datasets.manifest import CaseFile

MHA = ".mha"
DECODED = (".nii", ".nii.gz")


def _sitk() -> Any:
    """SimpleITK (untyped: Any here, not an ignore per call), imported on first use: it adds
    about 100 MB to a process, and a server worker needs it only to convert a dataset."""
    import SimpleITK

    return SimpleITK


def needs_conversion(f: CaseFile) -> bool:
    ext = f.ext.lower()
    return f.is_series or ext == metaimage.HEADER_SUFFIX or ext in DECODED


class ConversionError(ValueError):
    """A case file that cannot become one .mha; the message names it (dataset-relative)."""


_COMPRESSED = re.compile(rb"(?mi)^\s*CompressedData\s*=\s*true\s*$")
_DIRS = re.compile(r"(?:/[^\s/:'\"]+)+/")


def _reason(exc: Exception) -> str:
    """ITK's message, short: its last line, paths cut to their file names (no server
    folders)."""
    lines = [_DIRS.sub("", ln).strip() for ln in str(exc).splitlines()]
    return next((ln for ln in reversed(lines) if ln), type(exc).__name__)[:300]


def _whole_stream(path: Path, label: str, kind: str) -> None:
    """ITK reads a truncated gzip or zlib stream without an error (zeros, or a warning on
    stderr): decompress it here to the end first."""
    try:
        if kind == "gzip":
            with gzip.open(path, "rb") as f:
                while f.read(1 << 20):
                    pass
            return
        inflate = zlib.decompressobj()
        with path.open("rb") as raw:
            while block := raw.read(1 << 20):
                inflate.decompress(block, 1 << 20)
                while inflate.unconsumed_tail:
                    inflate.decompress(inflate.unconsumed_tail, 1 << 20)
        if not inflate.eof:
            raise EOFError("the compressed data ends early")
    except (OSError, EOFError, zlib.error) as exc:
        raise ConversionError(f"{label} is not a readable image ({kind}: {exc})") from exc


def _read(path: Path, label: str) -> Any:
    if path.name.lower().endswith(".gz"):
        _whole_stream(path, label, "gzip")
    try:
        return _sitk().ReadImage(str(path))
    except RuntimeError as exc:
        raise ConversionError(f"{label} is not a readable image ({_reason(exc)})") from exc


def _read_series(folder: Path, label: str) -> Any:
    """One DICOM series: every file in folder one of its slices."""
    ids = _sitk().ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    if len(ids) != 1:
        what = "no DICOM series" if not ids else f"{len(ids)} DICOM series"
        raise ConversionError(f"{label}: {what}; a case directory holds exactly one series")
    names = _sitk().ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), ids[0])
    strays = sorted({p.name for p in folder.iterdir()} - {Path(n).name for n in names})
    if strays:
        raise ConversionError(
            f"{label}/{strays[0]} is not a readable slice of the DICOM series in {label} "
            f"({len(strays)} such file(s))",
        )
    reader = _sitk().ImageSeriesReader()
    reader.SetFileNames(names)
    try:
        return reader.Execute()
    except RuntimeError as exc:
        raise ConversionError(
            f"{label}: the DICOM series is not readable ({_reason(exc)})"
        ) from exc


def decoded_to_mha(src: Path, dest: Path, label: str) -> Path:
    """A NIfTI file or a DICOM series directory as one .mha at dest: voxels, pixel type and
    geometry only. `label` names src in errors."""
    img = _read_series(src, label) if src.is_dir() else _read(src, label)
    for key in img.GetMetaDataKeys():
        img.EraseMetaData(key)
    dest.parent.mkdir(parents=True, exist_ok=True)
    _sitk().WriteImage(img, str(dest), useCompression=True)
    return dest


def is_decoded(path: Path) -> bool:
    """A NIfTI file or a directory (a DICOM series): what decoded_to_mha converts."""
    return path.is_dir() or path.name.lower().endswith(DECODED)


def to_mha(root: Path, f: CaseFile, dest: Path) -> Path:
    """The case file (under root) as one .mha at dest, checked readable; returns dest."""
    if f.ext.lower() != metaimage.HEADER_SUFFIX:
        return decoded_to_mha(root / f.relpath, dest, f.relpath)
    header = root / f.relpath
    try:
        metaimage.to_mha(header, dest)
        data = header.parent / metaimage.data_file(header)
    except metaimage.MetaImageError as exc:
        raise ConversionError(f"{Path(f.relpath).parent.as_posix()}/{exc}") from exc
    if _COMPRESSED.search(header.read_bytes()[: metaimage.MAX_HEADER_BYTES]):
        _whole_stream(data, f"{Path(f.relpath).parent.as_posix()}/{data.name}", "zlib")
    _read(dest, f.relpath)  # the joined pair must decode, as the algorithm will read it
    return dest


def convert_all(root: Path, files: list[CaseFile], dest: Path) -> dict[str, Path]:
    """relpath -> its .mha under dest, for each file needing conversion."""
    out: dict[str, Path] = {}
    for i, f in enumerate(files):
        if needs_conversion(f):
            out[f.relpath] = to_mha(root, f, dest / f"{i}{MHA}")
    return out
