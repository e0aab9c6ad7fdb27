"""Comparing two runs cell by cell: what `lstm-bench compare` gates on, and the report's compare section.

Pairing. A current train/infer trial is paired with the baseline trial of the same trial_id (a stable hash of
its spec without budgets; the thread count is part of it). The pair is comparable only when hw_fingerprint,
threads, tf32_cudnn and tf32_matmul agree as well. A missing field (records older than it) is a value of its
own: two old records compare on spec + threads, and an old record never silently matches a new one.
`cross_hardware` drops the fingerprint condition and labels every verdict "(cross-hardware)". code_version
may differ (that is usually the point of comparing) and is shown. With no comparable pair at all, the
comparison is refused with one line naming what differs.

Samples. `step_ms` (every timed step) when both records have it, else `block_img_per_s` (older records).
Steps become img/s (batch_size / step time), so the statistic is the same for both kinds: the ratio of the
median per-sample throughput, current / baseline (above 1: faster now).

Interval: a circular moving-block bootstrap, percentile interval, fixed seed, vectorised with numpy. Bootstrap
rather than Mann-Whitney + Hodges-Lehmann because the gate speaks about a ratio of medians, which the
bootstrap estimates directly with no assumption that the two distributions differ only by a shift (a slower
path often adds a tail rather than moving every step), and because Mann-Whitney treats every step as an
independent draw. Consecutive steps are not independent (frequency steps, cache and allocator state, another
process's burst last many steps; lag-1 autocorrelations of 0.3-0.8 were measured in smoke runs here), so
resampling single steps understates the spread: on AR(1) steps with coefficient 0.5 a single-step bootstrap's
95% interval missed 18% of the time. Each side is rebuilt from circular blocks of consecutive samples whose
length follows Politis and White's automatic rule (`block_length`: ~2 for independent steps, longer as the
dependence lasts; the harness's own timing blocks are too few, 5-10 per trial, to resample). The two sides
are resampled independently; the log of the ratio of the resampled medians gives the bootstrap distribution.
Measured (tests/test_compare.py): at 60 steps and AR coefficient 0.5 the 95% interval still misses ~7-10% of
the time (block bootstraps undercover at small n under dependence); at 200 steps ~6%.

Many cells: Benjamini-Hochberg. Each tested cell gets a two-sided bootstrap p-value for "the ratio lies in
[1 - threshold, 1 + threshold]" (twice the share of resampled ratios on the far side of the nearer edge). BH at
`alpha` over the m tested cells selects R of them, and every interval is printed at the false-coverage
adjusted level 1 - alpha*max(R, 1)/m (Benjamini and Yekutieli 2005). With quantiles read as the inverse of the
bootstrap CDF, an interval lies outside the band exactly when its cell is selected, so verdicts read off the
printed intervals are BH's. One slowed cell among many still needs only p <= alpha/m, which a 10% shift in
tight samples gives; B = max(2000, 20 m / alpha) resamples keep >= 10 draws beyond the tightest quantile.

Verdicts: regression when the interval's upper bound < 1 - threshold; improvement when its lower bound >
1 + threshold; else within noise. Ok in the baseline and failed or timed out now: regression. Noisy on either
side: no verdict (noisy); fewer than MIN_SAMPLES samples on a side: no verdict (too few samples).
The interval covers sampling noise within the two runs; drift between runs (another machine state, another
process) is what the threshold is for.

`verdict`, `compare_table` and `unmatched_baseline` are the report's earlier half-IQR overlap rule, kept for
their callers.
"""

from __future__ import annotations

import math
import zlib
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .frame import TIMING_MODES, _missing, _obj, _sort, prepare

CONDITIONS = ("hw_fingerprint", "threads", "tf32_cudnn", "tf32_matmul")
LOOSE_KEYS = ["seq", "hidden_size", "num_layers", "impl", "batch_size", "dtype", "bidirectional", "mode",
              "device_kind", "data", "seed", "repeat"]       # a spec without its thread count
THRESHOLD, ALPHA, SEED, MIN_RESAMPLES, MIN_SAMPLES = 0.03, 0.05, 20261129, 2000, 5
FAILED = ("failed", "timeout")
TESTED = ("regression", "improvement", "within noise")
COLUMNS = ["run_id", "baseline_run_id", "trial_id", "mode", "device", "variant", "status", "baseline_status",
           "baseline_img_per_s", "img_per_s", "ratio", "ci_low", "ci_high", "p_value", "samples", "n_baseline",
           "n_current", "noisy", "verdict", "note", "baseline_code_version", "code_version"]


@dataclass
class Comparison:
    """compare_runs' answer: one row per current train/infer trial (COLUMNS), the settings, the interval level,
    and `refused` (why no cell could be compared; None when some could)."""
    table: pd.DataFrame
    threshold: float
    alpha: float
    cross_hardware: bool
    level: float = float("nan")
    tested: int = 0
    selected: int = 0
    resamples: int = 0
    baseline_only: int = 0
    refused: str | None = None
    code_versions: dict = field(default_factory=dict)    # "baseline"/"current" -> distinct code_version values

    def counts(self) -> dict:
        return self.table["verdict"].value_counts().to_dict()

    def flagged(self, fail_on: str | None) -> pd.DataFrame:
        """The rows `--fail-on` fails on: regressions, or regressions and improvements ("any")."""
        kinds = {"regression": ("regression",), "any": ("regression", "improvement")}.get(fail_on or "", ())
        first = self.table["verdict"].map(lambda v: str(v).split(" ")[0])
        return self.table[first.isin(kinds)]


def _key(v):
    """A field value as a comparable key: None when missing, integral floats as int, numpy scalars unwrapped."""
    if _missing(v):
        return None
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, (np.integer,)):
        return int(v)
    return int(v) if isinstance(v, (float, np.floating)) and float(v).is_integer() else v


def samples(rec: dict, kind: str) -> np.ndarray:
    """A record's per-sample img/s: from step_ms (batch_size / step) or block_img_per_s; finite, > 0 only."""
    raw = _obj(rec.get(kind))
    x = np.asarray(raw if isinstance(raw, (list, tuple)) else [], dtype=float)
    if kind == "step_ms":
        x = float(rec.get("batch_size") or 1) * 1000.0 / x if x.size else x
    return x[np.isfinite(x) & (x > 0)]


def log_ratio_draws(base: np.ndarray, cur: np.ndarray, resamples: int, seed: int) -> np.ndarray:
    """Bootstrap draws of log(median(cur*) / median(base*)): circular blocks of block_length(x) samples."""
    rng = np.random.default_rng(seed)
    return np.log(_block_medians(cur, resamples, rng)) - np.log(_block_medians(base, resamples, rng))


def block_length(x: np.ndarray) -> int:
    """Politis and White's (2004; Patton, Politis and White 2009) automatic block length for the circular
    bootstrap, from the sample's own autocorrelation (flat-top lag window): ~2 for independent steps, longer as
    dependence lasts longer; at most n/3."""
    n = len(x)
    if n < 8:
        return 1
    x = np.log(x) - np.log(x).mean()
    kn = max(5, math.ceil(math.sqrt(math.log10(n))))
    cov = np.array([x[:n - k] @ x[k:] / n for k in range(min(math.ceil(math.sqrt(n)) + kn, n - 1) + 1)])
    if cov[0] <= 0:
        return 1
    small = np.abs(cov / cov[0]) < 2 * math.sqrt(math.log10(n) / n)
    m = next((m for m in range(len(cov) - kn) if small[m + 1:m + 1 + kn].all()), len(cov) - 1 - kn)
    big_m = min(2 * max(m, 1), len(cov) - 1)
    k = np.arange(-big_m, big_m + 1)
    t = np.abs(k) / big_m
    lam = np.where(t <= 0.5, 1.0, 2 * (1 - t))
    g, g0 = np.sum(lam * np.abs(k) * cov[np.abs(k)]), np.sum(lam * cov[np.abs(k)])
    if g0 <= 0:
        return 1
    return int(min(max(1, math.ceil((1.5 * g ** 2 / g0 ** 2) ** (1 / 3) * n ** (1 / 3))), max(1, n // 3)))


def _block_medians(x: np.ndarray, resamples: int, rng) -> np.ndarray:
    n = len(x)
    length = block_length(x)
    blocks = math.ceil(n / length)
    offsets = np.arange(length)
    out = np.empty(resamples)
    chunk = max(1, 4_000_000 // (blocks * length))          # bound the index array to ~32 MB
    for lo in range(0, resamples, chunk):
        k = min(chunk, resamples - lo)
        starts = rng.integers(0, n, size=(k, blocks))
        idx = ((starts[:, :, None] + offsets) % n).reshape(k, -1)[:, :n]
        out[lo:lo + k] = np.median(x[idx], axis=1)
    return out


def bh_count(p: np.ndarray, alpha: float) -> int:
    """Benjamini-Hochberg: how many of the p-values are selected at false-discovery rate alpha."""
    m = len(p)
    if m == 0:
        return 0
    ok = np.nonzero(np.sort(p) <= alpha * np.arange(1, m + 1) / m)[0]
    return int(ok[-1] + 1) if ok.size else 0


def _differs(c: dict, b: dict, conditions) -> list[tuple[str, object, object]]:
    return [(k, _key(b.get(k)), _key(c.get(k))) for k in conditions if _key(c.get(k)) != _key(b.get(k))]


def _shown(v) -> str:
    return "missing" if v is None else str(v)


def _why(diffs: list) -> str:
    """'hw_fingerprint differs (a vs b); threads differs (2 vs 1)': the most common differences first."""
    seen = Counter(k for d in diffs for k, _, _ in d)
    example = {k: (b, c) for d in reversed(diffs) for k, b, c in d}
    parts = [f"{k} differs ({_shown(example[k][0])} vs {_shown(example[k][1])})" for k, _ in seen.most_common()]
    if "hw_fingerprint" in seen:
        parts[-1] += "; --cross-hardware compares across hardware"
    return "; ".join(parts)


def compare_runs(current: pd.DataFrame, baseline: pd.DataFrame, threshold: float = THRESHOLD,
                 alpha: float = ALPHA, cross_hardware: bool = False, seed: int = SEED) -> Comparison:
    """Every current train/infer trial against its baseline trial (see the module docstring)."""
    cur, base = (d[d["mode"].isin(TIMING_MODES)] for d in (prepare(current), prepare(baseline)))
    conditions = [k for k in CONDITIONS if not (cross_hardware and k == "hw_fingerprint")]
    label = " (cross-hardware)" if cross_hardware else ""
    by_id = {r["trial_id"]: r for r in base.to_dict("records")}
    rows, tests, diffs = [], [], []
    for c in cur.to_dict("records"):
        b = by_id.get(c["trial_id"])
        row = {k: c.get(k) for k in ("run_id", "trial_id", "mode", "device", "variant", "status", "img_per_s",
                                     "code_version")}
        row.update(noisy=bool(c["noisy"]), verdict="no baseline")
        rows.append(row)
        if b is None:
            continue
        row.update(baseline_run_id=b["run_id"], baseline_status=b["status"], baseline_img_per_s=b["img_per_s"],
                   baseline_code_version=b.get("code_version"), noisy=bool(c["noisy"] or b["noisy"]))
        d = _differs(c, b, conditions)
        if d:
            diffs.append(d)
            row.update(verdict="not comparable", note=_why([d]))
            continue
        row["verdict"] = _outcome(c, b, row, tests)
        if row["verdict"] != "tested":
            row["verdict"] += label
    cmp = Comparison(pd.DataFrame(rows, columns=COLUMNS), threshold, alpha, cross_hardware)
    cmp.baseline_only = int((~base["trial_id"].isin(set(cur["trial_id"]))).sum())
    cmp.code_versions = {side: sorted({str(v) for v in d["code_version"] if not _missing(v)})
                         for side, d in (("baseline", base), ("current", cur))}
    _interval_verdicts(cmp, rows, tests, seed, label)
    cmp.table = _order(pd.DataFrame(rows, columns=COLUMNS))
    cmp.refused = _refusal(cmp, cur, base, diffs, conditions)
    return cmp


def _outcome(c: dict, b: dict, row: dict, tests: list) -> str:
    """The verdict of a comparable pair that needs no interval, or "tested" after queueing its samples."""
    if b["status"] == "ok" and c["status"] in FAILED:
        row["note"] = f"ok in the baseline, {c['status']} now"
        return "regression"
    if c["status"] != "ok" or b["status"] != "ok":
        side = "current" if c["status"] != "ok" else "baseline"
        return f"no verdict ({side} {c['status'] if side == 'current' else b['status']})"
    kind = "step_ms" if all(len(samples(r, "step_ms")) for r in (c, b)) else "block_img_per_s"
    xb, xc = samples(b, kind), samples(c, kind)
    row.update(samples=kind, n_baseline=len(xb), n_current=len(xc))
    if len(xb) and len(xc):
        row["ratio"] = float(np.median(xc) / np.median(xb))
    if row["noisy"]:
        row["note"] = "; ".join(f"{side}: {r['noise_reasons'] or 'noisy'}"
                                for side, r in (("baseline", b), ("current", c)) if r["noisy"])
        return "no verdict (noisy)"
    if min(len(xb), len(xc)) < MIN_SAMPLES:
        row["note"] = f"{min(len(xb), len(xc))} samples on a side; {MIN_SAMPLES} needed"
        return "no verdict (too few samples)"
    tests.append((row, xb, xc, zlib.crc32(str(c["trial_id"]).encode())))
    return "tested"


def _interval_verdicts(cmp: Comparison, rows: list, tests: list, seed: int, label: str):
    """Bootstrap every tested cell, select with BH, print intervals at the adjusted level, read verdicts off."""
    m = len(tests)
    cmp.tested = m
    if not m:
        return
    cmp.resamples = max(MIN_RESAMPLES, math.ceil(20 * m / cmp.alpha))
    lo_edge, hi_edge = math.log1p(-cmp.threshold) if cmp.threshold < 1 else -math.inf, math.log1p(cmp.threshold)
    draws = [log_ratio_draws(xb, xc, cmp.resamples, seed + h) for _, xb, xc, h in tests]
    p = np.array([min(1.0, 2 * min(np.mean(d >= lo_edge), np.mean(d <= hi_edge))) for d in draws])
    cmp.selected = bh_count(p, cmp.alpha)
    a = cmp.alpha * max(cmp.selected, 1) / m
    cmp.level = 1 - a
    for (row, _, _, _), d, pv in zip(tests, draws, p):
        lo, hi = np.exp(np.quantile(d, [a / 2, 1 - a / 2], method="inverted_cdf"))
        row.update(ci_low=float(lo), ci_high=float(hi), p_value=float(pv))
        row["verdict"] = ("regression" if hi < 1 - cmp.threshold else "improvement" if lo > 1 + cmp.threshold
                          else "within noise") + label


def _order(t: pd.DataFrame) -> pd.DataFrame:
    rank = {"regression": 0, "improvement": 1, "not comparable": 2, "no verdict": 3, "within noise": 4}
    t = _sort(t, ["mode", "device", "variant", "run_id"])
    r = t["verdict"].map(lambda v: next((n for k, n in rank.items() if str(v).startswith(k)), 9))
    return t.iloc[np.argsort(r.to_numpy(), kind="stable")].reset_index(drop=True)


def _refusal(cmp: Comparison, cur, base, diffs: list, conditions) -> str | None:
    """Why no cell could be compared (one line), or None."""
    verdicts = cmp.table["verdict"].map(lambda v: str(v).split(" (cross")[0])
    if verdicts.isin(TESTED).any():
        return None
    if cur.empty or base.empty:
        return f"no comparable cells: the {'current' if cur.empty else 'baseline'} run has no train/infer trials"
    comparable = verdicts[~verdicts.isin(["no baseline", "not comparable"])]
    if len(comparable):
        reasons = ", ".join(f"{n} {v}" for v, n in comparable.value_counts().items())
        return f"no cell could be compared: {len(comparable)} comparable cells, none with a verdict ({reasons})"
    if not diffs:      # no trial_id in common: look for the same specs under another thread count
        loose = {tuple(_key(r[k]) for k in LOOSE_KEYS): r for r in base.to_dict("records")}
        for c in cur.to_dict("records"):
            b = loose.get(tuple(_key(c[k]) for k in LOOSE_KEYS))
            if b is not None and (d := _differs(c, b, conditions)):
                diffs.append(d)
    if diffs:
        return "no comparable cells: " + _why(diffs)
    suites = [", ".join(sorted({str(s) for s in d["suite"] if not _missing(s)})) or "?" for d in (base, cur)]
    return f"no comparable cells: no trial spec in common (baseline suite {suites[0]}, current suite {suites[1]})"


def exit_lines(cmp: Comparison, fail_on: str | None) -> list[str]:
    """One line per cell `--fail-on` fails on (for stderr)."""
    return [f"{r['verdict']}: {r['mode']} {r['device']} {r['variant']} ({r['trial_id']}): "
            + (f"ratio {r['ratio']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]" if not _missing(r["ci_low"])
               else str(r["note"]))
            for _, r in cmp.flagged(fail_on).iterrows()]


# ---- the earlier overlap rule (kept for its callers) ------------------------------------------------------

# compare_table falls back to these when trial_ids differ
FALLBACK_KEYS = ["seq", "hidden_size", "num_layers", "impl", "batch_size", "dtype", "bidirectional", "mode",
                 "device_kind"]


def verdict(current: float, current_iqr: float, baseline: float, baseline_iqr: float) -> str:
    """'regression' / 'improvement' only when [median - IQR/2, median + IQR/2] of the two runs do not overlap
    (the difference lies outside both runs' spread); otherwise 'within noise'. A missing IQR counts as 0."""
    ci = 0.0 if _missing(current_iqr) else float(current_iqr)
    bi = 0.0 if _missing(baseline_iqr) else float(baseline_iqr)
    c_lo, c_hi = current - ci / 2, current + ci / 2
    b_lo, b_hi = baseline - bi / 2, baseline + bi / 2
    if c_hi < b_lo:
        return "regression"
    if c_lo > b_hi:
        return "improvement"
    return "within noise"


def compare_table(df: pd.DataFrame, baseline: pd.DataFrame) -> pd.DataFrame:
    """Each current train/infer trial against the baseline trial of the same spec: matched on trial_id (a
    stable hash of the spec), else on the variant fields + mode + device kind (FALLBACK_KEYS; among several
    candidates the one with the same repeat, else none). ratio = img_per_s current / baseline. verdict:
    see `verdict`; 'no baseline' or 'not compared: ...' where there is nothing to compare."""
    cur = prepare(df)
    base = prepare(baseline)
    cur = cur[cur["mode"].isin(TIMING_MODES)]
    base = base[base["mode"].isin(TIMING_MODES)]
    cols = ["run_id", "trial_id", "baseline_trial_id", "matched_by", "mode", "device", "variant", "status",
            "baseline_status", "img_per_s", "img_per_s_iqr", "baseline_img_per_s", "baseline_img_per_s_iqr",
            "ratio", "noisy", "verdict"]
    if cur.empty:
        return pd.DataFrame(columns=cols)
    by_id = {t: r for t, r in zip(base["trial_id"], base.to_dict("records"))}
    pool = base[~base["trial_id"].isin(set(cur["trial_id"]))]
    by_key: dict[tuple, list[dict]] = {}
    for r in pool.to_dict("records"):
        by_key.setdefault(tuple(_key(r[k]) for k in FALLBACK_KEYS), []).append(r)
    rows = []
    for c in cur.to_dict("records"):
        b, how = by_id.get(c["trial_id"]), "trial_id"
        if b is None:
            cands = by_key.get(tuple(_key(c[k]) for k in FALLBACK_KEYS), [])
            same_repeat = [r for r in cands if _key(r["repeat"]) == _key(c["repeat"])]
            b = cands[0] if len(cands) == 1 else (same_repeat[0] if len(same_repeat) == 1 else None)
            how = "variant" if b is not None else (f"ambiguous ({len(cands)} candidates)" if cands else np.nan)
        row = {"run_id": c["run_id"], "trial_id": c["trial_id"], "matched_by": how, "mode": c["mode"],
               "device": c["device"], "variant": c["variant"], "status": c["status"],
               "img_per_s": c["img_per_s"], "img_per_s_iqr": c["img_per_s_iqr"], "noisy": bool(c["noisy"])}
        if b is None:
            row["verdict"] = "no baseline"
        else:
            row.update(baseline_trial_id=b["trial_id"], baseline_status=b["status"],
                       baseline_img_per_s=b["img_per_s"], baseline_img_per_s_iqr=b["img_per_s_iqr"],
                       noisy=bool(c["noisy"] or b["noisy"]))
            if c["status"] != "ok":
                row["verdict"] = f"not compared: current {c['status']}"
            elif b["status"] != "ok":
                row["verdict"] = f"not compared: baseline {b['status']}"
            elif _missing(c["img_per_s"]) or _missing(b["img_per_s"]) or not b["img_per_s"]:
                row["verdict"] = "not compared: no img_per_s"
            else:
                row["ratio"] = c["img_per_s"] / b["img_per_s"]
                row["verdict"] = verdict(c["img_per_s"], c["img_per_s_iqr"], b["img_per_s"],
                                         b["img_per_s_iqr"])
        rows.append(row)
    out = pd.DataFrame(rows, columns=cols)
    order = {"regression": 0, "improvement": 1, "within noise": 2, "no baseline": 9}
    out = _sort(out, ["mode", "device", "variant", "run_id"])
    rank = out["verdict"].map(lambda v: order.get(v, 5))
    return out.iloc[np.argsort(rank.to_numpy(), kind="stable")].reset_index(drop=True)



def unmatched_baseline(df: pd.DataFrame, baseline: pd.DataFrame, comparison: pd.DataFrame) -> pd.DataFrame:
    """Baseline train/infer trials that no current trial was compared with."""
    base = prepare(baseline)
    base = base[base["mode"].isin(TIMING_MODES)]
    used = set(comparison["baseline_trial_id"].dropna()) if "baseline_trial_id" in comparison else set()
    return base[~base["trial_id"].isin(used)]

