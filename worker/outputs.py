"""Input layout and output validation for algorithm containers (docs: contracts.md).

Per-case mode: one container per case sees

    /input/<relative_path>/<uuid><ext>    one file per input interface, byte for byte
                                          (relative_path default: images/<slug>)
    /input/inputs.json                    grand-challenge's description of the inputs
    /output/<slug>.json | <slug><ext>     one per json / file output interface
    /output/images/<slug>/<any><ext>      an image output: exactly one file in its folder
                                          (grand-challenge's newer layout), or else
                                          /output/<slug><ext> (heldout's first layout)

Batch mode (heldout extension, opt-in per phase): one container sees many cases as
`/input/<case>/images/<slug>/<uuid><ext>` and writes `/output/<case>/<slug>.json` etc.

Validation reads only the host copy made by the executor's collect(), which holds regular
files and directories only. Failure messages name slugs and paths, never output values:
on sequestered data an output value may carry information about the hidden case.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import stat
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from server.challenges.schemas import Interface, InterfaceKind, JsonValueType
from worker.executor.base import Failure

MAX_JSON_BYTES = 16 * 1024 * 1024
INPUTS_JSON = "inputs.json"
# Case ids become directory names under /input and /output.
_CASE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


# ---------------------------------------------------------------------------------------
# Staging inputs


@dataclass(frozen=True)
class StagedCase:
    case_id: str
    root: Path  # mounted at /input (per-case) or /input/<case> (batch)
    files: dict[str, Path]  # input slug -> staged file

    def file_names(self) -> dict[str, str]:
        """slug -> the random file name the algorithm saw (evaluation matches on it)."""
        return {slug: p.name for slug, p in self.files.items()}


def stage_case_inputs(
    dest: Path, interfaces: Sequence[Interface], files: Mapping[str, Path], case_id: str = ""
) -> StagedCase:
    """Lay out one case's input files under dest (to be mounted at /input).

    `files` maps each input interface slug to the source file; the file is hard-linked
    (copied when that is not possible) so the container reads it byte for byte.
    """
    by_slug = {i.slug: i for i in interfaces}
    if set(files) != set(by_slug):
        raise ValueError(f"inputs {sorted(files)} do not match the interfaces {sorted(by_slug)}")
    dest.mkdir(parents=True, exist_ok=True)
    dest.chmod(0o755)
    staged: dict[str, Path] = {}
    description = []
    for slug, source in files.items():
        folder = dest / by_slug[slug].input_reldir()
        folder.mkdir(parents=True, exist_ok=True)
        for d in (folder, folder.parent):
            d.chmod(0o755)
        target = folder / f"{uuid.uuid4()}{_extension(source)}"
        _place(source, target)
        staged[slug] = target
        description.append(input_description(by_slug[slug], target.name))
    (dest / INPUTS_JSON).write_text(json.dumps(description, indent=2))
    (dest / INPUTS_JSON).chmod(0o644)
    return StagedCase(case_id=case_id, root=dest, files=staged)


def input_description(interface: Interface, file_name: str) -> dict[str, Any]:
    """One entry of /input/inputs.json in grand-challenge's current form: a component
    interface value, `{"interface": {...}, "image": {...}}` (the socket as grand-challenge
    serialises it, and the image by the name the algorithm finds it under)."""
    return {
        "pk": file_name.split(".", 1)[0],
        "interface": {
            "title": interface.slug,
            "slug": interface.slug,
            "kind": "Image",
            "super_kind": "Image",
            "relative_path": interface.input_reldir(),
            "default_value": None,
        },
        "value": None,
        "file": None,
        "image": {"pk": file_name.split(".", 1)[0], "name": file_name},
    }


def stage_batch_inputs(
    dest: Path,
    interfaces: Sequence[Interface],
    cases: Mapping[str, Mapping[str, Path]],
) -> dict[str, StagedCase]:
    """Lay out many cases under dest as dest/<case>/images/<slug>/<uuid><ext>."""
    dest.mkdir(parents=True, exist_ok=True)
    dest.chmod(0o755)
    staged = {}
    for case_id, files in cases.items():
        check_case_id(case_id)
        staged[case_id] = stage_case_inputs(dest / case_id, interfaces, files, case_id)
    return staged


def check_case_id(case_id: str) -> None:
    if not _CASE_ID.match(case_id) or case_id in (".", ".."):
        raise ValueError(f"case id {case_id!r} must match {_CASE_ID.pattern}")


def _extension(source: Path) -> str:
    name = source.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else source.suffix.lower()


def _place(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
        if os.stat(target).st_mode & stat.S_IROTH:
            return
        target.unlink()  # the container's user could not read the shared inode
    except OSError:
        pass  # another filesystem, or links not permitted: copy instead
    shutil.copyfile(source, target)
    target.chmod(0o644)


# ---------------------------------------------------------------------------------------
# Validating outputs


@dataclass(frozen=True)
class CaseOutputs:
    """Outputs of one case: values for the valid ones, a Failure for each invalid one."""

    values: dict[str, Any] = field(default_factory=dict)  # json: the value; file: its Path
    failures: tuple[Failure, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.failures

    @property
    def failure(self) -> Failure | None:
        """The first failure: the case's classified reason."""
        return self.failures[0] if self.failures else None


def validate_outputs(
    output_dir: Path, interfaces: Sequence[Interface], shown_as: str = "/output"
) -> CaseOutputs:
    """Check every declared output under output_dir; files not declared are ignored.

    `shown_as` is how messages name output_dir (the container's view of it).
    """
    values: dict[str, Any] = {}
    failures: list[Failure] = []
    for interface in interfaces:
        rel = interface.output_relpath()
        path = output_dir / rel
        if _through_link(output_dir, rel):
            result: Any = _Invalid(f"{rel} lies under a symbolic link")
        elif interface.kind is InterfaceKind.json:
            result = _read_json(path, interface)
        elif interface.kind is InterfaceKind.image:
            result = _check_image(output_dir, interface, shown_as)
        else:
            result = _check_file(path, interface, output_dir)
        if isinstance(result, _Missing):
            failures.append(Failure.missing_output(interface.slug, f"{shown_as}/{rel}"))
        elif isinstance(result, _Invalid):
            failures.append(Failure.invalid_output(interface.slug, result.why))
        else:
            values[interface.slug] = result
    return CaseOutputs(values=values, failures=tuple(failures))


def validate_batch_outputs(
    output_dir: Path, case_ids: Sequence[str], interfaces: Sequence[Interface]
) -> dict[str, CaseOutputs]:
    """Per-case validation of a batch container's /output/<case>/... ."""
    for case_id in case_ids:
        check_case_id(case_id)
    return {
        c: validate_outputs(output_dir / c, interfaces, shown_as=f"/output/{c}") for c in case_ids
    }


@dataclass(frozen=True)
class _Missing:
    pass


@dataclass(frozen=True)
class _Invalid:
    why: str


class _NotFinite(ValueError):
    pass


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999 parses to inf
        raise _NotFinite(text)
    return value


def _reject_constant(text: str) -> Any:
    raise _NotFinite(text)  # NaN, Infinity, -Infinity: not JSON, though Python accepts them


def _read_json(path: Path, interface: Interface) -> Any:
    kind = _file_kind(path)
    if kind is None:
        return _Missing()
    if kind != "file":
        return _Invalid(f"{path.name} is a {kind}, not a file")
    if path.stat().st_size > MAX_JSON_BYTES:
        return _Invalid(f"{path.name} is larger than {MAX_JSON_BYTES // (1024 * 1024)} MiB")
    raw = path.read_bytes()
    if not raw.strip():
        return _Invalid(f"{path.name} is empty")
    try:
        value = json.loads(raw, parse_float=_finite_float, parse_constant=_reject_constant)
    except _NotFinite:
        return _Invalid("NaN and infinite numbers are not valid JSON values")
    except (ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError included
        return _Invalid(f"{path.name} is not valid JSON")
    why = check_json_value(value, interface)
    return _Invalid(why) if why else value


_TYPE_NAMES = {
    bool: "a boolean",
    int: "an integer",
    float: "a number",
    str: "a string",
    list: "an array",
    dict: "an object",
    type(None): "null",
}


def check_json_value(value: Any, interface: Interface) -> str | None:
    """Why a parsed value does not fit the interface, or None. Never quotes the value."""
    t = interface.value_type
    got = _TYPE_NAMES.get(type(value), "an unknown type")
    if t is JsonValueType.number:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    elif t is JsonValueType.integer:
        ok = (isinstance(value, int) and not isinstance(value, bool)) or (
            isinstance(value, float) and value.is_integer()
        )
    elif t is JsonValueType.boolean:
        ok = isinstance(value, bool)
    elif t is JsonValueType.string:
        ok = isinstance(value, str)
    elif t is JsonValueType.object:
        ok = isinstance(value, dict)
    else:
        ok = isinstance(value, list)
    if not ok:
        return f"expected a bare JSON {t.value}, got {got}"
    if t in (JsonValueType.number, JsonValueType.integer):
        lo, hi = interface.minimum, interface.maximum
        if lo is not None and hi is not None and not lo <= value <= hi:
            return f"the value is outside [{lo:g}, {hi:g}]"
        if interface.minimum is not None and value < interface.minimum:
            return f"the value is below the minimum {interface.minimum:g}"
        if interface.maximum is not None and value > interface.maximum:
            return f"the value is above the maximum {interface.maximum:g}"
    if interface.choices is not None and not any(_same(value, c) for c in interface.choices):
        return "the value is not one of the allowed choices"
    return None


def _same(a: Any, b: Any) -> bool:
    # Python has True == 1 and 1 == 1.0; JSON choices compare booleans and numbers apart.
    numbers = (int, float)
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, numbers) and isinstance(b, numbers):
        return a == b
    return type(a) is type(b) and bool(a == b)


def _check_file(path: Path, interface: Interface, output_dir: Path) -> Any:
    kind = _file_kind(path)
    if kind is None:
        # The same slug with another extension: say so rather than "missing".
        # Never quote the name found: the algorithm chose it, and it may encode a case.
        others = any(
            p.name != path.name
            for p in output_dir.glob(f"{interface.slug}.*")  # slugs hold no glob characters
        )
        if others:
            return _Invalid(f"expected {path.name} but found a file with another extension")
        return _Missing()
    if kind != "file":
        return _Invalid(f"{path.name} is a {kind}, not a file")
    if path.stat().st_size == 0:
        return _Invalid(f"{path.name} is empty")
    return path


def _through_link(root: Path, rel: str) -> bool:
    """Whether a parent folder of root/rel is a symbolic link (never followed on read)."""
    current = root
    for part in rel.split("/")[:-1]:
        current = current / part
        if _file_kind(current) == "symbolic link":
            return True
    return False


def _check_image(output_dir: Path, interface: Interface, shown_as: str) -> Any:
    """One image in /output/<relative_path>/ (any name with the extension), or, when no
    relative_path is declared, heldout's first layout /output/<slug><ext>. Messages count
    files and never name them: the algorithm chose the names."""
    rel = interface.output_relpath()
    folder = output_dir / rel
    legacy = interface.legacy_output_relpath()
    legacy_kind = _file_kind(output_dir / legacy) if legacy else None
    kind = _file_kind(folder)
    if kind is None:
        if legacy and legacy_kind is not None:
            return _check_file(output_dir / legacy, interface, output_dir)
        return _Missing()
    if kind != "directory":
        return _Invalid(f"{shown_as}/{rel} must be a directory holding one image, not a {kind}")
    if legacy_kind is not None:
        return _Invalid(f"both /output/{rel}/ and {shown_as}/{legacy} are present; write one")
    entries = list(folder.iterdir())
    if not entries:
        return _Missing()
    if len(entries) > 1:
        return _Invalid(f"{shown_as}/{rel}/ must hold exactly one file, it holds {len(entries)}")
    (entry,) = entries
    ext = interface.extension or ""
    entry_kind = _file_kind(entry)
    if entry_kind != "file":
        return _Invalid(f"{shown_as}/{rel}/ must hold one file, it holds a {entry_kind}")
    if not entry.name.lower().endswith(ext) or len(entry.name) <= len(ext):
        return _Invalid(f"the file in /output/{rel}/ does not end in {ext}")
    if entry.stat().st_size == 0:
        return _Invalid(f"the file in /output/{rel}/ is empty")
    return entry


def _file_kind(path: Path) -> str | None:
    try:
        mode = os.lstat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return None
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "directory"
    if stat.S_ISLNK(mode):
        return "symbolic link"
    return "special file"
