"""harness/stats.py on fixed and simulated inputs: the exact null, the Hodges-Lehmann interval against a
brute-force computation, BH, the three outcomes, balanced orders, and the error rates of whole sessions."""

import itertools
import math

import numpy as np
import pytest

from harness import stats


@pytest.mark.parametrize("n", [1, 2, 5, 8, 11])
def test_signed_rank_null_matches_enumeration(n):
    sums = [sum(r for r, s in zip(range(1, n + 1), signs) if s) for signs in itertools.product([0, 1], repeat=n)]
    counts = np.bincount(sums, minlength=n * (n + 1) // 2 + 1)
    assert np.allclose(stats.signed_rank_null_cdf(n), np.cumsum(counts) / 2 ** n)


def _w_plus(x):
    ranks = np.argsort(np.argsort(np.abs(x))) + 1
    return int(ranks[x > 0].sum())


@pytest.mark.parametrize("seed", range(4))
def test_hl_interval_is_the_set_of_centres_the_signed_rank_test_keeps(seed):
    """Brute force: theta lies in the 95% interval exactly when W+(d - theta) is inside [k, N - k], the
    acceptance region of the exact two-sided test at the same achieved level."""
    rng = np.random.default_rng(seed)
    d = rng.normal(0.01, 0.03, size=9 + seed)
    lo, hi, achieved = stats.hl_interval(d, 0.95)
    n = d.size
    big_n = n * (n + 1) // 2
    cdf = stats.signed_rank_null_cdf(n)
    k = max(w + 1 for w in range(big_n + 1) if cdf[w] <= 0.025)
    assert achieved == pytest.approx(1 - 2 * cdf[k - 1]) and achieved >= 0.95
    walsh = stats.walsh_averages(d)
    between = (walsh[:-1] + walsh[1:]) / 2  # one theta strictly inside every gap between Walsh averages
    for theta in between:
        kept = k <= _w_plus(d - theta) <= big_n - k
        assert kept == (lo < theta < hi), theta
    assert stats.hodges_lehmann(d) == pytest.approx(np.median(walsh))


def test_hl_interval_needs_enough_pairs():
    assert stats.hl_interval([0.1] * 5, 0.95)[:2] == (-math.inf, math.inf)
    lo, hi, _ = stats.hl_interval([0.1, 0.11, 0.12, 0.13, 0.14, 0.15], 0.95)  # n=6: the extremes, 96.9%
    assert (lo, hi) == (0.1, 0.15)


def test_hl_interval_covers_at_its_level():
    rng = np.random.default_rng(1)
    hits = 0
    for _ in range(2000):
        d = rng.standard_t(3, size=12) * 0.02 + 0.05
        lo, hi, _ = stats.hl_interval(d, 0.9)
        hits += lo <= 0.05 <= hi
    assert 0.88 <= hits / 2000 <= 0.95


def test_wilcoxon_exact_against_enumeration():
    d = np.array([0.03, -0.01, 0.05, 0.02, 0.04, -0.025, 0.06])  # no ties: the exact null holds
    n = d.size
    observed = _w_plus(d)
    sums = np.array([sum(r for r, s in zip(range(1, n + 1), signs) if s)
                     for signs in itertools.product([0, 1], repeat=n)])
    centre = n * (n + 1) / 4
    p_brute = np.mean(np.abs(sums - centre) >= abs(observed - centre))
    assert stats.wilcoxon_p(d) == pytest.approx(p_brute)
    assert stats.wilcoxon_p([0.0, 0.0]) == 1.0


def test_bh_select_matches_the_step_up_rule():
    p = [0.001, 0.008, 0.039, 0.041, 0.042, 0.06, 0.074, 0.205]
    # BH at 0.05, m=8: the largest i with p_(i) <= 0.05 i / 8 is i=2 (0.008 <= 0.0125; 0.039 > 0.01875)
    assert stats.bh_select(p, 0.05).tolist() == [True, True] + [False] * 6


@pytest.mark.parametrize("lo,hi,selected,want", [
    (0.90, 0.95, True, "regression"), (1.04, 1.10, True, "improvement"), (0.98, 1.02, False, "unchanged"),
    (0.975, 0.985, True, "unchanged"), (0.95, 0.99, True, "inconclusive"), (0.90, 0.95, False, "inconclusive"),
    (0.9, 1.1, False, "inconclusive")])
def test_outcomes(lo, hi, selected, want):
    assert stats.outcome(lo, hi, selected, 0.03) == want


def test_balanced_orders():
    rng = np.random.default_rng(0)
    for pairs in range(1, 30):
        orders = stats.balanced_orders(pairs, rng)
        assert len(orders) == pairs
        for even in range(0, pairs + 1, 2):
            assert orders[:even].count("AB") == orders[:even].count("BA")
    assert len({tuple(stats.balanced_orders(10, rng)) for _ in range(20)}) > 1  # shuffled, not fixed


def test_mde_and_pairs_for_effect_agree():
    sd = 0.02
    n = stats.pairs_for_effect(sd, 0.05)
    assert stats.min_detectable_effect(sd, n) <= 0.05 < stats.min_detectable_effect(sd, n - 1)
    assert stats.min_detectable_effect(sd, 1000) == pytest.approx(0.03, abs=0.003)  # the threshold alone
    assert stats.pairs_for_effect(sd, 0.02) is None


def _pairs(rng, n, effect, sd, drift_sd=0.08, burst_p=0.08, seen_p=0.8):
    """n simulated pairs of one cell: every pair shares a drift term (the machine's speed in that window: it
    cancels in the ratio); a contention burst (10-40% slower) hits one side of a pair with probability burst_p,
    and is seen (external CPU) and that pair rerun with probability seen_p, as `ab` reruns contaminated pairs."""
    d = []
    while len(d) < n:
        drift = rng.normal(0, drift_sd)
        a = drift + rng.normal(0, sd / math.sqrt(2))
        b = drift + rng.normal(0, sd / math.sqrt(2)) + math.log1p(-effect)
        if rng.random() < burst_p:
            if rng.random() < seen_p:
                continue  # contaminated: rerun
            hit = rng.uniform(0.1, 0.4)
            a, b = (a - hit, b) if rng.random() < 0.5 else (a, b - hit)
        d.append(b - a)
    return d


def _session(rng, effects, sd, pairs=12, step=6, max_pairs=24):
    """One simulated session as `ab` runs it: `pairs` per cell, then inconclusive cells extended by `step`
    up to `max_pairs` (stats.cells_to_extend), BH over all cells at every look."""
    logs = {f"c{c}": _pairs(rng, pairs, e, sd) for c, e in enumerate(effects)}
    orders = {k: stats.balanced_orders(max_pairs, rng) for k in logs}
    while True:
        v = stats.paired_verdicts(logs, orders={k: orders[k][:len(logs[k])] for k in logs})
        more = stats.cells_to_extend(v, step, max_pairs)
        if not more:
            return v
        for k, n in more.items():
            logs[k] += _pairs(rng, n, effects[int(k[1:])], sd)


@pytest.mark.slow
def test_simulated_aa_sessions_rarely_flag_anything():
    """1,000 A/A sessions of 6 cells with drift and contention bursts: <= 5% with any false flag."""
    rng = np.random.default_rng(20261206)
    flagged = sum(any(v.verdict in ("regression", "improvement") for v in _session(rng, [0.0] * 6, 0.03).values())
                  for _ in range(1000))
    assert flagged / 1000 <= 0.05


@pytest.mark.slow
def test_simulated_power_for_an_eight_percent_slowdown():
    """One cell of six 8% slower: called a regression in >= 90% of 1,000 sessions; the others not called."""
    rng = np.random.default_rng(7)
    called = wrong = 0
    for _ in range(1000):
        v = _session(rng, [0.08] + [0.0] * 5, 0.03)
        called += v["c0"].verdict == "regression"
        wrong += any(v[f"c{c}"].verdict in ("regression", "improvement") for c in range(1, 6))
    assert called / 1000 >= 0.90
    assert wrong / 1000 <= 0.05


def test_extension_stops_at_the_cap_and_at_an_answer():
    d = [0.001, -0.002, 0.003, -0.001, 0.002, 0.0015, -0.0025, 0.0005]
    wide = [0.05, -0.06, 0.04, -0.05, 0.07, -0.04, 0.06, -0.07]
    v = stats.paired_verdicts({"tight": d, "wide": wide})
    assert v["tight"].verdict == "unchanged" and v["wide"].verdict == "inconclusive"
    assert stats.cells_to_extend(v, 6, 24) == {"wide": 6}
    assert stats.cells_to_extend(v, 6, 10) == {"wide": 2}
    assert stats.cells_to_extend(v, 6, 8) == {}


def test_paired_verdicts_report_order_bias_and_mde():
    d = [0.05, 0.06, 0.04, 0.05, 0.07, 0.05, 0.06, 0.04]
    v = stats.paired_verdicts({"x": d}, orders={"x": ["AB", "BA"] * 4})["x"]
    assert (v.ab_pairs, v.ba_pairs, v.pairs) == (4, 4, 8)
    assert v.verdict == "improvement" and v.ci_low > 1.03
    assert math.isfinite(v.order_bias) and 0.03 < v.mde < 0.1


# ---- The trend rule (measure.py's warm-up) and the change-point test (history), against scipy -----------------

@pytest.mark.parametrize("seed", range(3))
def test_mann_kendall_and_theil_sen_match_scipy(seed):
    from scipy import stats as sps
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 1, (6, 10)) + 0.15 * np.arange(10) * np.arange(6)[:, None] / 5
    p, slope = stats.mann_kendall_p(x), stats.theil_sen_slope(x)
    for row, pi, si in zip(x, p, slope):
        assert pi == pytest.approx(sps.kendalltau(np.arange(10), row, method="exact").pvalue)
        assert si == pytest.approx(sps.theilslopes(row).slope)
    assert stats.kendall_s_null_tail(10)[0] == pytest.approx(1.0)


def test_trend_settled_needs_no_trend_and_a_small_slope():
    t = np.arange(10.0)
    assert not stats.trend_settled(0.01 * t)                       # a clean rise: significant
    wiggle = 0.001 * np.array([1, -1, 2, -2, 0, 1, -1, 2, -2, 0])
    assert stats.trend_settled(wiggle)
    assert not stats.trend_settled(wiggle + 0.004 * (t > 4), max_slope=0.0001)
    assert list(stats.first_settled(np.vstack([0.02 * np.arange(30.0), np.zeros(30) + wiggle.tolist() * 3]))) \
        == [-1, 10]


def test_block_permutations_keep_blocks_together():
    perms = stats.block_permutations(20, count=200, seed=3)
    assert perms.shape == (200, 20) and (np.sort(perms, axis=1) == np.arange(20)).all()
    steps = np.diff(perms, axis=1)
    kept = (steps == 1).mean()          # runs followed by their own successor: at least half of the lag-1 pairs
    assert kept >= 0.5 and len({tuple(p) for p in perms}) >= 190


def test_change_point_test_finds_a_step_and_not_noise():
    rng = np.random.default_rng(4)
    flat = rng.normal(0, 0.02, (4, 20))
    step = flat + np.log(0.85) * (np.arange(20) >= 12)
    k, p = stats.change_point_test(np.vstack([flat, step]))
    assert (k[4:] == 12).all() and (p[4:] <= 0.02).all() and (p[:4] > 0.05).mean() >= 0.75   # p ~0.015: the floor
    k, p = stats.change_point_test(np.ones((2, 5)))
    assert (k == -1).all() and (p == 1).all()                         # too short to split 3 + 3
