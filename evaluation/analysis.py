"""Challenge analysis beyond DeLong: rank uncertainty, ranking robustness, significance maps,
multi-task consensus and public/private shake-up (after challengeR, Wiesenfarth et al. 2021).

Pure functions over arrays; no server code. Conventions used throughout:

- A *task* is one phase's primary metric over k teams on the same N test cases.
- Ranks are competition ranks ("min"): 1 + the number of teams strictly better, so equal
  values share the better rank (1, 1, 3). A value that is undefined (NaN) ranks last.
- The *official* ranking is aggregate-then-rank: the metric on all test cases, ranked by
  value (values equal to 12 decimals tie). The leaderboard also shares ranks inside DeLong
  groups; that grouping is not a strict order, so the comparisons here use the value order.
- Rank uncertainty bootstraps the test cases with exactly the resamples of the bootstrap
  CIs (`stats.metric_counts`: same seed, stratified for AUC-type metrics) and ranks every
  team in every resample. A team's 95% rank interval is the 2.5% and 97.5% quantiles of its
  ranks (inverted CDF: ranks that occurred).
- Rank-then-aggregate: per case, teams are ranked on their per-case score (metrics that have
  one: absolute error for MAE, correctness for accuracy); the mean per-case rank is ranked.
- Test-then-rank: for every ordered pair (a, b), a one-sided test that a is better than b
  (DeLong for AUC, Wilcoxon signed-rank on per-case scores otherwise), Holm-adjusted over
  all k (k - 1) ordered pairs; a team's score is the number of teams it beats significantly,
  and teams are ranked on that score (more wins first).
- Kendall's tau is tau-b (scipy's default), NaN when one ranking is all ties.
- Consensus over several tasks: each team's mean rank over the tasks (a team absent from a
  task takes the rank after the last team of that task), ranked; its uncertainty comes from
  the same computation in each bootstrap resample (resample r of every task).
- Shake-up: public and private parts are bootstrapped independently (the private part with
  seed + 1, so equal sizes do not reuse one draw pattern), teams are ranked on each, and a
  team's shake-up probability is the share of resamples where its two ranks differ.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy.special import ndtr
from scipy.stats import rankdata, wilcoxon

from evaluation.metrics import MetricError, get_metric
from evaluation.stats import DEFAULT_SEED, delong_all_pairs, metric_counts

Array = npt.NDArray[Any]
FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

ALPHA = 0.05
LEVEL = 0.95
# Below this many cases scipy's Wilcoxon uses its exact null distribution: delegate to it.
_WILCOXON_EXACT_MAX = 50
# Values equal to this many decimals are ties when ranking.
_TIE_DECIMALS = 12
# Pairs tested at a time by the vectorised Wilcoxon (a few (rows x N) float arrays).
_WILCOXON_ROWS = 128


def _abs_error(y_true: Array, y_pred: Array) -> FloatArray:
    return np.abs(np.asarray(y_pred, dtype=np.float64) - np.asarray(y_true, dtype=np.float64))


def _correct(y_true: Array, y_pred: Array) -> FloatArray:
    right: BoolArray = np.asarray(y_pred).astype(str) == np.asarray(y_true).astype(str)
    return right.astype(np.float64)


# Metrics that are a mean of per-case scores: (per-case score, higher per-case is better).
PER_CASE: Mapping[str, tuple[Callable[[Array, Array], FloatArray], bool]] = {
    "mae": (_abs_error, False),
    "accuracy": (_correct, True),
}


@dataclass(frozen=True)
class Task:
    """One task: k teams' predictions (k, N, ...) of one metric on the same cases."""

    name: str
    kind: str  # metric kind, as in evaluation.metrics
    teams: Sequence[str]
    y_true: Array  # (N,) or (N, K): the scored cases' labels
    y_pred: Array  # (k, N) or (k, N, K)
    higher_is_better: bool = True
    # A subset metric: the scored cases' positions among all `n_cases` test cases, so the
    # resamples are those of the subset's CIs (see stats.metric_counts).
    n_cases: int | None = None
    positions: Sequence[int] | None = None

    def __post_init__(self) -> None:
        k = len(self.teams)
        if k < 1:
            raise ValueError(f"task {self.name!r}: no teams")
        if len(set(self.teams)) != k:
            raise ValueError(f"task {self.name!r}: duplicate team names")
        if np.shape(self.y_pred)[:2] != (k, np.shape(self.y_true)[0]):
            raise ValueError(
                f"task {self.name!r}: y_pred must be (teams={k}, cases="
                f"{np.shape(self.y_true)[0]}, ...), got {np.shape(self.y_pred)}"
            )
        get_metric(self.kind)  # names the kind if unknown


# --- ranks and Kendall's tau ----------------------------------------------------------------


def competition_ranks(values: Array, higher_is_better: bool = True) -> IntArray:
    """Competition ranks ("min") along the last axis; NaN ranks last."""
    # Equal metric values computed along different routes (resampled counts vs the point
    # form) may differ in the last bits; they must tie.
    v = np.round(np.asarray(values, dtype=np.float64), _TIE_DECIMALS)
    loss = -v if higher_is_better else v
    loss[np.isnan(loss)] = np.inf
    ranks: IntArray = rankdata(loss, method="min", axis=-1).astype(np.int64)
    return ranks


def kendall_tau(x: Array, ys: Array) -> FloatArray:
    """Kendall's tau-b between ranking `x` (k,) and each row of `ys` (R, k) (or one (k,))."""
    xa = np.asarray(x, dtype=np.float64)
    ya = np.atleast_2d(np.asarray(ys, dtype=np.float64))
    i, j = np.triu_indices(xa.size, 1)
    dx = np.sign(xa[i] - xa[j])
    dy = np.sign(ya[:, i] - ya[:, j])
    pairs = i.size
    s = dy @ dx
    tied_x = pairs - np.count_nonzero(dx)
    tied_y = pairs - np.count_nonzero(dy, axis=1)
    denom = np.sqrt(float(pairs - tied_x) * (pairs - tied_y).astype(np.float64))
    with np.errstate(divide="ignore", invalid="ignore"):
        tau = np.where(denom > 0, s / np.where(denom > 0, denom, 1.0), np.nan)
    return np.clip(tau, -1.0, 1.0)


# --- rank uncertainty -----------------------------------------------------------------------


@dataclass(frozen=True)
class RankUncertainty:
    teams: list[str]
    values: FloatArray  # (k,) the metric on all cases
    official: IntArray  # (k,) aggregate-then-rank
    boot_values: FloatArray  # (R, k)
    boot_ranks: IntArray  # (R, k)
    distribution: FloatArray  # (k, k): [team, rank - 1] share of resamples at that rank
    median: FloatArray  # (k,)
    lower: IntArray  # (k,) 2.5% rank quantile (at LEVEL 0.95)
    upper: IntArray  # (k,)
    p_first: FloatArray  # (k,) share of resamples ranked first
    tau: FloatArray  # (R,) Kendall's tau of each bootstrap ranking with the official one
    n_resamples: int
    seed: int
    level: float

    @property
    def tau_median(self) -> float:
        finite = self.tau[np.isfinite(self.tau)]
        return float(np.median(finite)) if finite.size else math.nan


def _spread(task: Task) -> tuple[Array, Array, int, npt.NDArray[np.intp] | None]:
    """Labels and predictions as the metric sees them, plus (N_all, subset positions)."""
    y_t = np.asarray(task.y_true)
    y_p = np.asarray(task.y_pred)
    if task.positions is None or task.n_cases is None:
        return y_t, y_p, int(y_t.shape[0]), None
    idx = np.asarray(task.positions, dtype=np.intp)
    if idx.shape != (y_t.shape[0],) or (idx.size and (idx.min() < 0 or idx.max() >= task.n_cases)):
        raise ValueError(f"task {task.name!r}: positions do not match its cases")
    return y_t, y_p, int(task.n_cases), idx


def bootstrap_values(
    task: Task, n_resamples: int = 1000, seed: int = DEFAULT_SEED
) -> tuple[FloatArray, FloatArray]:
    """(values (k,), boot_values (R, k)) on the resamples the CIs use."""
    metric = get_metric(task.kind)
    y_t, y_p, n_all, subset = _spread(task)
    counts = metric_counts(metric, y_t, n_all, n_resamples, seed, subset)
    scored = per_case_scores(task)
    if scored is not None:
        # A mean of per-case scores: every team on every resample in one matrix product.
        s, _ = scored
        c = counts.matrix.astype(np.float64)
        drawn = c.sum(axis=1, keepdims=True)
        with np.errstate(divide="ignore", invalid="ignore"):
            boot = (c @ s.T) / drawn
        return s.mean(axis=1), np.where(drawn > 0, boot, np.nan)
    values = np.empty(len(task.teams))
    boot = np.empty((n_resamples, len(task.teams)))
    with np.errstate(divide="ignore", invalid="ignore"):
        for t in range(len(task.teams)):  # one vectorised pass over all R resamples per team
            values[t] = metric.point(y_t, y_p[t])
            boot[:, t] = metric.resampled(counts, y_t, y_p[t])
    return values, boot


def rank_distribution(ranks: Array, level: float = LEVEL) -> dict[str, Array]:
    """Per team (columns of `ranks` (R, k)): share at each rank, median, interval, P(first)."""
    r = np.asarray(ranks, dtype=np.int64)
    n, k = r.shape
    dist = np.zeros((k, k))
    for rank in range(1, k + 1):  # k passes over (R, k): no loop over resamples
        dist[:, rank - 1] = np.count_nonzero(r == rank, axis=0) / n
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(r, [alpha, 1.0 - alpha], axis=0, method="inverted_cdf")
    return {
        "distribution": dist,
        "median": np.median(r, axis=0).astype(np.float64),
        "lower": lo.astype(np.int64),
        "upper": hi.astype(np.int64),
        "p_first": dist[:, 0].copy(),
    }


def rank_uncertainty(
    task: Task, n_resamples: int = 1000, seed: int = DEFAULT_SEED, level: float = LEVEL
) -> RankUncertainty:
    values, boot = bootstrap_values(task, n_resamples, seed)
    official = competition_ranks(values, task.higher_is_better)
    ranks = competition_ranks(boot, task.higher_is_better)
    d = rank_distribution(ranks, level)
    return RankUncertainty(
        teams=list(task.teams),
        values=values,
        official=official,
        boot_values=boot,
        boot_ranks=ranks,
        distribution=d["distribution"],
        median=d["median"],
        lower=d["lower"],
        upper=d["upper"],
        p_first=d["p_first"],
        tau=kendall_tau(official, ranks),
        n_resamples=n_resamples,
        seed=seed,
        level=level,
    )


# --- pairwise one-sided tests ---------------------------------------------------------------


def holm(p: Array) -> FloatArray:
    """Holm-adjusted p-values of a flat array (NaN entries are left out and stay NaN)."""
    flat = np.asarray(p, dtype=np.float64).ravel()
    out = np.full(flat.shape, np.nan)
    ok = np.flatnonzero(~np.isnan(flat))
    m = ok.size
    if m == 0:
        return out.reshape(np.shape(p))
    order = ok[np.argsort(flat[ok], kind="stable")]
    scaled = (m - np.arange(m)) * flat[order]
    out[order] = np.minimum(np.maximum.accumulate(scaled), 1.0)
    return out.reshape(np.shape(p))


def wilcoxon_one_sided(x: Array) -> tuple[FloatArray, FloatArray]:
    """One-sided Wilcoxon signed-rank p-values of the rows of `x` (P, N): (H1 shifted above 0,
    H1 shifted below 0), from one ranking of each row.

    scipy.stats.wilcoxon with zeros dropped and midranks: its exact null distribution when a
    row has 50 cases or fewer, none of them zero or tied (scipy's "exact"), otherwise the
    tie-corrected normal approximation without continuity correction (scipy's "approx"; its
    default for small samples with ties, a permutation test, would cost seconds per pair),
    vectorised over rows. A row of zeros (identical teams) has p = 1: no evidence either way.
    """
    d = np.atleast_2d(np.asarray(x, dtype=np.float64))
    rows, n_all = d.shape
    greater, less = np.ones(rows), np.ones(rows)
    if rows == 0 or n_all == 0:
        return greater, less
    for r0 in range(0, rows, _WILCOXON_ROWS):  # bounded memory: a block of pairs at a time
        block = slice(r0, r0 + _WILCOXON_ROWS)
        greater[block], less[block] = _wilcoxon_approx(d[block])
    if n_all <= _WILCOXON_EXACT_MAX:
        a = np.sort(np.abs(d), axis=1)
        clean = (a[:, 0] > 0) & (a[:, 1:] != a[:, :-1]).all(axis=1)
        for i in np.flatnonzero(clean).tolist():  # small samples: one exact test per pair
            greater[i] = float(wilcoxon(d[i], alternative="greater", method="exact").pvalue)
            less[i] = float(wilcoxon(d[i], alternative="less", method="exact").pvalue)
    return greater, less


def _wilcoxon_approx(d: FloatArray) -> tuple[FloatArray, FloatArray]:
    rows, n_all = d.shape
    greater, less = np.ones(rows), np.ones(rows)
    nonzero = np.count_nonzero(d, axis=1)
    # Zeros sort first (key -1) and are discounted from the ranks below.
    key = np.where(d == 0, -1.0, np.abs(d))
    order = np.argsort(key, axis=1, kind="stable")
    sk = np.take_along_axis(key, order, axis=1)
    positive = np.take_along_axis(d > 0, order, axis=1)
    # Tie groups of the sorted keys, one flat numbering over all rows.
    starts = np.ones_like(sk, dtype=bool)
    starts[:, 1:] = sk[:, 1:] != sk[:, :-1]
    flat_starts = np.flatnonzero(starts.ravel())
    gid = np.cumsum(starts.ravel()) - 1
    size = np.diff(np.r_[flat_starts, sk.size]).astype(np.float64)
    row_of = np.repeat(np.arange(rows), n_all)
    zeros = (n_all - nonzero).astype(np.float64)
    # 1-based midrank of each difference among its row's nonzero differences.
    in_row = flat_starts.astype(np.float64) - (flat_starts // n_all) * n_all
    midrank = (in_row + (size + 1.0) / 2.0)[gid] - zeros[row_of]
    weights = np.where(positive.ravel(), midrank, 0.0)
    r_plus = np.bincount(row_of, weights=weights, minlength=rows)
    group_row = flat_starts // n_all
    group_zero = sk[starts] == -1.0
    t = np.where(group_zero, 0.0, size)
    ties = np.bincount(group_row, weights=t**3 - t, minlength=rows)
    n = nonzero.astype(np.float64)
    mean = n * (n + 1.0) / 4.0
    var = n * (n + 1.0) * (2.0 * n + 1.0) / 24.0 - ties / 48.0
    ok = (nonzero > 0) & (var > 0)
    z = (r_plus[ok] - mean[ok]) / np.sqrt(var[ok])
    greater[ok], less[ok] = ndtr(-z), ndtr(z)
    return greater, less


@dataclass(frozen=True)
class PairwiseTests:
    test: str  # "delong" or "wilcoxon"
    p: FloatArray  # (k, k) one-sided p of "row better than column"; NaN on the diagonal
    p_adjusted: FloatArray  # Holm over the k (k - 1) ordered pairs
    significant: BoolArray  # p_adjusted < alpha
    alpha: float


def per_case_scores(task: Task) -> tuple[FloatArray, bool] | None:
    """(scores (k, N), higher per-case is better) when the metric is a mean of per-case scores."""
    entry = PER_CASE.get(task.kind)
    if entry is None:
        return None
    fn, higher = entry
    y_t = np.asarray(task.y_true)
    return np.stack([fn(y_t, row) for row in np.asarray(task.y_pred)]), higher


def pairwise_tests(task: Task, alpha: float = ALPHA) -> PairwiseTests:
    """One-sided pairwise tests, Holm-adjusted. Raises MetricError when there is no test."""
    k = len(task.teams)
    y_t, y_p = np.asarray(task.y_true), np.asarray(task.y_pred)
    p = np.full((k, k), np.nan)
    i, j = np.triu_indices(k, 1)
    if get_metric(task.kind).is_auc:
        pairs = delong_all_pairs(y_t, y_p.astype(np.float64))
        sign = 1.0 if task.higher_is_better else -1.0
        z = sign * pairs.z
        p[i, j] = ndtr(-z[i, j])
        p[j, i] = ndtr(z[i, j])
        test = "delong"
    else:
        scored = per_case_scores(task)
        if scored is None:
            raise MetricError(f"no pairwise test for {task.kind}: it has no per-case scores")
        s, higher = scored
        diff = (s[i] - s[j]) if higher else (s[j] - s[i])
        p[i, j], p[j, i] = wilcoxon_one_sided(diff)
        test = "wilcoxon"
    adj = holm(p)
    with np.errstate(invalid="ignore"):
        significant = np.nan_to_num(adj, nan=1.0) < alpha
    return PairwiseTests(test=test, p=p, p_adjusted=adj, significant=significant, alpha=alpha)


# --- ranking schemes ------------------------------------------------------------------------


def rank_then_aggregate(task: Task) -> tuple[FloatArray, IntArray] | None:
    """(mean per-case rank (k,), its ranks) or None when the metric has no per-case scores."""
    scored = per_case_scores(task)
    if scored is None:
        return None
    s, higher = scored
    per_case = competition_ranks(s.T, higher)  # (N, k): rank of each team on each case
    mean = per_case.mean(axis=0)
    return mean, competition_ranks(mean, higher_is_better=False)


def test_then_rank(tests: PairwiseTests) -> tuple[IntArray, IntArray]:
    """(significant wins per team, ranks on them)."""
    wins = tests.significant.sum(axis=1).astype(np.int64)
    return wins, competition_ranks(wins, higher_is_better=True)


@dataclass(frozen=True)
class TaskAnalysis:
    task: str
    kind: str
    higher_is_better: bool
    uncertainty: RankUncertainty
    tests: PairwiseTests | None
    tests_reason: str | None
    # scheme -> ranks (k,) or None; reasons for missing schemes
    schemes: dict[str, IntArray | None]
    scheme_reasons: dict[str, str]
    scheme_tau: dict[str, float]  # Kendall's tau of each scheme with the official ranking
    mean_case_rank: FloatArray | None
    wins: IntArray | None

    @property
    def teams(self) -> list[str]:
        return self.uncertainty.teams


SCHEMES = ("aggregate-then-rank", "rank-then-aggregate", "test-then-rank")


def analyse_task(
    task: Task,
    n_resamples: int = 1000,
    seed: int = DEFAULT_SEED,
    level: float = LEVEL,
    alpha: float = ALPHA,
) -> TaskAnalysis:
    unc = rank_uncertainty(task, n_resamples, seed, level)
    schemes: dict[str, IntArray | None] = {"aggregate-then-rank": unc.official}
    reasons: dict[str, str] = {}
    rta = rank_then_aggregate(task)
    mean_case_rank = None
    if rta is None:
        schemes["rank-then-aggregate"] = None
        reasons["rank-then-aggregate"] = f"{task.kind} has no per-case scores"
    else:
        mean_case_rank, schemes["rank-then-aggregate"] = rta
    tests: PairwiseTests | None = None
    tests_reason: str | None = None
    wins = None
    if len(task.teams) < 2:
        tests_reason = "one team: nothing to compare"
    else:
        try:
            tests = pairwise_tests(task, alpha)
        except MetricError as e:
            tests_reason = str(e)
    if tests is None:
        schemes["test-then-rank"] = None
        reasons["test-then-rank"] = tests_reason or "no test"
    else:
        wins, schemes["test-then-rank"] = test_then_rank(tests)
    tau = {
        name: float(kendall_tau(unc.official, r)[0])
        for name, r in schemes.items()
        if r is not None and len(task.teams) > 1
    }
    return TaskAnalysis(
        task=task.name,
        kind=task.kind,
        higher_is_better=task.higher_is_better,
        uncertainty=unc,
        tests=tests,
        tests_reason=tests_reason,
        schemes=schemes,
        scheme_reasons=reasons,
        scheme_tau=tau,
        mean_case_rank=mean_case_rank,
        wins=wins,
    )


# --- multi-task consensus -------------------------------------------------------------------


@dataclass(frozen=True)
class Consensus:
    teams: list[str]
    tasks: list[str]
    task_ranks: FloatArray  # (tasks, k) official rank per task (absent: after the last)
    mean_rank: FloatArray  # (k,)
    rank: IntArray  # (k,) consensus rank
    boot_ranks: IntArray  # (R, k)
    distribution: FloatArray
    median: FloatArray
    lower: IntArray
    upper: IntArray
    p_first: FloatArray
    tau: FloatArray  # (R,) Kendall's tau of bootstrap consensus vs consensus


def _placed(ranks: Array, teams: Sequence[str], everyone: Sequence[str]) -> FloatArray:
    """Ranks (..., k_task) placed on `everyone`; absent teams rank after the task's last."""
    r = np.asarray(ranks, dtype=np.float64)
    where = {t: i for i, t in enumerate(teams)}
    out = np.full((*r.shape[:-1], len(everyone)), float(len(teams) + 1))
    for c, team in enumerate(everyone):
        if team in where:
            out[..., c] = r[..., where[team]]
    return out


def consensus(analyses: Sequence[TaskAnalysis], level: float = LEVEL) -> Consensus:
    """Mean rank across tasks, ranked (see the module docstring), with its rank uncertainty."""
    if not analyses:
        raise ValueError("consensus needs at least one task")
    sizes = {a.uncertainty.n_resamples for a in analyses}
    if len(sizes) != 1:
        raise ValueError("every task must have the same number of bootstrap resamples")
    everyone = sorted({t for a in analyses for t in a.teams})
    task_ranks = np.stack([_placed(a.uncertainty.official, a.teams, everyone) for a in analyses])
    boot = np.stack([_placed(a.uncertainty.boot_ranks, a.teams, everyone) for a in analyses])
    mean_rank = task_ranks.mean(axis=0)
    rank = competition_ranks(mean_rank, higher_is_better=False)
    boot_ranks = competition_ranks(boot.mean(axis=0), higher_is_better=False)
    d = rank_distribution(boot_ranks, level)
    return Consensus(
        teams=everyone,
        tasks=[a.task for a in analyses],
        task_ranks=task_ranks,
        mean_rank=mean_rank,
        rank=rank,
        boot_ranks=boot_ranks,
        distribution=d["distribution"],
        median=d["median"],
        lower=d["lower"],
        upper=d["upper"],
        p_first=d["p_first"],
        tau=kendall_tau(rank, boot_ranks),
    )


# --- public / private shake-up --------------------------------------------------------------


def public_split(cases: Sequence[str], fraction: float, salt: str) -> BoolArray:
    """Which cases are public: those whose keyed hash of the case name falls below
    `fraction`. Deterministic, independent of case order, and unpredictable without the
    salt (use something the participants do not see)."""
    if not 0.0 < fraction < 1.0:
        raise ValueError("the public fraction must lie strictly between 0 and 1")
    key = salt.encode()
    draws = [
        int.from_bytes(hashlib.blake2b(str(c).encode(), key=key[:64], digest_size=8).digest())
        for c in cases
    ]
    return np.asarray(draws, dtype=np.float64) / 2.0**64 < fraction


def split_task(task: Task, public: BoolArray) -> tuple[Task, Task]:
    """A task's public and private parts, each bootstrapped on its own cases."""
    mask = np.asarray(public, dtype=bool)
    y_t, y_p = np.asarray(task.y_true), np.asarray(task.y_pred)
    if mask.shape != (y_t.shape[0],):
        raise ValueError(f"task {task.name!r}: the split must mark each of its cases")
    if mask.all() or not mask.any():
        raise ValueError(f"task {task.name!r}: the split leaves one part empty")
    parts = [
        Task(f"{task.name}:{part}", task.kind, task.teams, y_t[m], y_p[:, m], task.higher_is_better)
        for part, m in (("public", mask), ("private", ~mask))
    ]
    return parts[0], parts[1]


@dataclass(frozen=True)
class ShakeUp:
    teams: list[str]
    public_rank: IntArray
    private_rank: IntArray
    p_change: FloatArray  # (k,) share of resamples where the public and private ranks differ
    tau: float  # Kendall's tau between the public and private rankings


def shake_up(
    public: Task, private: Task, n_resamples: int = 1000, seed: int = DEFAULT_SEED
) -> ShakeUp:
    if list(public.teams) != list(private.teams):
        raise ValueError("public and private parts must list the same teams in the same order")
    pub = rank_uncertainty(public, n_resamples, seed)
    priv = rank_uncertainty(private, n_resamples, seed + 1)
    return ShakeUp(
        teams=list(public.teams),
        public_rank=pub.official,
        private_rank=priv.official,
        p_change=(pub.boot_ranks != priv.boot_ranks).mean(axis=0),
        tau=float(kendall_tau(pub.official, priv.official)[0])
        if len(public.teams) > 1
        else math.nan,
    )
