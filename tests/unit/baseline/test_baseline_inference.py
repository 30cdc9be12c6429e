"""T2 entry point: the STOIC phase interfaces, batch mode, weights lookup and failures."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from baseline_algorithm import artifact as artifact_module
from baseline_algorithm import inference
from baseline_algorithm.inference import COVID_SLUG, SEVERE_SLUG, InferenceError

OUTPUT_FILES = ("probability-covid-19.json", "probability-severe-covid-19.json")


def stage_case(train_set: Path, root: Path, patient_id: str, name: str) -> Path:
    """One case as grand-challenge serves it: /input/images/ct/<uuid>.mha."""
    ct = root / "images" / "ct"
    ct.mkdir(parents=True)
    shutil.copyfile(train_set / "images" / "ct" / f"{patient_id}.mha", ct / name)
    return root


def read_bare_number(path: Path) -> float:
    text = path.read_text()
    value = json.loads(text)
    # A bare JSON number, not an object or a list (STOIC's JSON value interface).
    assert isinstance(value, float), text
    assert math.isfinite(value) and 0.0 <= value <= 1.0
    return value


def test_single_case_writes_the_two_stoic_outputs(
    train_set: Path, artifact: Path, tmp_path: Path
) -> None:
    assert (COVID_SLUG + ".json", SEVERE_SLUG + ".json") == OUTPUT_FILES
    inp = stage_case(
        train_set, tmp_path / "input", "10000", "8f14e45f-ceea-467a-9575-0d5d7f3e2b1c.mha"
    )
    out = tmp_path / "output"
    assert (
        inference.main(
            [
                "--input",
                str(inp),
                "--output",
                str(out),
                "--artifact",
                str(artifact),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUT_FILES)
    values = [read_bare_number(out / name) for name in OUTPUT_FILES]

    # Deterministic: a second run gives the same numbers.
    again = tmp_path / "again"
    inference.main(["--input", str(inp), "--output", str(again), "--artifact", str(artifact)])
    assert [read_bare_number(again / name) for name in OUTPUT_FILES] == values


def test_batch_mode_writes_one_output_directory_per_case(
    train_set: Path, artifact: Path, tmp_path: Path
) -> None:
    inp = tmp_path / "input"
    for case, pid in (("case-a", "10000"), ("case-b", "10001"), ("case-c", "10002")):
        stage_case(train_set, inp / case, pid, f"{case}-uuid.mha")
    (inp / "inputs.json").write_text("[]")  # grand-challenge's description is ignored
    out = tmp_path / "output"
    results = inference.run(inp, out, artifact, device=inference.torch.device("cpu"))
    assert [job.case for job, _, _ in results] == ["case-a", "case-b", "case-c"]
    assert sorted(p.name for p in out.iterdir()) == ["case-a", "case-b", "case-c"]
    for case in ("case-a", "case-b", "case-c"):
        assert sorted(p.name for p in (out / case).iterdir()) == sorted(OUTPUT_FILES)
        for name in OUTPUT_FILES:
            read_bare_number(out / case / name)

    # Same predictions as one case at a time.
    single = stage_case(train_set, tmp_path / "single", "10001", "x.mha")
    inference.run(single, tmp_path / "single-out", artifact, inference.torch.device("cpu"))
    assert read_bare_number(tmp_path / "single-out" / OUTPUT_FILES[0]) == read_bare_number(
        out / "case-b" / OUTPUT_FILES[0]
    )


def test_batch_mode_reports_a_broken_case_and_keeps_the_others(
    train_set: Path, artifact: Path, tmp_path: Path, capsys
) -> None:
    inp = tmp_path / "input"
    stage_case(train_set, inp / "good", "10000", "a.mha")
    broken = inp / "broken" / "images" / "ct"
    broken.mkdir(parents=True)
    (broken / "b.mha").write_bytes(b"not a MetaImage")
    out = tmp_path / "output"
    args = ["--input", str(inp), "--output", str(out), "--artifact", str(artifact)]
    assert inference.main(args) == 1
    assert "1 of 2 case(s) failed: broken" in capsys.readouterr().err
    assert sorted(p.name for p in (out / "good").iterdir()) == sorted(OUTPUT_FILES)
    assert not (out / "broken").exists()


def test_two_images_in_single_mode_fail_with_a_reason(
    train_set: Path, artifact: Path, tmp_path: Path, capsys
) -> None:
    inp = stage_case(train_set, tmp_path / "input", "10000", "a.mha")
    shutil.copyfile(inp / "images" / "ct" / "a.mha", inp / "images" / "ct" / "b.mha")
    out = tmp_path / "output"
    assert (
        inference.main(["--input", str(inp), "--output", str(out), "--artifact", str(artifact)])
        == 1
    )
    assert "exactly one image" in capsys.readouterr().err
    assert not out.exists()


def test_no_input_fails_with_a_reason(artifact: Path, tmp_path: Path) -> None:
    (tmp_path / "input").mkdir()
    with pytest.raises(InferenceError, match="no input image"):
        inference.find_jobs(tmp_path / "input", tmp_path / "output")


def test_missing_weights_fail_naming_both_places(
    train_set: Path, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(artifact_module, "PACKAGED_ARTIFACT_DIR", tmp_path / "packaged")
    inp = stage_case(train_set, tmp_path / "input", "10000", "a.mha")
    code = inference.main(
        [
            "--input",
            str(inp),
            "--output",
            str(tmp_path / "out"),
            "--artifact",
            str(tmp_path / "empty"),
        ]
    )
    assert code == 1
    err = capsys.readouterr().err
    assert "no trained weights" in err and str(tmp_path / "empty") in err


def test_falls_back_to_packaged_weights(
    train_set: Path, artifact: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(artifact_module, "PACKAGED_ARTIFACT_DIR", artifact)
    inp = stage_case(train_set, tmp_path / "input", "10000", "a.mha")
    assert (
        inference.main(
            [
                "--input",
                str(inp),
                "--output",
                str(tmp_path / "out"),
                "--artifact",
                str(tmp_path / "empty"),
            ]
        )
        == 0
    )
    read_bare_number(tmp_path / "out" / OUTPUT_FILES[0])


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -0.1, 1.5])
def test_invalid_probabilities_are_never_written(tmp_path: Path, value: float) -> None:
    with pytest.raises(InferenceError, match="not a probability"):
        inference.write_value(tmp_path / "p.json", value)
    assert not (tmp_path / "p.json").exists()


def test_age_and_sex_from_the_header_reach_the_model(
    train_set: Path, artifact: Path, tmp_path: Path
) -> None:
    """The clinical features enter the heads: a header with another age changes the output."""
    import SimpleITK as sitk

    loaded = artifact_module.load_artifact(artifact)
    model = loaded.build_model()
    # Make the age weight large so that the effect cannot vanish in rounding.
    with inference.torch.no_grad():
        model.covid_head.weight[0, -4] = 5.0
    image = sitk.ReadImage(str(train_set / "images" / "ct" / "10000.mha"))
    paths = []
    for age in ("020Y", "090Y"):
        image.SetMetaData("PatientAge", age)
        path = tmp_path / f"{age}.mha"
        sitk.WriteImage(image, str(path), True)
        paths.append(path)
    young, old = (
        inference.predict(model, loaded.preprocess_config, p, inference.torch.device("cpu"))
        for p in paths
    )
    assert old[0] > young[0]
