"""The statistics of saying "B differs from A, by this much, and we are sure": one module, shared by `ab`
(paired rounds), `compare` (runs that exist already) and `history` (as pyperf keeps a run's statistics in
_bench.py and its comparing apart).

Paired rounds (`ab`). Each round times A and B back to back on one node, each in a fresh process, so the drift
between time windows that dominates a shared VM (same-code runs 40 minutes apart: ratios 0.44-1.33) hits both
sides of a pair alike and cancels in d = log(img/s of B / img/s of A). Per cell:
  - the exact Wilcoxon signed-rank test of "the d are symmetric about 0" (scipy.stats.wilcoxon; the normal
    approximation only where d has ties or zeros, where the exact null no longer holds);
  - the Hodges-Lehmann estimate (median of the Walsh averages (d_i + d_j) / 2, i <= j) and its distribution-free
    confidence interval: the k-th smallest and k-th largest Walsh averages, k from the exact null distribution of
    the signed-rank statistic (Hollander & Wolfe, Nonparametric Statistical Methods, 3.2). It needs no normality
    and is robust to the odd pair that a burst of another process hit;
  - Benjamini-Hochberg over the cells of a session on the Wilcoxon p-values (scipy.stats.false_discovery_control):
    it bounds the share of false calls among the cells called, whatever their number. Intervals are per cell at
    1 - alpha. (Widening them to the false-coverage level 1 - alpha * R / m, as `compare` does, cost a third of
    the power against an 8% slowdown at 12 pairs in tests/test_stats.py's simulation for little gain: a call
    needs BH's selection as well, and under A/A the threshold already makes a wrong "beyond" rare.)
  - three outcomes, as Chromium Pinpoint: regression / improvement when the cell is selected and its interval
    lies wholly beyond 1 -/+ threshold, unchanged when the interval lies inside 1 +/- threshold, inconclusive
    otherwise (more pairs, in steps fixed in advance, up to a cap fixed in advance: never "until significant");
  - the minimum detectable effect: the smallest true change that this many pairs at this spread would call, with
    80% power (threshold + (z_{1-alpha/2} + z_{0.8}) * sd * sqrt(pi/3) / sqrt(n); sqrt(pi/3) is the
    Hodges-Lehmann estimator's asymptotic standard error relative to the mean's under normal errors).
Ratios are candidate / baseline img/s: above 1 the candidate is faster.

Below them, the statistics of a single trial (measure.py: the warm-up's trend rule, the spread's interval) and
of a history line (report/history.py: the rank-scan change-point test with its block permutation), each
described where it is defined.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

OUTCOMES = ("regression", "improvement", "unchanged", "inconclusive")
THRESHOLD, ALPHA, POWER = 0.03, 0.05, 0.80


def _sps():
    """scipy.stats, imported on first use: it costs ~1-2 s, and neither the CLI's parser nor a trial's warm-up
    rule and spread interval (numpy only) need it; a fresh `lstm-bench trial` process per A/B side paid it."""
    from scipy import stats
    return stats
HL_EFFICIENCY = math.sqrt(math.pi / 3)  # HL's standard error / the mean's, normal errors


@lru_cache(maxsize=512)
def signed_rank_null_cdf(n: int) -> np.ndarray:
    """P(W+ <= w) for w = 0 .. n(n+1)/2 under the null: W+ = the sum of the ranks of the positive d among n
    (each rank positive with probability 1/2, independently). Counted exactly by polynomial multiplication."""
    counts = np.zeros(n * (n + 1) // 2 + 1)
    counts[0] = 1.0
    top = 0
    for rank in range(1, n + 1):
        counts[rank:top + rank + 1] += counts[:top + 1].copy()
        top += rank
    return np.cumsum(counts) / 2.0 ** n


def walsh_averages(d) -> np.ndarray:
    """The n(n+1)/2 averages (d_i + d_j) / 2 for i <= j, sorted."""
    d = np.asarray(d, dtype=float)
    i, j = np.triu_indices(d.size)
    return np.sort((d[i] + d[j]) / 2.0)


def hodges_lehmann(d) -> float:
    """The Hodges-Lehmann estimate of the centre of d: the median of its Walsh averages."""
    return float(np.median(walsh_averages(d)))


def hl_interval(d, level: float = 0.95) -> tuple[float, float, float]:
    """The distribution-free interval for the centre of d at (at least) `level`: (low, high, achieved level).
    Too few values for that level (n < 6 at 95%: even all signs alike has probability 2 * 2^-n > 5%): the
    whole line, (-inf, inf, 1.0)."""
    d = np.asarray(d, dtype=float)
    n = d.size
    if n == 0:
        return -math.inf, math.inf, 1.0
    cdf = signed_rank_null_cdf(n)
    tail = (1.0 - level) / 2.0
    k = int(np.searchsorted(cdf, tail, side="right"))  # P(W+ <= k - 1) <= tail < P(W+ <= k)
    if k == 0:
        return -math.inf, math.inf, 1.0
    w = walsh_averages(d)
    return float(w[k - 1]), float(w[w.size - k]), float(1.0 - 2.0 * cdf[k - 1])


def wilcoxon_p(d) -> float:
    """Two-sided p-value of the signed-rank test that d is symmetric about 0: exact where the exact null holds
    (no zeros, no ties), else scipy's normal approximation with its tie correction. 1.0 for fewer than 2 values
    or all zeros."""
    d = np.asarray(d, dtype=float)
    if d.size < 2 or not np.any(d):
        return 1.0
    a = np.abs(d[d != 0])
    exact = a.size == d.size and np.unique(a).size == a.size
    return float(_sps().wilcoxon(d, method="exact" if exact else "approx", zero_method="wilcox").pvalue)


def bh_select(p_values, alpha: float = ALPHA) -> np.ndarray:
    """Benjamini-Hochberg at false-discovery rate alpha: which hypotheses are selected."""
    p = np.asarray(p_values, dtype=float)
    if p.size == 0:
        return np.zeros(0, dtype=bool)
    return _sps().false_discovery_control(p, method="bh") <= alpha


def fcr_level(alpha: float, selected: int, tested: int) -> float:
    """The interval level that keeps the false-coverage rate of the selected intervals at alpha (BY 2005)."""
    return 1.0 - alpha * max(selected, 1) / max(tested, 1)


def robust_sd(x) -> float:
    """1.4826 x the median absolute deviation: the standard deviation for normal data, deaf to one odd pair."""
    x = np.asarray(x, dtype=float)
    if x.size < 2:
        return math.nan
    return float(1.4826 * np.median(np.abs(x - np.median(x))))


def min_detectable_effect(sd: float, n: int, threshold: float = THRESHOLD, alpha: float = ALPHA,
                          power: float = POWER) -> float:
    """The smallest true relative change (a fraction) that n pairs whose log-ratios spread by `sd` would call a
    regression with probability `power`: its interval (half-width ~ z * se) must clear 1 - threshold."""
    if n < 2 or not math.isfinite(sd):
        return math.inf
    z = _sps().norm.ppf(1 - alpha / 2) + _sps().norm.ppf(power)
    return float(1.0 - math.exp(math.log1p(-threshold) - z * HL_EFFICIENCY * sd / math.sqrt(n)))


def pairs_for_effect(sd: float, effect: float, threshold: float = THRESHOLD, alpha: float = ALPHA,
                     power: float = POWER) -> int | None:
    """How many pairs min_detectable_effect needs to reach `effect` (None: the threshold alone exceeds it)."""
    room = math.log1p(-threshold) - math.log1p(-effect)
    if room <= 0 or not math.isfinite(sd):
        return None
    z = _sps().norm.ppf(1 - alpha / 2) + _sps().norm.ppf(power)
    return max(2, math.ceil((z * HL_EFFICIENCY * sd / room) ** 2))


def outcome(ci_low: float, ci_high: float, selected: bool, threshold: float = THRESHOLD) -> str:
    """Pinpoint's three answers (plus which way): the interval is of the ratio candidate / baseline."""
    if selected and ci_high < 1.0 - threshold:
        return "regression"
    if selected and ci_low > 1.0 + threshold:
        return "improvement"
    if 1.0 - threshold <= ci_low and ci_high <= 1.0 + threshold:
        return "unchanged"
    return "inconclusive"


@dataclass(frozen=True)
class PairedVerdict:
    """One cell's answer from its paired log-ratios (ratios are candidate / baseline)."""
    pairs: int
    ratio: float           # exp(Hodges-Lehmann estimate of the log-ratios)
    ci_low: float
    ci_high: float
    level: float           # the level asked for; the exact interval has at least this
    p_value: float
    selected: bool
    verdict: str
    log_sd: float          # robust spread of the per-pair log-ratios
    mde: float             # minimum detectable effect at this spread and pair count (a fraction)
    ab_pairs: int = 0      # pairs run baseline first
    ba_pairs: int = 0      # pairs run candidate first
    order_bias: float = math.nan  # HL ratio of AB pairs / HL ratio of BA pairs - 1: how much order mattered


def paired_verdicts(cells: dict, threshold: float = THRESHOLD, alpha: float = ALPHA,
                    orders: dict | None = None, sd_prior: dict | None = None) -> dict:
    """Verdicts for every cell of a session: cells maps a name to its per-pair log-ratios; orders (optional)
    maps it to each pair's order ("AB" or "BA"); sd_prior (optional, from a calibration) maps it to the
    machine's known spread, used for the MDE where it is wider than the session's own."""
    names = list(cells)
    logs = {k: np.asarray(cells[k], dtype=float) for k in names}
    p = {k: wilcoxon_p(logs[k]) for k in names}
    tested = [k for k in names if logs[k].size >= 2]
    chosen = dict(zip(tested, bh_select([p[k] for k in tested], alpha))) if tested else {}
    level = 1.0 - alpha
    out = {}
    for k in names:
        d = logs[k]
        lo, hi, _ = hl_interval(d, level)
        ratio = math.exp(hodges_lehmann(d)) if d.size else math.nan
        sel = bool(chosen.get(k, False))
        sd = robust_sd(d)
        prior = (sd_prior or {}).get(k)
        spread = max(sd, prior) if prior is not None and math.isfinite(sd) else sd
        order = list((orders or {}).get(k) or [])
        ab = [x for x, o in zip(d, order) if o == "AB"]
        ba = [x for x, o in zip(d, order) if o == "BA"]
        bias = math.exp(hodges_lehmann(ab) - hodges_lehmann(ba)) - 1 if ab and ba else math.nan
        out[k] = PairedVerdict(pairs=int(d.size), ratio=ratio, ci_low=math.exp(lo), ci_high=math.exp(hi),
                               level=level, p_value=p[k], selected=sel,
                               verdict=outcome(math.exp(lo), math.exp(hi), sel, threshold), log_sd=sd,
                               mde=min_detectable_effect(spread, int(d.size), threshold, alpha),
                               ab_pairs=len(ab), ba_pairs=len(ba), order_bias=bias)
    return out


def balanced_orders(pairs: int, rng: np.random.Generator) -> list[str]:
    """The order of each pair of one cell: AB and BA in shuffled blocks of two, so every prefix of even length
    is balanced (equal AB and BA counts) and an odd count is off by one at most."""
    orders = []
    for _ in range((pairs + 1) // 2):
        block = ["AB", "BA"]
        rng.shuffle(block)
        orders.extend(block)
    return orders[:pairs]


def cells_to_extend(verdicts: dict, step: int, max_pairs: int) -> dict:
    """The sequential rule of a session, fixed in advance: every inconclusive cell gets `step` more pairs while
    it has fewer than `max_pairs`; a cell that reached an answer stops. {cell: how many more pairs}."""
    return {k: min(step, max_pairs - v.pairs) for k, v in verdicts.items()
            if v.verdict == "inconclusive" and v.pairs < max_pairs}


# ---- Inside a trial: when warm-up has ended, and how sure the spread is (measure.py) --------------------------
#
# Warm-up ends by a trend test on the recent blocks, not by two blocks that happen to agree (Barrett et al. 2017,
# "Virtual machine warmup blows hot and cold", found steady states only by looking at the series). Over the last
# TREND_WINDOW warm-up blocks (log img/s): the exact Mann-Kendall test of "no monotone trend" (Kendall's tau of
# the blocks against their order; the null distribution counted exactly, as scipy.stats.kendalltau's exact
# method) must not reject at TREND_ALPHA, *and* the Theil-Sen slope (the median of the pairwise slopes,
# scipy.stats.theilslopes' estimate) must be within TREND_MAX_SLOPE per block. The second half guards against
# the test's low power: a series still rising 1% a block with 4% noise is often "not significant" over 10
# blocks, yet its slope is visible. Both are vectorised here (the simulation tests run hundreds of series at
# once) and checked against scipy in tests/test_stats.py.

TREND_WINDOW, TREND_ALPHA, TREND_MAX_SLOPE = 10, 0.05, 0.005
SPREAD_LEVEL, SPREAD_RESAMPLES, SPREAD_SEED = 0.95, 1000, 20261129


@lru_cache(maxsize=64)
def kendall_s_null_tail(n: int) -> np.ndarray:
    """P(|S| >= s) for s = 0 .. n(n-1)/2 under no trend: S = concordant - discordant pairs of n exchangeable
    values, S = M - 2 * (inversions), inversions counted exactly (Mahonian numbers, by polynomial products)."""
    counts = np.ones(1)
    for m in range(2, n + 1):
        new = np.zeros(counts.size + m - 1)
        for j in range(m):
            new[j:j + counts.size] += counts
        counts = new
    pmf = counts / counts.sum()
    top = n * (n - 1) // 2
    s = np.abs(top - 2 * np.arange(top + 1))
    return np.array([pmf[s >= v].sum() for v in range(top + 1)])


def _pairs(n: int) -> tuple[np.ndarray, np.ndarray]:
    i, j = np.triu_indices(n, 1)
    return i, j


def mann_kendall_p(x) -> np.ndarray:
    """Two-sided exact p-value of the Mann-Kendall test of no monotone trend along the last axis (ties count
    as neither concordant nor discordant: conservative)."""
    x = np.asarray(x, dtype=float)
    n = x.shape[-1]
    i, j = _pairs(n)
    s = np.abs(np.sign(x[..., j] - x[..., i]).sum(axis=-1)).astype(int)
    return kendall_s_null_tail(n)[s]


def theil_sen_slope(x) -> np.ndarray:
    """The Theil-Sen slope of x against 0, 1, 2, ... along the last axis: the median of the pairwise slopes."""
    x = np.asarray(x, dtype=float)
    i, j = _pairs(x.shape[-1])
    return np.median((x[..., j] - x[..., i]) / (j - i), axis=-1)


def trend_settled(log_rates, alpha: float = TREND_ALPHA, max_slope: float = TREND_MAX_SLOPE):
    """Warm-up's end rule on windows of log img/s (last axis: the window, in order): no significant
    Mann-Kendall trend and a Theil-Sen slope within max_slope (a fraction per block)."""
    x = np.asarray(log_rates, dtype=float)
    return (mann_kendall_p(x) > alpha) & (np.abs(theil_sen_slope(x)) <= max_slope)


def first_settled(log_rates, window: int = TREND_WINDOW, alpha: float = TREND_ALPHA,
                  max_slope: float = TREND_MAX_SLOPE) -> np.ndarray:
    """For series of warm-up blocks (last axis: blocks, in order), the count of blocks after which the rule
    first held (window .. n), or -1 where it never did: what measure() would have done block by block."""
    x = np.asarray(log_rates, dtype=float)
    ok = trend_settled(np.lib.stride_tricks.sliding_window_view(x, window, axis=-1), alpha, max_slope)
    return np.where(ok.any(axis=-1), ok.argmax(axis=-1) + window, -1)


def rel_iqr(x) -> np.ndarray:
    """Interquartile range over median along the last axis (numpy's linear quantiles: measure.quartiles')."""
    q1, q2, q3 = np.percentile(np.asarray(x, dtype=float), [25, 50, 75], axis=-1)
    return (q3 - q1) / q2


def rel_iqr_interval(x, level: float = SPREAD_LEVEL, resamples: int = SPREAD_RESAMPLES,
                     seed: int = SPREAD_SEED) -> tuple[np.ndarray, np.ndarray]:
    """A percentile-bootstrap interval for the relative IQR of the blocks (last axis), resampling blocks
    (fixed seed, so a record's interval is reproducible). It treats blocks as independent: slow drift within
    the timed window makes it too narrow, which the warm-up rule and the contention check are there to catch."""
    x = np.asarray(x, dtype=float)
    n = x.shape[-1]
    if n < 2:
        nan = np.full(x.shape[:-1], np.nan)
        return nan, nan
    idx = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    boot = rel_iqr(x[..., idx])                       # (..., resamples)
    tail = (1.0 - level) / 2.0
    lo, hi = np.quantile(boot, [tail, 1.0 - tail], axis=-1)
    return lo, hi


# ---- Across runs: change points of a history line (report/history.py) ----------------------------------------
#
# One line is a spec's img/s over runs in start order. The statistic is rank-based: for every split k (at least
# CP_MIN_RUNS runs a side) the standardised Mann-Whitney (rank-sum) statistic of the runs after k against those
# before it, and the line's statistic is its largest absolute value (a Pettitt-type scan; ranks, so one odd run
# moves it by one rank at most). Its null distribution comes from a block permutation: the line is cut into
# blocks of CP_BLOCKS runs (half the shuffles blocks of 2, half of 3, each from a random offset) and the blocks
# shuffled, so run-to-run autocorrelation (runs close in time on the same machine are alike) stays within the
# shuffled copies, and the scan over split positions is paid for by rescanning every copy. Simulated in
# tests/test_history.py on AR(1) lines (rho 0.5, 20 runs): a plain permutation (blocks of one run) gives 35% of
# flat lines p <= 0.05; blocks of 2 and 3 about 4%. The price: a 20-run line has only so many block orders, so
# even a perfectly separated step has p ~ 0.005 at best (1 / C(10, 5) orders of ten 2-blocks, halved twice).

CP_MIN_RUNS, CP_BLOCKS, CP_PERMUTATIONS, CP_SEED = 3, (2, 3), 999, 20261129


def block_permutations(n: int, lengths=CP_BLOCKS, count: int = CP_PERMUTATIONS, seed: int = CP_SEED) -> np.ndarray:
    """`count` block permutations of 0..n-1 (rows): the positions cut into blocks of one of `lengths` (the rows
    share them out evenly) from a random offset, the blocks put in a random order, each block's runs in order."""
    rng = np.random.default_rng(seed)
    out = []
    for r, length in enumerate(lengths):
        rows = count // len(lengths) + (r < count % len(lengths))
        offset = rng.integers(0, length, rows)[:, None]
        pos = np.arange(n)[None, :]
        block = (pos + (length - offset) % length) // length
        order = np.argsort(rng.random((rows, int(block.max()) + 1)), axis=1)   # each block's place, 0, 1, ...
        out.append(np.argsort(np.take_along_axis(order, block, axis=1) * n + pos, axis=1))
    return np.vstack(out)


def rank_scan(ranks, min_runs: int = CP_MIN_RUNS) -> np.ndarray:
    """The standardised rank-sum statistic of every split k = min_runs .. n - min_runs (last axis: ranks 1..n in
    run order): (sum of the first k ranks - k(n+1)/2) / its null standard deviation; shape (..., splits)."""
    r = np.asarray(ranks, dtype=float)
    n = r.shape[-1]
    ks = np.arange(min_runs, n - min_runs + 1)
    w = np.cumsum(r, axis=-1)[..., ks - 1]
    return (w - ks * (n + 1) / 2.0) / np.sqrt(ks * (n - ks) * (n + 1) / 12.0)


def change_point_test(values, min_runs: int = CP_MIN_RUNS, permutations: int = CP_PERMUTATIONS,
                      seed: int = CP_SEED) -> tuple[np.ndarray, np.ndarray]:
    """The best split of each line (last axis: values in run order) and its block-permutation p-value:
    (k, p), k the index of the first run after the split; k = -1 and p = 1 for lines too short to split
    (fewer than 2 * min_runs runs)."""
    x = np.asarray(values, dtype=float)
    n = x.shape[-1]
    if n < 2 * min_runs:
        shape = x.shape[:-1]
        return np.full(shape, -1), np.ones(shape)
    ranks = _sps().rankdata(x, axis=-1)
    observed = np.abs(rank_scan(ranks, min_runs))
    stat = observed.max(axis=-1)
    perms = block_permutations(n, count=permutations, seed=seed)
    null = np.abs(rank_scan(ranks[..., perms], min_runs)).max(axis=-1)      # (..., permutations)
    p = (1.0 + (null >= stat[..., None] - 1e-9).sum(axis=-1)) / (permutations + 1.0)
    return observed.argmax(axis=-1) + min_runs, p
