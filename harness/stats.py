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
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import stats as sps

OUTCOMES = ("regression", "improvement", "unchanged", "inconclusive")
THRESHOLD, ALPHA, POWER = 0.03, 0.05, 0.80
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
    return float(sps.wilcoxon(d, method="exact" if exact else "approx", zero_method="wilcox").pvalue)


def bh_select(p_values, alpha: float = ALPHA) -> np.ndarray:
    """Benjamini-Hochberg at false-discovery rate alpha: which hypotheses are selected."""
    p = np.asarray(p_values, dtype=float)
    if p.size == 0:
        return np.zeros(0, dtype=bool)
    return sps.false_discovery_control(p, method="bh") <= alpha


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
    z = sps.norm.ppf(1 - alpha / 2) + sps.norm.ppf(power)
    return float(1.0 - math.exp(math.log1p(-threshold) - z * HL_EFFICIENCY * sd / math.sqrt(n)))


def pairs_for_effect(sd: float, effect: float, threshold: float = THRESHOLD, alpha: float = ALPHA,
                     power: float = POWER) -> int | None:
    """How many pairs min_detectable_effect needs to reach `effect` (None: the threshold alone exceeds it)."""
    room = math.log1p(-threshold) - math.log1p(-effect)
    if room <= 0 or not math.isfinite(sd):
        return None
    z = sps.norm.ppf(1 - alpha / 2) + sps.norm.ppf(power)
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
