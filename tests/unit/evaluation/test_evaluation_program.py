"""The evaluation container program, run in-process on files in a temporary directory."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.metrics import cohen_kappa_score, roc_auc_score

from evaluation import EVALUATOR_VERSION
from evaluation import evaluate as program
from evaluation.inputs import case_id, parse_config

SEVERE = "probability-severe-covid-19"
COVID = "probability-covid-19"


def stoic_config(**extra: Any) -> dict[str, Any]:
    # The shape of MetricConfig.model_dump(mode="json") from server/challenges/schemas.py.
    return {
        "primary": "auc-severity",
        "bootstrap_resamples": 200,
        "bootstrap_seed": 20211,
        "ci_level": 0.95,
        "metrics": [
            {
                "name": "auc-severity", "kind": "auc", "output": SEVERE, "label": "probSevere",
                "subset_label": "probCOVID", "subset_value": 1, "classes": None,
                "higher_is_better": True,
            },
            {
                "name": "auc-covid", "kind": "auc", "output": COVID, "label": "probCOVID",
                "subset_label": None, "subset_value": None, "classes": None,
                "higher_is_better": True,
            },
        ],
        **extra,
    }  # fmt: skip


def job(case: str, outputs: dict[str, Any], *, pk: str | None = None, socket: bool = False,
        name: str | None = None) -> dict[str, Any]:  # fmt: skip
    key = "socket" if socket else "interface"
    return {
        "pk": pk or f"pk-{case}",
        "inputs": [
            {key: {"slug": "ct-image", "relative_path": "images/ct"},
             "image": {"name": name or f"{case}.mha"}},
        ],
        "outputs": [
            {key: {"slug": slug, "relative_path": f"{slug}.json"}, "value": value}
            for slug, value in outputs.items()
        ],
    }  # fmt: skip


class Stoic:
    def __init__(self, n: int = 60, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.cases = [str(1000 + i) for i in range(n)]
        self.covid = rng.integers(0, 2, n)
        self.covid[:2] = [0, 1]
        self.severe = self.covid * (rng.random(n) < 0.4)
        self.severe[1:4] = [1, 0, 1]
        self.covid[1:4] = 1
        self.p_covid = np.clip(0.5 * self.covid + 0.6 * rng.random(n), 0, 1)
        self.p_severe = np.round(np.clip(0.3 * self.severe + 0.7 * rng.random(n), 0, 1), 2)

    def csv(self) -> str:
        rows = [f"{c},{v},{s}" for c, v, s in zip(self.cases, self.covid, self.severe, strict=True)]
        return "PatientID,probCOVID,probSevere\n" + "\n".join(rows) + "\n"

    def jobs(self) -> list[dict[str, Any]]:
        return [
            job(c, {COVID: float(pc), SEVERE: float(ps)})
            for c, pc, ps in zip(self.cases, self.p_covid, self.p_severe, strict=True)
        ]


def run(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    jobs: Any,
    csv: str,
    config: dict[str, Any],
    *extra: str,
) -> tuple[int, Any, dict[str, Any]]:
    (tmp_path / "input").mkdir(exist_ok=True)
    (tmp_path / "gt").mkdir(exist_ok=True)
    pred = tmp_path / "input" / "predictions.json"
    pred.write_text(json.dumps(jobs))
    (tmp_path / "gt" / "labels.csv").write_text(csv)
    (tmp_path / "gt" / "metrics.json").write_text(json.dumps(config))
    out = tmp_path / "output" / "metrics.json"
    rc = program.main([
        "--predictions", str(pred),
        "--ground-truth", str(tmp_path / "gt" / "labels.csv"),
        "--config", str(tmp_path / "gt" / "metrics.json"),
        "--output", str(out),
        *extra,
    ])  # fmt: skip
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1, lines  # one JSON line on stdout, success or not
    return rc, json.loads(lines[0]), json.loads(out.read_text())


def test_stoic_submission_is_scored_with_intervals_roc_and_delong_inputs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    st = Stoic()
    rc, line, out = run(tmp_path, capsys, st.jobs(), st.csv(), stoic_config())
    assert rc == 0
    pos = st.covid == 1
    severity = out["aggregates"]["auc-severity"]
    assert severity["value"] == pytest.approx(roc_auc_score(st.severe[pos], st.p_severe[pos]))
    assert severity["n"] == int(pos.sum())
    assert severity["ci_lower"] <= severity["value"] <= severity["ci_upper"]
    assert (severity["n_resamples"], severity["seed"]) == (200, 20211)
    covid = out["aggregates"]["auc-covid"]
    assert covid["value"] == pytest.approx(roc_auc_score(st.covid, st.p_covid))
    assert covid["n"] == 60
    assert out["aggregates"]["primary"] == "auc-severity"
    assert line["evaluated"]["primary"] == "auc-severity"
    assert line["evaluated"]["value"] == severity["value"]

    section = out["predictions"]["auc-severity"]
    assert section["cases"] == [c for c, p in zip(st.cases, pos, strict=True) if p]
    assert section["y_true"] == st.severe[pos].tolist()
    assert section["y_score"] == st.p_severe[pos].tolist()
    assert set(out["roc"]) == {"auc-severity", "auc-covid"}
    roc = out["roc"]["auc-severity"]
    assert len(roc["fpr"]) == len(roc["tpr"]) == len(roc["tpr_lower"]) == 101
    assert out["case"]["1000"] == {COVID: st.p_covid[0], SEVERE: st.p_severe[0]}
    assert out["evaluator_version"] == EVALUATOR_VERSION
    assert len(out["ground_truth_sha256"]) == 64


def test_socket_slugs_and_output_files_are_accepted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    st = Stoic()
    jobs = st.jobs()
    jobs[0] = job(st.cases[0], {COVID: st.p_covid[0], SEVERE: st.p_severe[0]}, socket=True)
    for item in jobs[0]["outputs"]:
        item["interface"] = None  # newer payloads may carry both keys, one of them empty
    # Interface given as a bare slug.
    jobs[1]["outputs"] = [
        {"interface": COVID, "value": float(st.p_covid[1])},
        {"interface": SEVERE, "value": float(st.p_severe[1])},
    ]
    # Value not inline: read from /input/<pk>/output/<relative_path>.
    jobs[2]["outputs"][1].pop("value")
    out_dir = tmp_path / "input" / jobs[2]["pk"] / "output"
    out_dir.mkdir(parents=True)
    (out_dir / f"{SEVERE}.json").write_text(json.dumps(float(st.p_severe[2])))
    # Or from the file the item names, as heldout's worker writes it.
    item = jobs[3]["outputs"][1]
    item.pop("value")
    item["file"] = f"/input/{jobs[3]['pk']}/output/nested/severe.json"
    (tmp_path / "input" / jobs[3]["pk"] / "output" / "nested").mkdir(parents=True)
    (tmp_path / "input" / jobs[3]["pk"] / "output" / "nested" / "severe.json").write_text("0.25")
    rc, _, out = run(tmp_path, capsys, jobs, st.csv(), stoic_config())
    assert rc == 0
    assert out["case"][st.cases[2]][SEVERE] == st.p_severe[2]
    assert out["case"][st.cases[3]][SEVERE] == 0.25


def _error(rc: int, line: Any, out: dict[str, Any], kind: str = "invalid_predictions") -> Any:
    assert line == out  # the same object on stdout and in metrics.json
    assert line["error"]["kind"] == kind
    assert rc == (1 if kind == "invalid_predictions" else 2)
    return line["error"]


def test_missing_cases_are_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    st = Stoic()
    err = _error(*run(tmp_path, capsys, st.jobs()[:-2], st.csv(), stoic_config()))
    assert err["cases"] == st.cases[-2:]
    assert "no prediction for 2 of 60" in err["message"] and st.cases[-1] in err["message"]


def test_duplicate_and_unknown_cases_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    st = Stoic()
    jobs = st.jobs()
    dup = job(st.cases[5], {COVID: 0.5, SEVERE: 0.5}, pk="again", name=f"{st.cases[5]}.nii.gz")
    err = _error(*run(tmp_path, capsys, [*jobs, dup], st.csv(), stoic_config()))
    assert err["cases"] == [st.cases[5]] and "more than one prediction" in err["message"]
    stray = job("9999", {COVID: 0.5, SEVERE: 0.5})
    err = _error(*run(tmp_path, capsys, [*jobs, stray], st.csv(), stoic_config()))
    assert err["cases"] == ["9999"] and "not in the test set" in err["message"]


@pytest.mark.parametrize(
    ("value", "why"),
    [
        (math.nan, "not a finite number"),
        (math.inf, "not a finite number"),
        (1.2, "outside [0, 1]"),
        (-0.01, "outside [0, 1]"),
        ("0.5", "expected a number, got str"),
        (True, "expected a number, got bool"),
        ([0.5], "expected a number, got list"),
    ],
)
def test_invalid_values_are_refused_naming_case_and_interface(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], value: Any, why: str
) -> None:
    st = Stoic()
    jobs = st.jobs()
    # Case 1000 is PCR-negative: outside the severity subset, still checked.
    assert st.covid[0] == 0
    jobs[0]["outputs"][1]["value"] = value
    err = _error(*run(tmp_path, capsys, jobs, st.csv(), stoic_config()))
    assert err["cases"] == ["1000"] and err["interface"] == SEVERE
    assert why in err["message"] and "1000" in err["message"]


def test_missing_output_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    st = Stoic()
    jobs = st.jobs()
    for j in (jobs[3], jobs[7]):
        j["outputs"] = j["outputs"][:1]
    err = _error(*run(tmp_path, capsys, jobs, st.csv(), stoic_config()))
    assert err["cases"] == [st.cases[3], st.cases[7]] and err["interface"] == SEVERE
    assert "output missing" in err["message"]


def test_not_a_job_list_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    st = Stoic()
    err = _error(*run(tmp_path, capsys, {"jobs": []}, st.csv(), stoic_config()))
    assert "list of jobs" in err["message"]
    nameless = st.jobs()
    nameless[0]["inputs"] = []
    err = _error(*run(tmp_path, capsys, nameless, st.csv(), stoic_config()))
    assert err["cases"] == ["pk-1000"] and "no input image name" in err["message"]


def test_configuration_problems_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    st = Stoic()
    err = _error(
        *run(tmp_path, capsys, st.jobs(), st.csv(), stoic_config(extra=1)), "configuration"
    )
    assert "unknown metric configuration keys" in err["message"]
    bad = stoic_config()
    bad["metrics"][0]["label"] = "probDeath"
    err = _error(*run(tmp_path, capsys, st.jobs(), st.csv(), bad), "configuration")
    assert "no column 'probDeath'" in err["message"]
    one_class = st.csv().replace(",1\n", ",0\n")  # no severe case left
    err = _error(*run(tmp_path, capsys, st.jobs(), one_class, stoic_config()), "configuration")
    assert "undefined on this ground truth" in err["message"]


def test_unexpected_errors_exit_3_with_a_generic_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(*_: Any, **__: Any) -> None:
        raise RuntimeError("secret detail")

    monkeypatch.setattr(program, "evaluate", boom)
    rc, line, out = run(tmp_path, capsys, [], "id,x\n", stoic_config())
    assert rc == 3 and line == out
    assert line["error"]["kind"] == "internal" and "secret" not in line["error"]["message"]


def _grades_setup(n: int = 80) -> tuple[list[str], np.ndarray, np.ndarray, str]:
    rng = np.random.default_rng(1)
    cases = [f"c{i}" for i in range(n)]
    corads = rng.integers(1, 6, n)
    pred = np.clip(corads + rng.normal(0, 0.8, n), 0.6, 5.4)
    csv = "case,corads\n" + "".join(f"{c},{g}\n" for c, g in zip(cases, corads, strict=True))
    return cases, corads, pred, csv


def _single(name: str, kind: str, output: str, label: str, **kw: Any) -> dict[str, Any]:
    spec = {"name": name, "kind": kind, "output": output, "label": label, **kw}
    return {"primary": name, "bootstrap_resamples": 100, "metrics": [spec]}


def test_ordinal_predictions_are_rounded_and_range_checked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cases, corads, pred, csv = _grades_setup()
    jobs = [job(c, {"corads": float(p)}) for c, p in zip(cases, pred, strict=True)]
    config = _single("qwk", "quadratic_kappa", "corads", "corads")
    rc, _, out = run(tmp_path, capsys, jobs, csv, config)
    assert rc == 0
    expected = cohen_kappa_score(
        corads, np.floor(pred + 0.5).astype(int), weights="quadratic", labels=range(1, 6)
    )
    assert out["aggregates"]["qwk"]["value"] == pytest.approx(expected)
    assert out["predictions"]["qwk"]["y_score"] == pytest.approx(pred.tolist())

    jobs[4]["outputs"][0]["value"] = 5.6
    err = _error(*run(tmp_path, capsys, jobs, csv, config))
    assert err["cases"] == ["c4"] and "rounds to grade 6, outside 1..5" in err["message"]


def test_macro_auroc_takes_class_dicts_or_lists_and_multilabel_columns(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rng = np.random.default_rng(2)
    n = 90
    cases = [f"c{i}" for i in range(n)]
    labels = np.array(["normal", "pneumonia", "covid"])[rng.integers(0, 3, n)]
    labels[:3] = ["normal", "pneumonia", "covid"]
    classes = ["normal", "pneumonia", "covid"]
    probs = rng.dirichlet(np.ones(3), n) + 0.3 * (labels[:, None] == np.array(classes))
    probs /= probs.sum(axis=1, keepdims=True)
    csv = "case,dx\n" + "".join(f"{c},{d}\n" for c, d in zip(cases, labels, strict=True))
    jobs = []
    for i, c in enumerate(cases):
        value: Any = dict(zip(classes, probs[i].tolist(), strict=True))
        if i % 2:
            value = probs[i].tolist()
        jobs.append(job(c, {"dx": value}))
    config = _single("auroc", "macro_auroc", "dx", "dx", classes=classes)
    rc, _, out = run(tmp_path, capsys, jobs, csv, config)
    assert rc == 0
    codes = np.array([classes.index(v) for v in labels])
    expected = roc_auc_score(codes, probs, multi_class="ovr", average="macro")
    assert out["aggregates"]["auroc"]["value"] == pytest.approx(expected)
    assert out["predictions"]["auroc"]["classes"] == classes

    jobs[0]["outputs"][0]["value"] = {"normal": 0.5, "covid": 0.5}
    err = _error(*run(tmp_path, capsys, jobs, csv, config))
    assert err["cases"] == ["c0"] and "expected keys" in err["message"]

    y = rng.integers(0, 2, (n, 2))
    csv = "case,effusion,nodule\n" + "".join(
        f"{c},{a},{b}\n" for c, (a, b) in zip(cases, y, strict=True)
    )
    p = np.clip(0.4 * y + 0.6 * rng.random((n, 2)), 0, 1)
    jobs = [
        job(c, {"findings": {"effusion": a, "nodule": b}})
        for c, (a, b) in zip(cases, p.tolist(), strict=True)
    ]
    config = _single(
        "findings", "macro_auroc", "findings", "findings", classes=["effusion", "nodule"]
    )
    rc, _, out = run(tmp_path, capsys, jobs, csv, config)
    assert rc == 0
    assert out["aggregates"]["findings"]["value"] == pytest.approx(roc_auc_score(y, p))


def test_accuracy_compares_labels_across_spellings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cases, corads, _, csv = _grades_setup(40)
    preds: list[Any] = [int(g) for g in corads]
    preds[0] = float(preds[0])  # 3.0 equals "3"
    preds[1] = str(preds[1])
    preds[2] = 9  # wrong
    jobs = [job(c, {"corads": p}) for c, p in zip(cases, preds, strict=True)]
    rc, _, out = run(tmp_path, capsys, jobs, csv, _single("acc", "accuracy", "corads", "corads"))
    assert rc == 0
    assert out["aggregates"]["acc"]["value"] == pytest.approx(39 / 40)


def test_mae_and_pearson(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cases, corads, pred, csv = _grades_setup()
    jobs = [job(c, {"corads": float(p)}) for c, p in zip(cases, pred, strict=True)]
    config = _single("mae", "mae", "corads", "corads")
    config["metrics"].append(
        {"name": "r", "kind": "pearson", "output": "corads", "label": "corads"}
    )
    rc, _, out = run(tmp_path, capsys, jobs, csv, config)
    assert rc == 0
    assert out["aggregates"]["mae"]["value"] == pytest.approx(np.mean(np.abs(pred - corads)))
    assert out["aggregates"]["mae"]["higher_is_better"] is False
    assert out["aggregates"]["r"]["value"] == pytest.approx(np.corrcoef(corads, pred)[0, 1])
    assert "mae" not in out["roc"]


def test_case_ids_are_file_name_stems() -> None:
    assert case_id("1234.mha") == "1234"
    assert case_id("1234.nii.gz") == "1234"
    assert case_id("images/ct/case.001.tif") == "case.001"
    assert case_id("plain") == "plain"


def test_case_interface_picks_the_naming_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    st = Stoic()
    jobs = st.jobs()
    for j, c in zip(jobs, st.cases, strict=True):
        j["inputs"].insert(0, {"interface": "lung-mask", "image": {"name": f"mask-{c}.mha"}})
    err = _error(*run(tmp_path, capsys, jobs, st.csv(), stoic_config()))
    assert "not in the test set" in err["message"]
    rc, _, _ = run(tmp_path, capsys, jobs, st.csv(), stoic_config(), "--case-interface", "ct-image")
    assert rc == 0


def test_ground_truth_baked_into_the_image_is_found(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    st = Stoic()
    mounted, baked = tmp_path / "mounted", tmp_path / "baked"
    baked.mkdir()
    (baked / "labels.csv").write_text(st.csv())
    (baked / "metrics.json").write_text(json.dumps(stoic_config()))
    monkeypatch.setattr(program, "GROUND_TRUTH_DIRS", (mounted, baked))
    pred = tmp_path / "predictions.json"
    pred.write_text(json.dumps(st.jobs()))
    out = tmp_path / "out" / "metrics.json"
    assert program.main(["--predictions", str(pred), "--output", str(out)]) == 0
    assert json.loads(out.read_text())["aggregates"]["primary"] == "auc-severity"
    capsys.readouterr()


def test_declared_grades_widen_the_range_and_must_be_integers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cases, corads, pred, _ = _grades_setup()
    capped = np.minimum(corads, 4)  # no case is CO-RADS 5 in this test set
    csv = "case,corads\n" + "".join(f"{c},{g}\n" for c, g in zip(cases, capped, strict=True))
    pred = np.minimum(pred, 4.4)
    jobs = [job(c, {"corads": float(p)}) for c, p in zip(cases, pred, strict=True)]
    jobs[0]["outputs"][0]["value"] = 5
    config = _single("qwk", "quadratic_kappa", "corads", "corads")
    err = _error(*run(tmp_path, capsys, jobs, csv, config))
    assert err["cases"] == ["c0"] and "outside 1..4" in err["message"]
    config["metrics"][0]["classes"] = [1, 2, 3, 4, 5]
    rc, _, _ = run(tmp_path, capsys, jobs, csv, config)
    assert rc == 0
    config["metrics"][0]["classes"] = ["low", "high"]
    err = _error(*run(tmp_path, capsys, jobs, csv, config), "configuration")
    assert "integer grades" in err["message"]


def test_accepts_the_servers_metric_config_dump() -> None:
    schemas = pytest.importorskip("server.challenges.schemas")
    dumped = schemas.MetricConfig.model_validate(stoic_config()).model_dump(mode="json")
    parsed = parse_config(dumped)
    assert parsed.primary == "auc-severity" and parsed.bootstrap_seed == 20211
    assert [(m.name, m.kind, m.subset_label, m.subset_value) for m in parsed.metrics] == [
        ("auc-severity", "auc", "probCOVID", 1),
        ("auc-covid", "auc", None, None),
    ]
    mae = schemas.MetricSpec(name="err", kind="mae", output="x", label="y")
    assert (
        parse_config({"primary": "err", "metrics": [mae.model_dump(mode="json")]})
        .metrics[0]
        .higher_is_better
        is False
    )
