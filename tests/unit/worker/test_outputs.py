"""Output validation against the phase's interfaces, and the staged input layout."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from server.challenges.schemas import Interface, InterfaceKind, JsonValueType
from worker.executor.base import FailureKind
from worker.outputs import (
    CaseOutputs,
    stage_batch_inputs,
    stage_case_inputs,
    validate_batch_outputs,
    validate_outputs,
)

PROB = Interface(slug="probability-covid-19", kind=InterfaceKind.json, minimum=0, maximum=1)
SEG = Interface(slug="segmentation", kind=InterfaceKind.file, extension=".mha")
CT = Interface(slug="ct", kind=InterfaceKind.image)


def check(tmp_path: Path, raw: str | bytes, interface: Interface = PROB) -> CaseOutputs:
    path = tmp_path / interface.output_relpath()
    path.write_bytes(raw.encode() if isinstance(raw, str) else raw)
    return validate_outputs(tmp_path, [interface])


def reason(outputs: CaseOutputs) -> str | None:
    return outputs.failure.reason if outputs.failure else None


@pytest.mark.parametrize("raw", ["0.5522074103355408", "0", "1", "1.0", " 0.25\n", "5e-1"])
def test_a_bare_number_in_range_is_valid(tmp_path: Path, raw: str) -> None:
    outputs = check(tmp_path, raw)
    assert outputs.ok and outputs.values[PROB.slug] == json.loads(raw)


@pytest.mark.parametrize("raw", ["NaN", "Infinity", "-Infinity", "1e999", "-1e999"])
def test_nan_and_infinity_are_invalid(tmp_path: Path, raw: str) -> None:
    outputs = check(tmp_path, raw)
    assert reason(outputs) == (
        "invalid_output:probability-covid-19: NaN and infinite numbers are not valid JSON values"
    )


def test_nan_nested_in_an_object_is_invalid(tmp_path: Path) -> None:
    obj = Interface(slug="scores", kind=InterfaceKind.json, value_type=JsonValueType.object)
    assert reason(check(tmp_path, '{"a": [1, NaN]}', obj)) == (
        "invalid_output:scores: NaN and infinite numbers are not valid JSON values"
    )


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        ("1.5", "the value is outside [0, 1]"),
        ("-0.01", "the value is outside [0, 1]"),
        ('"0.5"', "expected a bare JSON number, got a string"),
        ("true", "expected a bare JSON number, got a boolean"),
        ('{"probability": 0.5}', "expected a bare JSON number, got an object"),
        ("[0.5]", "expected a bare JSON number, got an array"),
        ("null", "expected a bare JSON number, got null"),
        ("0.5 0.6", "probability-covid-19.json is not valid JSON"),
        ("{", "probability-covid-19.json is not valid JSON"),
        ("", "probability-covid-19.json is empty"),
        (b"\xff\xfe\x00garbage", "probability-covid-19.json is not valid JSON"),
    ],
)
def test_invalid_values_name_the_slug_and_why(tmp_path: Path, raw: str | bytes, why: str) -> None:
    outputs = check(tmp_path, raw)
    assert not outputs.ok and PROB.slug not in outputs.values
    assert outputs.failure is not None
    assert outputs.failure.kind is FailureKind.invalid_output
    assert outputs.failure.reason == f"invalid_output:{PROB.slug}: {why}"


def test_messages_never_quote_the_value(tmp_path: Path) -> None:
    # A value on sequestered data may encode the hidden case; the message must not carry it.
    outputs = check(tmp_path, "1.2345678")
    assert outputs.failure is not None and "1.2345678" not in outputs.failure.message
    assert "2345678" not in outputs.failure.reason


def test_missing_output_names_the_path(tmp_path: Path) -> None:
    outputs = validate_outputs(tmp_path, [PROB])
    assert outputs.failure is not None
    assert outputs.failure.reason == "missing_output:probability-covid-19"
    assert "/output/probability-covid-19.json" in outputs.failure.message


def test_every_failing_output_is_reported_and_extra_files_ignored(tmp_path: Path) -> None:
    other = Interface(slug="probability-severe-covid-19", kind=InterfaceKind.json)
    (tmp_path / "probability-severe-covid-19.json").write_text("0.1")
    (tmp_path / "debug.log").write_text("whatever")
    (tmp_path / "extra").mkdir()
    outputs = validate_outputs(tmp_path, [PROB, other])
    assert [f.reason for f in outputs.failures] == ["missing_output:probability-covid-19"]
    assert outputs.values == {"probability-severe-covid-19": 0.1}


@pytest.mark.parametrize(
    ("value_type", "good", "bad"),
    [
        (JsonValueType.integer, ["3", "3.0", "-1"], ["3.5", "true", '"3"']),
        (JsonValueType.boolean, ["true", "false"], ["1", "0", '"true"']),
        (JsonValueType.string, ['"a"'], ["1", "null"]),
        (JsonValueType.object, ['{"a": 1}'], ["[1]"]),
        (JsonValueType.array, ["[1, 2]"], ['{"a": 1}']),
    ],
)
def test_value_types(
    tmp_path: Path, value_type: JsonValueType, good: list[str], bad: list[str]
) -> None:
    iface = Interface(slug="v", kind=InterfaceKind.json, value_type=value_type)
    for raw in good:
        assert check(tmp_path, raw, iface).ok, raw
    for raw in bad:
        got = reason(check(tmp_path, raw, iface)) or ""
        assert got.startswith(f"invalid_output:v: expected a bare JSON {value_type.value}, got")


def test_choices_compare_booleans_and_numbers_apart(tmp_path: Path) -> None:
    grade = Interface(
        slug="grade", kind=InterfaceKind.json, value_type=JsonValueType.integer, choices=[0, 1, 2]
    )
    assert check(tmp_path, "2", grade).ok
    assert check(tmp_path, "2.0", grade).ok
    assert reason(check(tmp_path, "3", grade)) == (
        "invalid_output:grade: the value is not one of the allowed choices"
    )
    flag = Interface(
        slug="flag", kind=InterfaceKind.json, value_type=JsonValueType.boolean, choices=[True]
    )
    assert check(tmp_path, "true", flag).ok
    assert not check(tmp_path, "false", flag).ok
    label = Interface(
        slug="label",
        kind=InterfaceKind.json,
        value_type=JsonValueType.string,
        choices=["covid", "other"],
    )
    assert check(tmp_path, '"covid"', label).ok
    assert not check(tmp_path, '"COVID"', label).ok


def test_file_outputs(tmp_path: Path) -> None:
    assert reason(validate_outputs(tmp_path, [SEG])) == "missing_output:segmentation"
    (tmp_path / "segmentation.mha").write_bytes(b"")
    assert reason(validate_outputs(tmp_path, [SEG])) == (
        "invalid_output:segmentation: segmentation.mha is empty"
    )
    (tmp_path / "segmentation.mha").write_bytes(b"ObjectType = Image\n")
    outputs = validate_outputs(tmp_path, [SEG])
    assert outputs.ok and outputs.values == {"segmentation": tmp_path / "segmentation.mha"}


def test_file_output_with_the_wrong_extension(tmp_path: Path) -> None:
    (tmp_path / "segmentation.nii.gz").write_bytes(b"x")
    assert reason(validate_outputs(tmp_path, [SEG])) == (
        "invalid_output:segmentation: expected segmentation.mha but found a file with "
        "another extension"
    )


def test_wrong_extension_does_not_quote_the_name_found(tmp_path: Path) -> None:
    """The algorithm chose that name; on private data it could spell the case's bytes."""
    (tmp_path / "segmentation.4f626a656374").write_bytes(b"x")
    assert "4f626a" not in reason(validate_outputs(tmp_path, [SEG]))


def test_directories_and_symlinks_are_not_outputs(tmp_path: Path) -> None:
    (tmp_path / "segmentation.mha").mkdir()
    assert reason(validate_outputs(tmp_path, [SEG])) == (
        "invalid_output:segmentation: segmentation.mha is a directory, not a file"
    )
    os.symlink("/etc/passwd", tmp_path / "probability-covid-19.json")
    assert reason(validate_outputs(tmp_path, [PROB])) == (
        "invalid_output:probability-covid-19: probability-covid-19.json is a symbolic link, "
        "not a file"
    )


def test_oversized_json_is_refused_without_parsing(tmp_path: Path) -> None:
    from worker import outputs as mod

    with open(tmp_path / "probability-covid-19.json", "wb") as f:
        f.truncate(mod.MAX_JSON_BYTES + 1)
    assert reason(validate_outputs(tmp_path, [PROB])) == (
        "invalid_output:probability-covid-19: probability-covid-19.json is larger than 16 MiB"
    )


def test_stage_case_inputs_layout(tmp_path: Path) -> None:
    source = tmp_path / "store" / "ab12.mha"
    source.parent.mkdir()
    source.write_bytes(b"ObjectType = Image\nPatientAge = 055Y\n" + bytes(range(256)))
    staged = stage_case_inputs(tmp_path / "input", [CT], {"ct": source}, "case-7")
    (placed,) = (tmp_path / "input" / "images" / "ct").iterdir()
    assert staged.files == {"ct": placed} and staged.case_id == "case-7"
    assert placed.read_bytes() == source.read_bytes()  # byte for byte
    assert placed.suffix == ".mha" and len(placed.stem) == 36  # a random UUID
    assert placed.stat().st_mode & 0o004  # readable by the container's user
    description = json.loads((tmp_path / "input" / "inputs.json").read_text())
    (entry,) = description  # grand-challenge's form: the socket, and the image by name
    assert entry["interface"]["slug"] == "ct" and entry["interface"]["kind"] == "Image"
    assert entry["interface"]["relative_path"] == "images/ct"
    assert entry["image"]["name"] == placed.name and entry["value"] is None
    with pytest.raises(ValueError, match="do not match"):
        stage_case_inputs(tmp_path / "other", [CT], {"mri": source})


def test_stage_keeps_compound_extensions_and_copies_unreadable_sources(tmp_path: Path) -> None:
    source = tmp_path / "scan.nii.gz"
    source.write_bytes(b"\x1f\x8b rest")
    source.chmod(0o600)
    staged = stage_case_inputs(tmp_path / "input", [CT], {"ct": source})
    placed = staged.files["ct"]
    assert placed.name.endswith(".nii.gz")
    assert placed.stat().st_mode & 0o777 == 0o644 and placed.stat().st_ino != source.stat().st_ino


def test_batch_layout_and_per_case_validation(tmp_path: Path) -> None:
    source = tmp_path / "a.mha"
    source.write_bytes(b"x")
    staged = stage_batch_inputs(
        tmp_path / "input", [CT], {"c1": {"ct": source}, "c2": {"ct": source}}
    )
    assert sorted(p.name for p in (tmp_path / "input").iterdir()) == ["c1", "c2"]
    assert staged["c2"].files["ct"].parent == tmp_path / "input" / "c2" / "images" / "ct"

    out = tmp_path / "output"
    (out / "c1").mkdir(parents=True)
    (out / "c1" / "probability-covid-19.json").write_text("0.3")
    per_case = validate_batch_outputs(out, ["c1", "c2"], [PROB])
    assert per_case["c1"].values == {"probability-covid-19": 0.3}
    failure = per_case["c2"].failure
    assert failure is not None and failure.reason == "missing_output:probability-covid-19"
    assert "/output/c2/probability-covid-19.json" in failure.message


@pytest.mark.parametrize("case_id", ["..", "a/b", "", "-x", "a b"])
def test_case_ids_must_be_safe_directory_names(tmp_path: Path, case_id: str) -> None:
    with pytest.raises(ValueError):
        stage_batch_inputs(tmp_path, [CT], {case_id: {"ct": tmp_path}})


MASK = Interface(slug="lung-mask", kind=InterfaceKind.image)


def test_image_outputs_in_either_layout(tmp_path: Path) -> None:
    newer = tmp_path / "newer"
    (newer / "images" / "lung-mask").mkdir(parents=True)
    (newer / "images" / "lung-mask" / "3f2a.mha").write_bytes(b"mask")
    out = validate_outputs(newer, [MASK])
    assert out.ok and out.values["lung-mask"].name == "3f2a.mha"
    first = tmp_path / "first"
    first.mkdir()
    (first / "lung-mask.mha").write_bytes(b"mask")
    out = validate_outputs(first, [MASK])
    assert out.ok and out.values["lung-mask"].name == "lung-mask.mha"


def test_image_output_folder_must_hold_one_image(tmp_path: Path) -> None:
    folder = tmp_path / "images" / "lung-mask"
    folder.mkdir(parents=True)
    assert reason(validate_outputs(tmp_path, [MASK])) == "missing_output:lung-mask"
    (folder / "case-L001-secret.mha").write_bytes(b"a")
    (folder / "b.mha").write_bytes(b"b")
    out = validate_outputs(tmp_path, [MASK])
    assert str(reason(out)).startswith("invalid_output:lung-mask")
    assert out.failure is not None and "exactly one file, it holds 2" in out.failure.message
    assert "secret" not in out.failure.message  # names the algorithm chose are never shown
    (folder / "b.mha").unlink()
    (folder / "case-L001-secret.mha").rename(folder / "case-L001-secret.nii")
    out = validate_outputs(tmp_path, [MASK])
    assert out.failure is not None and "does not end in .mha" in out.failure.message
    assert "secret" not in out.failure.message
    (folder / "case-L001-secret.nii").rename(folder / "x.mha")
    (tmp_path / "lung-mask.mha").write_bytes(b"c")
    out = validate_outputs(tmp_path, [MASK])
    assert out.failure is not None and "both" in out.failure.message


def test_relative_path_separates_slug_and_path(tmp_path: Path) -> None:
    iface = Interface(slug="lung-mask", kind=InterfaceKind.image, relative_path="images/lungs")
    assert iface.output_relpath() == "images/lungs" and iface.legacy_output_relpath() is None
    (tmp_path / "images" / "lungs").mkdir(parents=True)
    (tmp_path / "images" / "lungs" / "m.mha").write_bytes(b"m")
    assert validate_outputs(tmp_path, [iface]).ok
    score = Interface(slug="score", kind=InterfaceKind.json, relative_path="results/score.json")
    (tmp_path / "results").mkdir()
    os.symlink(tmp_path / "images", tmp_path / "results" / "x")
    (tmp_path / "results" / "score.json").write_text("0.5")
    assert validate_outputs(tmp_path, [score]).values == {"score": 0.5}
    linked = Interface(slug="linked", kind=InterfaceKind.json, relative_path="results/x/s.json")
    out = validate_outputs(tmp_path, [linked])
    assert out.failure is not None and "symbolic link" in out.failure.message


@pytest.mark.parametrize(
    "bad", ["/etc/passwd", "../up.json", "a/../b.json", "./a.json", "a//b.json", "a\\b.json"]
)
def test_relative_path_must_be_plain_and_relative(bad: str) -> None:
    with pytest.raises(ValueError, match="relative_path"):
        Interface(slug="score", kind=InterfaceKind.json, relative_path=bad)
