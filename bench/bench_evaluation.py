"""Benchmark: bootstrap AUC intervals and all-pairs DeLong for a leaderboard's worth of runs.

    .venv/bin/python bench/bench_evaluation.py [--submissions 50] [--cases 10000]
        [--resamples 1000] [--plain-resamples 100] [--plain-pairs 100] [--no-proc]

Fast path (heldout): `stats.bootstrap_ci("auc", ...)` per submission (one (R, N) resample
draw shared through the in-process cache, all R AUCs from case counts, no loop over
resamples) plus one `stats.delong_matrix` call (Sun & Xu midranks, one covariance matrix).

Plain path: scikit-learn's `roc_auc_score` called once per resample, and DeLong as one
`stats.delong_test` call per pair (the fast per-pair algorithm, not the O(N^2) textbook
kernel, so the comparison flatters the plain path). Both are timed on a fraction and
extrapolated linearly; the output says so. The plain loop draws the same resamples, and the
script checks that both paths give the same AUCs and p-values.

Challenge analysis (`evaluation.analysis`): rank uncertainty on the same resamples, the three
ranking schemes, one-sided tests with Holm and Kendall's tau, for an AUC task (DeLong) and an
MAE task (per-case ranks and Wilcoxon for all pairs); target < 5 s each (`--analysis-only`
runs just this part).

If R's pROC is installed (`apt-get install r-cran-proc`), the same data go through
`ci.auc(method = "bootstrap")` and `roc.test(method = "delong")` for timings, and pROC's
DeLong p-values and interval are compared with heldout's.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evaluation import analysis, stats
from evaluation.metrics import get_metric
from evaluation.resampling import _cached_stratified, cached_counts

SEED = 20211


def make_data(k: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    y = (rng.random(n) < 0.3).astype(np.int64)
    signal = rng.normal(size=n) + 1.2 * y
    scores = np.empty((k, n))
    for i in range(k):
        s = 1.0 / (1.0 + np.exp(-(signal + rng.normal(0, 0.5 + 0.05 * i, n))))
        # Every other submission reports 3 decimals: ties, as real probability outputs have.
        scores[i] = np.round(s, 3) if i % 2 else s
    return y, scores


@dataclass
class FastRun:
    bootstrap_s: float
    delong_s: float
    cis: list[stats.BootstrapCI]
    p: np.ndarray

    @property
    def total_s(self) -> float:
        return self.bootstrap_s + self.delong_s


def fast_path(y: np.ndarray, scores: np.ndarray, r: int) -> FastRun:
    cached_counts.cache_clear()  # the draw is part of the cost
    t0 = time.perf_counter()
    cis = [stats.bootstrap_ci("auc", y, s, n_resamples=r, seed=SEED) for s in scores]
    t1 = time.perf_counter()
    p = stats.delong_matrix(y, scores)
    t2 = time.perf_counter()
    return FastRun(t1 - t0, t2 - t1, cis, p)


def plain_path(
    y: np.ndarray, scores: np.ndarray, r: int, plain_r: int, plain_pairs: int, p: np.ndarray
) -> dict[str, float]:
    k, n = scores.shape
    idx = np.random.default_rng(SEED).integers(0, n, size=(plain_r, n))
    subs = [0, 1]  # one submission without ties, one with
    t0 = time.perf_counter()
    plain = [[roc_auc_score(y[i], scores[s][i]) for i in idx] for s in subs]
    t_boot = time.perf_counter() - t0
    # Same resamples, same AUCs as the fast path's count matrix.
    counts = cached_counts(n, r, SEED)
    diff = 0.0
    for s, values in zip(subs, plain, strict=True):
        fast = get_metric("auc").resampled(counts, y, scores[s])[:plain_r]
        diff = max(diff, float(np.max(np.abs(fast - np.array(values)))))
    boot_calls = len(subs) * plain_r
    boot_full = t_boot / boot_calls * (k * r)

    pairs = [(a, b) for a in range(k) for b in range(a + 1, k)][:plain_pairs]
    t0 = time.perf_counter()
    ps = [stats.delong_test(y, scores[a], scores[b]).p for a, b in pairs]
    t_pairs = time.perf_counter() - t0
    p_diff = max(abs(pv - p[a, b]) for pv, (a, b) in zip(ps, pairs, strict=True))
    n_pairs = k * (k - 1) // 2
    delong_full = t_pairs / len(pairs) * n_pairs
    return {
        "bootstrap_measured_s": t_boot,
        "bootstrap_calls": boot_calls,
        "bootstrap_extrapolated_s": boot_full,
        "delong_measured_s": t_pairs,
        "delong_pairs_measured": len(pairs),
        "delong_extrapolated_s": delong_full,
        "total_extrapolated_s": boot_full + delong_full,
        "max_auc_diff": diff,
        "max_p_diff": p_diff,
    }


R_SCRIPT = r"""
suppressMessages(library(pROC))
args <- commandArgs(trailingOnly = TRUE)
d <- read.csv(args[1])
k <- ncol(d) - 1
boot_subs <- as.integer(args[2]); boot_n <- as.integer(args[3]); n_pairs <- as.integer(args[4])
t0 <- proc.time()[["elapsed"]]
rocs <- lapply(seq_len(k), function(i)
  roc(d$y, d[[i + 1]], levels = c(0, 1), direction = "<", quiet = TRUE))
t_roc <- proc.time()[["elapsed"]] - t0
set.seed(1)
t0 <- proc.time()[["elapsed"]]
for (i in seq_len(boot_subs)) ci.auc(rocs[[i]], method = "bootstrap", boot.n = boot_n,
                                     progress = "none")
t_boot <- proc.time()[["elapsed"]] - t0
pairs <- t(combn(k, 2))[seq_len(n_pairs), , drop = FALSE]
t0 <- proc.time()[["elapsed"]]
p <- apply(pairs, 1, function(ab) roc.test(rocs[[ab[1]]], rocs[[ab[2]]],
                                           method = "delong")$p.value)
t_delong <- proc.time()[["elapsed"]] - t0
ci <- as.numeric(ci.auc(rocs[[1]], method = "delong"))
cat(sprintf('{"roc_s": %.6f, "boot_s": %.6f, "delong_s": %.6f, "p": [%s], "pairs": [%s],
 "ci_delong": [%s]}\n', t_roc, t_boot, t_delong,
 paste(sprintf("%.17g", p), collapse = ","),
 paste(sprintf("[%d,%d]", pairs[, 1] - 1, pairs[, 2] - 1), collapse = ","),
 paste(sprintf("%.17g", ci), collapse = ",")))
"""


def proc_path(
    y: np.ndarray, scores: np.ndarray, r: int, p: np.ndarray, boot_subs: int, n_pairs: int
) -> dict[str, float] | str:
    if not shutil.which("Rscript"):
        return "pROC unavailable: Rscript not found (apt-get install -y r-cran-proc)"
    check = subprocess.run(
        ["Rscript", "-e", "library(pROC)"], capture_output=True, text=True, check=False
    )
    if check.returncode != 0:
        return "pROC unavailable: the R package pROC is not installed"
    k, _ = scores.shape
    with tempfile.TemporaryDirectory() as tmp:
        csv = Path(tmp) / "data.csv"
        header = "y," + ",".join(f"s{i}" for i in range(k))
        np.savetxt(csv, np.column_stack([y, scores.T]), delimiter=",", header=header,
                   comments="", fmt="%.17g")  # fmt: skip
        script = Path(tmp) / "bench.R"
        script.write_text(R_SCRIPT)
        done = subprocess.run(
            ["Rscript", str(script), str(csv), str(boot_subs), str(r), str(n_pairs)],
            capture_output=True,
            text=True,
            check=False,
        )
    if done.returncode != 0:
        return f"pROC run failed: {done.stderr.strip()[-500:]}"
    out = json.loads(done.stdout)
    p_diff = max(abs(pv - p[a, b]) for pv, (a, b) in zip(out["p"], out["pairs"], strict=True))
    auc, lo, hi, _ = stats.auc_ci_delong(y, scores[0])
    ci_diff = float(np.max(np.abs(np.array(out["ci_delong"]) - np.array([lo, auc, hi]))))
    boot_full = out["boot_s"] / boot_subs * k
    delong_full = out["delong_s"] / n_pairs * (k * (k - 1) // 2)
    return {
        "roc_objects_s": out["roc_s"],
        "bootstrap_measured_s": out["boot_s"],
        "bootstrap_submissions_measured": boot_subs,
        "bootstrap_extrapolated_s": boot_full,
        "delong_measured_s": out["delong_s"],
        "delong_pairs_measured": n_pairs,
        "delong_extrapolated_s": delong_full,
        "total_extrapolated_s": out["roc_s"] + boot_full + delong_full,
        "max_p_diff_vs_heldout": p_diff,
        "max_delong_ci_diff_vs_heldout": ci_diff,
    }


def analysis_bench(y: np.ndarray, scores: np.ndarray, r: int) -> None:
    k, n = scores.shape
    teams = [f"team{i}" for i in range(k)]
    auc = analysis.Task("auc", "auc", teams, y, scores)
    rng = np.random.default_rng(1)
    target = rng.normal(size=n)
    pred = np.round(target + rng.normal(0, 1, (k, n)) * (1 + 0.01 * np.arange(k))[:, None], 2)
    mae = analysis.Task("mae", "mae", teams, target, pred, higher_is_better=False)
    print("\nchallenge analysis (rank uncertainty, 3 schemes, tests + Holm, Kendall tau), "
          "best of 3:")  # fmt: skip
    for task in (auc, mae):
        times = []
        for _ in range(3):
            cached_counts.cache_clear()  # the draws are part of the cost
            _cached_stratified.cache_clear()
            t0 = time.perf_counter()
            result = analysis.analyse_task(task, n_resamples=r, seed=SEED)
            times.append(time.perf_counter() - t0)
        best = min(times)
        tests = result.tests.test if result.tests else "none"
        print(
            f"  {task.kind:4} ({tests:8}, {k * (k - 1)} one-sided tests): {best:.3f} s "
            f"(runs: {', '.join(f'{t:.3f}' for t in times)}); median tau vs bootstrap "
            f"{result.uncertainty.tau_median:.3f}; target < 5 s: "
            f"{'met' if best < 5 else 'MISSED'}"
        )


def _statistics_path(y: np.ndarray, scores: np.ndarray, r: int) -> float:
    """What scoring and a board cost: bootstrap CIs per submission, all-pairs DeLong, and
    the board from predictions sections (alignment, ranks, top-3 ensemble with its CI)."""
    from evaluation.leaderboard import Entry, board

    cached_counts.cache_clear()
    n = scores.shape[1]
    cases = [f"C{i:06d}" for i in range(n)]
    t0 = time.perf_counter()
    cis = [stats.bootstrap_ci("auc", y, s, n_resamples=r, seed=SEED) for s in scores]
    stats.delong_matrix(y, scores)
    sections = [
        {"cases": cases, "y_true": y.tolist(), "y_score": s.tolist(), "n_cases": n,
         "positions": list(range(n))}
        for s in scores
    ]  # fmt: skip
    entries = [Entry(str(i), ci.value, None) for i, ci in enumerate(cis)]
    board("auc", entries, sections, higher_is_better=True, alpha=0.05, ensemble_k=3,
          n_resamples=r, seed=SEED, level=0.95)  # fmt: skip
    return time.perf_counter() - t0


def scaling(k: int, r: int) -> None:
    """The statistics path at 10,000 and 100,000 cases: N log N predicts x12.5."""
    times = {}
    _statistics_path(*make_data(k, 500), r)  # warm-up
    for n in (10_000, 100_000):
        y, scores = make_data(k, n)
        times[n] = min(_statistics_path(y, scores, r) for _ in range(2))
        print(f"  {k} submissions x {n} cases, {r} resamples: {times[n]:.2f} s")
    factor = times[100_000] / times[10_000]
    nlogn = 10 * np.log(100_000) / np.log(10_000)
    print(f"scaling 10k -> 100k cases: x{factor:.1f} (N log N: x{nlogn:.1f}; N^2: x100)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--submissions", type=int, default=50)
    ap.add_argument("--cases", type=int, default=10_000)
    ap.add_argument("--resamples", type=int, default=1000)
    ap.add_argument("--plain-resamples", type=int, default=100)
    ap.add_argument("--plain-pairs", type=int, default=100)
    ap.add_argument("--proc-submissions", type=int, default=2)
    ap.add_argument("--proc-pairs", type=int, default=100)
    ap.add_argument("--no-proc", action="store_true")
    ap.add_argument("--analysis-only", action="store_true")
    ap.add_argument(
        "--scaling",
        action="store_true",
        help="only the 10k -> 100k case scaling of the statistics path",
    )
    ap.add_argument("--scaling-submissions", type=int, default=5)
    args = ap.parse_args()
    if args.scaling:
        scaling(args.scaling_submissions, args.resamples)
        return 0
    k, n, r = args.submissions, args.cases, args.resamples
    y, scores = make_data(k, n)
    print(f"{k} submissions x {n} cases ({int(y.sum())} positive), {r} bootstrap resamples, "
          f"{k * (k - 1) // 2} DeLong pairs; {os.cpu_count()} CPUs")  # fmt: skip
    analysis_bench(y, scores, r)
    if args.analysis_only:
        return 0

    fast_path(y[:500], scores[:2, :500], 100)  # warm-up: imports, first-call overheads
    runs = [fast_path(y, scores, r) for _ in range(3)]
    best = min(runs, key=lambda x: x.total_s)
    print("\nheldout (vectorised), best of 3:")
    print(
        f"  bootstrap CIs, {k} submissions : {best.bootstrap_s:.3f} s "
        f"({best.bootstrap_s / k * 1000:.1f} ms each, resample draw included)"
    )
    print(f"  all-pairs DeLong (one pass)   : {best.delong_s:.3f} s")
    all_runs = ", ".join(f"{x.total_s:.3f}" for x in runs)
    print(f"  total                         : {best.total_s:.3f} s (runs: {all_runs})")
    ci0 = best.cis[0]
    print(f"  e.g. submission 0: AUC {ci0.value:.4f} [{ci0.lower:.4f}, {ci0.upper:.4f}]")

    plain = plain_path(y, scores, r, args.plain_resamples, args.plain_pairs, best.p)
    print("\nplain loop (scikit-learn roc_auc_score per resample; delong_test per pair):")
    print(
        f"  measured {plain['bootstrap_calls']} roc_auc_score calls in "
        f"{plain['bootstrap_measured_s']:.2f} s -> extrapolated to {k * r}: "
        f"{plain['bootstrap_extrapolated_s']:.1f} s"
    )
    print(
        f"  measured {plain['delong_pairs_measured']} delong_test pairs in "
        f"{plain['delong_measured_s']:.2f} s -> extrapolated to {k * (k - 1) // 2}: "
        f"{plain['delong_extrapolated_s']:.1f} s"
    )
    print(f"  total (extrapolated)          : {plain['total_extrapolated_s']:.1f} s")
    print(
        f"  agreement: max |AUC diff| per resample {plain['max_auc_diff']:.1e}, "
        f"max |p diff| {plain['max_p_diff']:.1e}"
    )
    speedup = plain["total_extrapolated_s"] / best.total_s
    print(f"\nspeed-up vs plain loop: {speedup:.0f}x "
          f"(bootstrap {plain['bootstrap_extrapolated_s'] / best.bootstrap_s:.0f}x, "
          f"DeLong {plain['delong_extrapolated_s'] / best.delong_s:.0f}x)")  # fmt: skip
    print(
        f"target: total < 2 s: {'met' if best.total_s < 2 else 'MISSED'}; "
        f">= 20x: {'met' if speedup >= 20 else 'MISSED'}"
    )

    if args.no_proc:
        return 0
    proc = proc_path(y, scores, r, best.p, args.proc_submissions, args.proc_pairs)
    print("\nR pROC:")
    if isinstance(proc, str):
        print(f"  {proc}")
        return 0
    print(f"  roc() objects for {k} submissions : {proc['roc_objects_s']:.2f} s")
    print(
        f"  ci.auc bootstrap ({r}) measured on {proc['bootstrap_submissions_measured']}: "
        f"{proc['bootstrap_measured_s']:.2f} s -> extrapolated to {k}: "
        f"{proc['bootstrap_extrapolated_s']:.1f} s"
    )
    print(
        f"  roc.test delong measured on {proc['delong_pairs_measured']} pairs: "
        f"{proc['delong_measured_s']:.2f} s -> extrapolated: "
        f"{proc['delong_extrapolated_s']:.1f} s"
    )
    print(
        f"  total (extrapolated)              : {proc['total_extrapolated_s']:.1f} s "
        f"-> heldout is {proc['total_extrapolated_s'] / best.total_s:.0f}x faster"
    )
    print(f"  agreement: max |p diff| {proc['max_p_diff_vs_heldout']:.1e}, "
          f"max |DeLong CI diff| {proc['max_delong_ci_diff_vs_heldout']:.1e}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
