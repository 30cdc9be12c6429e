"""The challenge report: a self-contained HTML page and a PDF, laid out like the results
section the BIAS guideline asks for (data, metrics and ranking method, leaderboard with CIs,
rank distributions, significance map, robustness, ROC curves, failures, consensus); every
figure also as PNG and SVG, and its data as CSV.

Deterministic: the same analysis gives the same CSV, JSON and SVG bytes (fixed SVG hash
salt, no dates in SVG, PNG or PDF metadata; figures drawn without pyplot's global state).
Team names are the participants' own text: the HTML escapes them, and SVG text is drawn as
paths."""

from __future__ import annotations

import csv
import html
import io
import json
import re
import tempfile
import zipfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import matplotlib
import numpy as np
from matplotlib.backends.backend_pdf import PdfPages
from matplotlib.figure import Figure

from server.analysis.service import (
    CONSENSUS_METHOD,
    ChallengeAnalysis,
    PhaseAnalysis,
    as_json,
)

RC: dict[str, Any] = {
    "svg.hashsalt": "heldout-report",
    "svg.fonttype": "path",
    "font.size": 9,
    "figure.dpi": 100,
}
SVG_META = {"Date": None, "Creator": None}
PNG_META = {"Software": None}
PDF_META = {"CreationDate": None, "ModDate": None, "Creator": None, "Producer": None}
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "x"


def _labels(teams: Sequence[str]) -> list[str]:
    """Tick labels: long team names shortened so the plot keeps its room (tables keep them)."""
    return [t if len(t) <= 18 else t[:17] + "…" for t in teams]


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool | np.bool_):
        return "1" if v else "0"
    if isinstance(v, float | np.floating):
        f = float(v)
        return "" if not np.isfinite(f) else format(f, ".10g")
    return str(v)


class _Writer:
    """Collects figures (SVG, PNG, one PDF page each) and CSVs under one directory."""

    def __init__(self, root: Path, pdf: PdfPages) -> None:
        self.root = root
        self.pdf = pdf
        (root / "figures").mkdir(parents=True, exist_ok=True)
        (root / "data").mkdir(parents=True, exist_ok=True)

    def figure(self, name: str, fig: Figure) -> str:
        """Save `fig`; returns its inline SVG for the HTML."""
        svg = io.BytesIO()
        fig.savefig(svg, format="svg", metadata=SVG_META)
        (self.root / "figures" / f"{name}.svg").write_bytes(svg.getvalue())
        fig.savefig(self.root / "figures" / f"{name}.png", format="png", metadata=PNG_META)
        self.pdf.savefig(fig)  # type: ignore[no-untyped-call]
        text = svg.getvalue().decode()
        return text[text.index("<svg") :]

    def csv(self, name: str, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
        path = self.root / "data" / f"{name}.csv"
        with path.open("w", newline="") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(header)
            for row in rows:
                w.writerow([_fmt(v) for v in row])
        return f"data/{name}.csv"


def _order(p: PhaseAnalysis) -> list[int]:
    """Team indices in official-rank order (ties by name)."""
    assert p.result is not None
    u = p.result.uncertainty
    return sorted(range(len(u.teams)), key=lambda t: (int(u.official[t]), u.teams[t]))


def _forest(p: PhaseAnalysis, order: list[int]) -> Figure:
    fig = Figure(figsize=(6.5, 0.35 * len(order) + 1.2))
    ax = fig.add_subplot()
    for y, t in enumerate(order):
        row = p.rows[t]
        lo, hi = row.ci
        if lo is not None and hi is not None:
            ax.plot([lo, hi], [y, y], color="0.3", lw=1.5)
        if row.value is not None:
            ax.plot([row.value], [y], "o", color="C0")
    ax.set_yticks(range(len(order)), _labels([p.rows[t].team for t in order]))
    ax.invert_yaxis()
    ax.set_xlabel(f"{p.metric.name} ({int(p.level * 100)}% bootstrap CI)")
    fig.tight_layout()
    return fig


def _blob(teams: list[str], dist: Any, median: Any, lower: Any, upper: Any, title: str) -> Figure:
    k = len(teams)
    fig = Figure(figsize=(max(4.0, 0.45 * k + 1.5), max(3.0, 0.3 * k + 1.5)))
    ax = fig.add_subplot()
    for x in range(k):
        share = np.asarray(dist[x])
        ranks = np.flatnonzero(share > 0)
        ax.scatter(np.full(ranks.size, x), ranks + 1, s=300 * share[ranks], color="C0", alpha=0.6)
        ax.plot([x, x], [lower[x], upper[x]], color="k", lw=1)
        ax.plot([x], [median[x]], "_", color="k", ms=12, mew=2)
    ax.set_xticks(range(k), _labels(teams), rotation=45, ha="right")
    ax.set_ylabel("rank")
    ax.set_ylim(k + 0.5, 0.5)
    ax.set_title(title)
    fig.tight_layout()
    return fig


def _significance(teams: list[str], sig: Any) -> Figure:
    k = len(teams)
    fig = Figure(figsize=(max(3.5, 0.35 * k + 2), max(3.0, 0.35 * k + 1.5)))
    ax = fig.add_subplot()
    ax.imshow(np.asarray(sig, dtype=float), cmap="Blues", vmin=0, vmax=1.3)
    ax.set_xticks(range(k), _labels(teams), rotation=45, ha="right")
    ax.set_yticks(range(k), _labels(teams))
    ax.set_xlabel("than (column)")
    ax.set_ylabel("better (row)")
    fig.tight_layout()
    return fig


def _robustness(p: PhaseAnalysis) -> Figure:
    assert p.result is not None
    a = p.result
    fig = Figure(figsize=(7.0, 2.8))
    left, right = fig.subplots(1, 2)
    names = [s for s in a.scheme_tau]
    left.barh(range(len(names)), [a.scheme_tau[s] for s in names], color="C1")
    left.set_yticks(range(len(names)), names)
    left.set_xlim(-1, 1)
    left.set_xlabel("Kendall's tau vs official")
    tau = a.uncertainty.tau[np.isfinite(a.uncertainty.tau)]
    if tau.size:
        right.hist(tau, bins=20, range=(-1, 1), color="C0")
    right.set_xlabel("Kendall's tau, bootstrap vs official")
    fig.tight_layout()
    return fig


def _roc(p: PhaseAnalysis) -> Figure:
    fig = Figure(figsize=(4.5, 4.5))
    ax = fig.add_subplot()
    for i, (team, roc) in enumerate(sorted(p.roc.items())):
        fpr = np.asarray(roc.get("fpr", []), dtype=float)
        tpr = np.asarray(roc.get("tpr", []), dtype=float)
        if fpr.size == 0 or fpr.shape != tpr.shape:
            continue
        color = f"C{i % 10}"
        ax.plot(fpr, tpr, color=color, lw=1.2, label=_labels([team])[0])
        lo, hi = roc.get("tpr_lower"), roc.get("tpr_upper")
        if lo is not None and hi is not None and len(lo) == fpr.size == len(hi):
            lo_a = np.asarray([np.nan if v is None else v for v in lo], dtype=float)
            hi_a = np.asarray([np.nan if v is None else v for v in hi], dtype=float)
            ax.fill_between(fpr, lo_a, hi_a, color=color, alpha=0.15, lw=0)
    ax.plot([0, 1], [0, 1], color="0.7", lw=0.8, ls="--")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in row) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _figure_block(svg: str, name: str, csv_path: str, caption: str) -> str:
    links = (
        f'<a href="figures/{name}.png">PNG</a> · <a href="figures/{name}.svg">SVG</a> · '
        f'<a href="{csv_path}">data (CSV)</a>'
    )
    return f"<figure>{svg}<figcaption>{html.escape(caption)} ({links})</figcaption></figure>"


def _phase_section(p: PhaseAnalysis, w: _Writer) -> str:
    name = _slug(p.slug)
    parts = [f"<section><h2>Phase {html.escape(p.title)} ({html.escape(p.slug)})</h2>"]
    # 1. Data
    parts.append("<h3>Data</h3>")
    splits = p.data.get("splits", {})
    parts.append(
        _table(
            ["split", "dataset", "cases"],
            [[s, v["dataset"], v["cases"]] for s, v in splits.items()],
        )
    )
    scored = p.data.get("scored")
    if scored:
        balance = scored.get("labels") or {}
        parts.append(
            f"<p>{scored['cases']} test cases scored by {html.escape(p.metric.name)}; "
            "class balance:</p>"
        )
        parts.append(_table(["label", "cases"], sorted(balance.items())))
        w.csv(f"{name}-data", ["label", "cases"], sorted(balance.items()))
    # 2. Metric and ranking
    parts.append("<h3>Metric and ranking method</h3>")
    direction = "higher" if p.metric.higher_is_better else "lower"
    parts.append(
        f"<p>Primary metric <b>{html.escape(p.metric.name)}</b> ({p.metric.kind.value}, "
        f"{direction} is better). Official ranking: aggregate-then-rank (the metric on all "
        f"test cases, competition ranks). Uncertainty: {p.n_resamples} bootstrap resamples "
        f"of the test cases (seed {p.seed}), the resamples of the {int(p.level * 100)}% CIs; "
        "each team ranked in each resample.</p>"
    )
    if p.result is None:
        parts.append(f"<p><b>No analysis:</b> {html.escape(p.reason or '')}</p>")
    else:
        parts.append(_analysed(p, w, name))
    # Failures
    parts.append("<h3>Failures by reason</h3>")
    fail_rows = sorted(p.failures.items())
    w.csv(f"{name}-failures", ["reason", "submissions"], fail_rows)
    parts.append(_table(["reason", "submissions"], fail_rows) if fail_rows else "<p>None.</p>")
    if p.excluded:
        parts.append("<p>Not analysed:</p>")
        parts.append(_table(["team", "why"], sorted(p.excluded.items())))
    parts.append("</section>")
    return "".join(parts)


def _analysed(p: PhaseAnalysis, w: _Writer, name: str) -> str:
    # long: the report's sections in reading order; splitting it would scatter one page.
    assert p.result is not None
    a, u = p.result, p.result.uncertainty
    order = _order(p)
    teams = [u.teams[t] for t in order]
    parts = ["<h3>Leaderboard with confidence intervals</h3>"]
    board_rows = [
        [int(u.official[t]), u.teams[t], u.values[t], p.rows[t].ci[0], p.rows[t].ci[1]]
        for t in order
    ]
    header = ["rank", "team", p.metric.name, "ci_lower", "ci_upper"]
    csv_path = w.csv(f"{name}-leaderboard", header, board_rows)
    parts.append(_table(header, board_rows))
    svg = w.figure(f"{name}-leaderboard", _forest(p, order))
    parts.append(_figure_block(svg, f"{name}-leaderboard", csv_path, "Metric with bootstrap CI"))

    parts.append("<h3>Rank uncertainty</h3>")
    dist = u.distribution[order]
    rank_rows = [
        [u.teams[t], int(u.official[t]), u.median[t], int(u.lower[t]), int(u.upper[t]),
         u.p_first[t]]
        for t in order
    ]  # fmt: skip
    rh = ["team", "rank", "median_rank", "rank_lower", "rank_upper", "p_first"]
    parts.append(_table(rh, rank_rows))
    csv_path = w.csv(
        f"{name}-rank-distribution",
        ["team", "rank", "share"],
        [[u.teams[t], r + 1, u.distribution[t, r]] for t in order for r in range(len(order))],
    )
    w.csv(f"{name}-rank-summary", rh, rank_rows)
    fig = _blob(teams, dist, u.median[order], u.lower[order], u.upper[order], p.slug)
    svg = w.figure(f"{name}-blob", fig)
    caption = (
        "Blob plot: area = share of bootstrap resamples at each rank; bar = 95% rank "
        "interval; tick = median rank"
    )
    parts.append(_figure_block(svg, f"{name}-blob", csv_path, caption))

    parts.append("<h3>Significance map</h3>")
    if a.tests is None:
        parts.append(f"<p>{html.escape(a.tests_reason or '')}</p>")
    else:
        sig = a.tests.significant[np.ix_(order, order)]
        padj = a.tests.p_adjusted[np.ix_(order, order)]
        csv_path = w.csv(
            f"{name}-significance",
            ["better", "than", "p_one_sided", "p_holm", "significant"],
            [
                [teams[i], teams[j], a.tests.p[order[i], order[j]], padj[i, j], bool(sig[i, j])]
                for i in range(len(order))
                for j in range(len(order))
                if i != j
            ],
        )
        svg = w.figure(f"{name}-significance", _significance(teams, sig))
        test = "DeLong" if a.tests.test == "delong" else "Wilcoxon signed-rank"
        caption = (
            f"One-sided {test} tests, Holm-adjusted over all ordered pairs; a filled cell: "
            f"row significantly better than column (alpha {a.tests.alpha})"
        )
        parts.append(_figure_block(svg, f"{name}-significance", csv_path, caption))

    parts.append("<h3>Robustness of the ranking</h3>")
    scheme_rows = []
    for s in a.schemes:
        ranks = a.schemes[s]
        scheme_rows.append(
            [s, a.scheme_tau.get(s), a.scheme_reasons.get(s, "")]
            + [int(ranks[t]) if ranks is not None else None for t in order]
        )
    sh = ["scheme", "kendall_tau_vs_official", "reason", *teams]
    parts.append(_table(sh, scheme_rows))
    w.csv(f"{name}-schemes", sh, scheme_rows)
    csv_path = w.csv(
        f"{name}-bootstrap-tau", ["resample", "kendall_tau"], list(enumerate(u.tau.tolist()))
    )
    parts.append(
        f"<p>Kendall's tau between the official ranking and the bootstrap rankings: median "
        f"{_fmt(u.tau_median)}.</p>"
    )
    svg = w.figure(f"{name}-robustness", _robustness(p))
    caption = "Kendall's tau of each ranking scheme and of each bootstrap ranking vs official"
    parts.append(_figure_block(svg, f"{name}-robustness", csv_path, caption))

    if p.roc:
        parts.append("<h3>ROC curves with bootstrap bands</h3>")
        roc_rows = []
        for team, roc in sorted(p.roc.items()):
            cols = [roc.get(c) or [] for c in ("fpr", "tpr", "tpr_lower", "tpr_upper")]
            for vals in zip(*cols, strict=False):
                roc_rows.append([team, *vals])
        csv_path = w.csv(f"{name}-roc", ["team", "fpr", "tpr", "tpr_lower", "tpr_upper"], roc_rows)
        svg = w.figure(f"{name}-roc", _roc(p))
        parts.append(_figure_block(svg, f"{name}-roc", csv_path, "ROC with pointwise 95% band"))
    return "".join(parts)


def _consensus_section(ca: ChallengeAnalysis, w: _Writer) -> str:
    parts = ["<section><h2>Consensus over tasks</h2>"]
    c = ca.consensus
    if c is None:
        parts.append(f"<p>{html.escape(ca.consensus_reason or '')}</p></section>")
        return "".join(parts)
    parts.append(f"<p>Method: {html.escape(CONSENSUS_METHOD)}.</p>")
    order = sorted(range(len(c.teams)), key=lambda t: (int(c.rank[t]), c.teams[t]))
    header = ["team", "rank", "mean_rank", *c.tasks, "median_rank", "rank_lower", "rank_upper",
              "p_first"]  # fmt: skip
    rows = [
        [c.teams[t], int(c.rank[t]), c.mean_rank[t], *c.task_ranks[:, t].tolist(),
         c.median[t], int(c.lower[t]), int(c.upper[t]), c.p_first[t]]
        for t in order
    ]  # fmt: skip
    parts.append(_table(header, rows))
    csv_path = w.csv("consensus", header, rows)
    teams = [c.teams[t] for t in order]
    fig = _blob(
        teams, c.distribution[order], c.median[order], c.lower[order], c.upper[order],
        "consensus",
    )  # fmt: skip
    svg = w.figure("consensus-blob", fig)
    parts.append(_figure_block(svg, "consensus-blob", csv_path, "Consensus rank distribution"))
    parts.append("</section>")
    return "".join(parts)


CSS = (
    "body{font-family:sans-serif;max-width:60em;margin:2em auto;color:#222}"
    "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:2px 6px;"
    "font-size:90%}figure{margin:1em 0}figure svg{max-width:100%;height:auto}"
)


@contextmanager
def _rc() -> Iterator[None]:
    with matplotlib.rc_context(cast(Any, RC)):  # its stubs want literal keys
        yield


def _title_page(ca: ChallengeAnalysis) -> Figure:
    """The PDF's first page: what follows, phase by phase (figures come one per page)."""
    fig = Figure(figsize=(8.27, 11.69))
    lines = [f"{ca.title} ({ca.slug}): results", ""]
    for p in ca.phases:
        status = p.reason or f"{len(p.rows)} teams analysed"
        lines.append(f"Phase {p.title} ({p.slug}), metric {p.metric.name}: {status}")
    lines += ["", f"Consensus: {ca.consensus_reason or CONSENSUS_METHOD}"]
    fig.text(0.08, 0.92, "\n".join(lines), va="top", wrap=True)
    return fig


def render(ca: ChallengeAnalysis, root: Path) -> Path:
    """Write the report under `root`; returns the HTML file."""
    root.mkdir(parents=True, exist_ok=True)
    with _rc(), PdfPages(root / "report.pdf", metadata=PDF_META) as pdf:
        w = _Writer(root, pdf)
        pdf.savefig(_title_page(ca))
        body = [_phase_section(p, w) for p in ca.phases]
        body.append(_consensus_section(ca, w))
    title = html.escape(f"{ca.title} ({ca.slug}): results")
    page = (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
        f"<style>{CSS}</style></head><body><h1>{title}</h1>"
        "<p>Structured after the BIAS reporting guideline's results section. Figures are "
        "inline; each is also in figures/ (PNG, SVG) with its data in data/ (CSV), and the "
        "whole analysis in analysis.json.</p>" + "".join(body) + "</body></html>\n"
    )
    (root / "report.html").write_text(page)
    (root / "analysis.json").write_text(json.dumps(as_json(ca), indent=1, sort_keys=True) + "\n")
    return root / "report.html"


def report_zip(ca: ChallengeAnalysis) -> bytes:
    """The rendered report as a zip (sorted names, fixed timestamps)."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "report"
        render(ca, root)
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
            for path in sorted(p for p in root.rglob("*") if p.is_file()):
                info = zipfile.ZipInfo(str(path.relative_to(root)), _ZIP_TIME)
                info.compress_type = zipfile.ZIP_DEFLATED
                zf.writestr(info, path.read_bytes())
        return buf.getvalue()
