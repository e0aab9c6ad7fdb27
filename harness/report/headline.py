"""The report's answer, first: per device, mode and precision, which impl is fastest, by how much over each
other impl (with an interval), and how close it runs to the node's GEMM ceiling.

  headline_table  one row per (device, mode, dtype, other impl): the fastest impl, its speedup over `other`
                  as the geometric mean over the specs both ran (same seq, hidden, layers, batch,
                  bidirectional), a 95% bootstrap interval of that mean, the per-spec range, in how many specs
                  it was the faster, how many of the cells were flagged noisy, and the median ceiling_frac of
                  both impls as a percentage (empty where the records carry none).

Which impl is fastest: the one that beats the most others head to head, each pair judged by the geometric
mean of its per-spec speedups over the specs both ran (ties: the impl that ran more specs). Head to head
rather than "closest to each spec's best on average", which an impl that ran only its one good spec would
win; and a geometric mean rather than a mean of img/s, which the fastest specs alone would decide.

Why noisy cells are in it: noisy means contaminated (other processes on the cores, throttling, an unsettled
warm-up, a plan cut short: rerun by the sweep, flagged if still so; a wide spread alone is not noisy since
2026-12-07: 8 of the smoke baseline's 15 noisy cells of 24 were so by spread alone), and a headline from the clean ones
alone could answer for a few specs and hide that. So every ok cell counts (read from its non-noisy trials where it has any), and the row says how many of its cells had
only noisy ones; the throughput tables further down keep their non-noisy medians. The speedup per spec is the ratio of the median per-sample img/s (step_ms, else
block_img_per_s; repeats of one spec pooled), as `lstm-bench compare` computes it; the interval is a
percentile interval of the geometric mean over specs, each spec's ratio redrawn by compare's circular block
bootstrap. It covers sampling noise within this run, not drift between runs (see docs/comparing.md): a
noisy cell widens it only as far as its own steps spread.
"""

from __future__ import annotations

import zlib

import numpy as np
import pandas as pd

from .compare import log_ratio_draws, samples
from .frame import _impl_columns, _missing, _sort, prepare

GROUP = ["device", "mode", "dtype"]
SPEC = ["seq", "hidden_size", "num_layers", "batch_size", "bidirectional"]
LEVEL, RESAMPLES, SEED = 0.95, 2000, 20261206
COLUMNS = GROUP + ["fastest", "other", "speedup", "ci_low", "ci_high", "min_speedup", "max_speedup", "specs",
                   "faster_in", "noisy_cells", "ceiling_pct", "other_ceiling_pct"]


def _cell_samples(trials: pd.DataFrame) -> np.ndarray:
    """Every per-sample img/s of one spec and impl (repeats pooled): step_ms when all its trials have it."""
    recs = trials.to_dict("records")
    kind = "step_ms" if all(len(samples(r, "step_ms")) for r in recs) else "block_img_per_s"
    return np.concatenate([samples(r, kind) for r in recs]) if recs else np.array([])


def _cells(g: pd.DataFrame) -> dict:
    """(spec key, impl) -> (samples, their median img/s, noisy, ceiling_frac values). A cell is read from its
    non-noisy trials when it has any, else from its noisy ones (and is then noisy), as
    tables.throughput_cells does: a clean repeat is never diluted by a contaminated one."""
    out = {}
    for key, t in g.groupby(SPEC + ["impl"], dropna=False, sort=False):
        clean = t[~t["noisy"].astype(bool)]
        use = clean if len(clean) else t
        x = _cell_samples(use)
        median = float(np.median(x)) if x.size else float(use["img_per_s"].median())
        out[(key[:-1], key[-1])] = (x, median, clean.empty, list(use["ceiling_frac"]))
    return out


def _fastest(cells: dict, impls: list) -> str:
    """The impl that beats the most others head to head (geometric mean of its per-spec ratios over the specs
    both ran); ties go to the one that ran more specs, then to the first in report order."""
    def mean_log(a, b):
        logs = [np.log(cells[(s, a)][1] / cells[(s, b)][1]) for s, i in cells
                if i == a and (s, b) in cells and cells[(s, a)][1] > 0 and cells[(s, b)][1] > 0]
        return np.mean(logs) if logs else np.nan
    wins = {a: sum(mean_log(a, b) > 0 for b in impls if b != a) for a in impls}
    specs = {a: sum(i == a for _, i in cells) for a in impls}
    return max(impls, key=lambda a: (wins[a], specs[a], -impls.index(a)))


def _pct(values) -> float:
    """The median of the recorded ceiling_frac values as a percentage; NaN where none was recorded."""
    v = [float(x) for x in values if not _missing(x)]
    return 100.0 * float(np.median(v)) if v else np.nan


def _pair_row(cells: dict, fastest: str, other: str, seed: int) -> dict | None:
    specs = [spec for spec, impl in cells if impl == fastest and (spec, other) in cells]
    if not specs:
        return None
    logs, draws = [], []
    for spec in specs:
        (xf, mf, _, _), (xo, mo, _, _) = cells[(spec, fastest)], cells[(spec, other)]
        logs.append(np.log(mf / mo))
        if xf.size and xo.size:
            draws.append(log_ratio_draws(xo, xf, RESAMPLES, seed + zlib.crc32(repr(spec).encode())))
    mean = float(np.mean(logs))
    lo = hi = np.nan
    if len(draws) == len(specs):                 # an interval only when every spec has samples to redraw
        lo, hi = np.exp(np.quantile(np.mean(draws, axis=0), [(1 - LEVEL) / 2, (1 + LEVEL) / 2]))
    noisy = sum(cells[(s, i)][2] for s in specs for i in (fastest, other))
    return {"fastest": fastest, "other": other, "speedup": float(np.exp(mean)), "ci_low": lo, "ci_high": hi,
            "min_speedup": float(np.exp(min(logs))), "max_speedup": float(np.exp(max(logs))),
            "specs": len(specs), "faster_in": int(sum(v > 0 for v in logs)), "noisy_cells": int(noisy),
            "ceiling_pct": _pct(v for s in specs for v in cells[(s, fastest)][3]),
            "other_ceiling_pct": _pct(v for s in specs for v in cells[(s, other)][3])}


def headline_table(df: pd.DataFrame) -> pd.DataFrame:
    """The headline rows (see the module docstring); empty with COLUMNS when no two impls share a spec."""
    d = prepare(df)
    d = d[(d["status"] == "ok") & d["mode"].isin(["train", "infer"]) & d["img_per_s"].notna()]
    rows = []
    for key, g in d.groupby(GROUP, dropna=False, sort=False):
        cells = _cells(g)
        impls = _impl_columns(g["impl"].unique())
        if len(impls) < 2:
            continue
        fastest = _fastest(cells, impls)
        for other in impls:
            if other != fastest:
                row = _pair_row(cells, fastest, other, SEED)
                if row is not None:
                    rows.append({**dict(zip(GROUP, key)), **row})
    if not rows:
        return pd.DataFrame(columns=COLUMNS)
    return _sort(pd.DataFrame(rows, columns=COLUMNS), ["device", "mode", "dtype"])


def _x(v) -> str:
    return "" if _missing(v) else f"{v:.2f}x"


def _interval(r) -> str:
    return "" if _missing(r["ci_low"]) else f"[{r['ci_low']:.2f}, {r['ci_high']:.2f}]"


def _pct_text(v) -> str:
    return "" if _missing(v) else f"{v:.0f}%"


def shown(t: pd.DataFrame) -> pd.DataFrame:
    """The headline table as the report shows it: speedups as "2.10x", the interval as one column."""
    return pd.DataFrame({
        "device": t["device"], "mode": t["mode"], "dtype": t["dtype"], "fastest": t["fastest"],
        "over": t["other"], "speedup": t["speedup"].map(_x),
        f"{LEVEL:.0%} interval": [_interval(r) for _, r in t.iterrows()],
        "range over specs": [f"{_x(a)} - {_x(b)}" for a, b in zip(t["min_speedup"], t["max_speedup"])],
        "faster in": [f"{f} of {n}" for f, n in zip(t["faster_in"], t["specs"])],
        "noisy cells": [f"{k} of {2 * n}" for k, n in zip(t["noisy_cells"], t["specs"])],
        "fastest at ceiling": t["ceiling_pct"].map(_pct_text),
        "other at ceiling": t["other_ceiling_pct"].map(_pct_text)}).reset_index(drop=True)


def sentences(t: pd.DataFrame) -> list[str]:
    """One line per device, mode and precision: the answer in words."""
    lines = []
    for key, g in t.groupby(GROUP, dropna=False, sort=False):
        device, mode, dtype = key
        r0 = g.iloc[0]
        over = "; ".join(f"{_x(r['speedup'])} {r['other']}" + (f" {_interval(r)}" if _interval(r) else "")
                         for _, r in g.iterrows())
        ceiling = (f"; it runs at {_pct_text(r0['ceiling_pct'])} of the node's GEMM ceiling"
                   if not _missing(r0["ceiling_pct"]) else "")
        lines.append(f"{mode} on {device}, {dtype}: {r0['fastest']} is fastest, {over} (geometric mean over "
                     f"{int(g['specs'].max())} specs){ceiling}"
                     + (". Some of the cells behind it are noisy (see the table)." if g["noisy_cells"].any()
                        else "."))
    return lines


def section(doc, report) -> None:
    """The report's first section (build.SECTIONS): the answer before any detail."""
    t = report.tables.get("headline")
    doc.h(2, "Headline: which impl is fastest, by how much")
    if t is None or t.empty:
        doc.p("No two impls ran the same spec in an ok train or infer trial: nothing to rank.")
        return
    doc.items(sentences(t))
    doc.table(shown(t))
    doc.p(f"speedup: geometric mean over the specs both impls ran of the ratio of median per-step img/s; "
          f"interval: {LEVEL:.0%} block-bootstrap interval of that mean (sampling noise within this run, not "
          f"drift between runs); cells with only noisy trials are included and counted; ceiling: median ceiling_frac, the "
          f"LSTM GEMMs' GFLOP/s over the node's square-GEMM probe at the trial's precision.")
