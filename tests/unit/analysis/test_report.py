"""The report from a toy analysis (no services): deterministic bytes, escaped team names,
one-team phases, and every figure as PNG and SVG with its data as CSV."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from evaluation import analysis as an
from server.analysis.report import render
from server.analysis.service import ChallengeAnalysis, PhaseAnalysis, TeamRow
from server.challenges.schemas import MetricSpec

EVIL = '<script>alert("x")</script>'


def toy_analysis(teams: list[str] | None = None) -> ChallengeAnalysis:
    names = teams or ["alpha", "beta", EVIL, "delta"]
    rng = np.random.default_rng(0)
    y = np.r_[np.ones(40), np.zeros(40)].astype(int)
    scores = np.stack([y * (1.0 - 0.2 * t) + rng.random(80) for t in range(len(names))])
    target = rng.normal(size=60)
    errors = np.stack([target + rng.normal(0, 1 + 0.3 * t, 60) for t in range(len(names))])
    phases = []
    for slug, task, metric in (
        ("auc-phase", an.Task("auc-phase", "auc", names, y, scores),
         MetricSpec(name="auc", kind="auc", output="p", label="y")),
        ("mae-phase", an.Task("mae-phase", "mae", names, target, errors, higher_is_better=False),
         MetricSpec(name="mae", kind="mae", output="p", label="y")),
    ):  # fmt: skip
        result = an.analyse_task(task, n_resamples=200, seed=3)
        rows = [
            TeamRow(n, i + 1, float(result.uncertainty.values[i]), (None, None))
            for i, n in enumerate(names)
        ]
        grid = np.linspace(0, 1, 11).tolist()
        roc = {n: {"fpr": grid, "tpr": grid, "tpr_lower": grid, "tpr_upper": grid} for n in names}
        phases.append(
            PhaseAnalysis(
                slug=slug, title=slug.title(), metric=metric, n_resamples=200, seed=3, level=0.95,
                rows=rows, result=result, reason=None,
                data={"splits": {"test": {"dataset": "test", "cases": 80}},
                      "scored": {"cases": 80, "labels": {"0": 40, "1": 40}}},
                roc=roc if slug == "auc-phase" else {}, failures={"timeout": 2},
            )
        )  # fmt: skip
    done = [p.result for p in phases if p.result is not None]
    return ChallengeAnalysis("toy", "Toy challenge", phases, an.consensus(done), None)


def test_report_is_deterministic_and_escapes_team_names(tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    render(toy_analysis(), one)
    render(toy_analysis(), two)
    files = sorted(p.relative_to(one) for p in one.rglob("*") if p.is_file())
    assert {Path("report.html"), Path("report.pdf"), Path("analysis.json")} <= set(files)
    for kind in ("blob", "significance", "robustness", "leaderboard"):
        for phase in ("auc-phase", "mae-phase"):
            assert (one / "figures" / f"{phase}-{kind}.svg").exists()
            assert (one / "figures" / f"{phase}-{kind}.png").exists()
    assert (one / "figures" / "auc-phase-roc.svg").exists()
    assert (one / "data" / "consensus.csv").exists()
    for f in files:
        if f.suffix in (".csv", ".json", ".svg", ".html", ".png"):
            assert (one / f).read_bytes() == (two / f).read_bytes(), f
    html = (one / "report.html").read_text()
    assert EVIL not in html and "&lt;script&gt;" in html
    assert "<script" not in html
    for f in files:
        if f.suffix == ".svg":
            assert "<script" not in (one / f).read_text()
    assert "Date" not in (one / "figures" / "auc-phase-blob.svg").read_text()
    csv = (one / "data" / "mae-phase-rank-summary.csv").read_text().splitlines()
    assert csv[0] == "team,rank,median_rank,rank_lower,rank_upper,p_first"


def test_report_with_one_team(tmp_path: Path) -> None:
    render(toy_analysis(["solo"]), tmp_path)
    html = (tmp_path / "report.html").read_text()
    assert "one team: nothing to compare" in html
