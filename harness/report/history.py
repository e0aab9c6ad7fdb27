"""History across runs: every run under a results folder as one table, each spec's img/s over runs, change points.

    h = load_history("results", suite="smoke")   # History: records (one row per train/infer trial of every run)
    s = series_table(h.records)                   # one row per suite x spec x hw_fingerprint, change points named
    plot_history(h.records, s, "smoke.png")

A run is any folder under the results folder holding trials.jsonl or trials.parquet (read by
harness.store.load_run); its start time is run.json's started_at (else its earliest trial's), its label the
code_version its trials recorded (else git_commit). Runs are placed in start-time order.

Change points (stated method; the statistics live in harness/stats.py). A line is a spec on one hardware
fingerprint, its non-noisy runs in start order, log img/s. Its statistic is rank-based: the largest
standardised rank-sum (Mann-Whitney) statistic over every split with at least MIN_RUNS (3) runs a side. Its
p-value comes from a block permutation (PERMUTATIONS shuffles, fixed seed): the line cut into blocks of 2 or 3
consecutive runs from a random offset, the blocks shuffled, each copy scanned over every split as the line was,
so the search over positions is paid for and run-to-run autocorrelation stays in the null. Benjamini-Hochberg
at ALPHA runs across the lines of one page (a suite); a selected line's best split is a change point when the
medians either side also differ by at least MIN_SHIFT (5%), and each side of it is then searched again at BH's
level for the selected (alpha x selected / tested; Benjamini & Bogomolov 2014). Each change point is labelled:
"code changed" (the runs' code_version changes within one run of the split: the split's place is only that
sure), "machine changed" (the hostname changes there, or the node's GEMM ceiling of the MIN_RUNS runs either
side differs by more than CEILING_SHIFT) or "unexplained".

What it can see: a lasting step in the level of a line (simulated in tests/test_history.py: a 10% step after
run 10 of 20, AR(1) runs with rho 0.5 and a 3% spread, is found in 98% of lines, at run 10 +- 1), or one that
several lines of a page share (a code or machine change usually moves many). What it cannot: a change with fewer than 3
runs on one side (the last two runs of a history never start one; one odd run is never one); a line of fewer
than ~14 runs, whose block orders are too few for any split to reach p <= 0.05; a lone line among many at 20
runs (its best p, ~0.007 for a clean step, is above BH's 0.05 / lines for the first selection: it is found
when others change too, or once the line is longer); drift that rises slowly rather than steps (the rank scan
may find it, with a misleading place); and anything in the runs flagged noisy, which are left out. A
fingerprint change starts a new line rather than a change point. Simulated false alarms on flat AR(1) lines
(rho 0.5, 20 runs, 400 lines): 3.75%, and 3.5% with a single odd last run (-30%); a plain permutation (blocks
of one run, as this module used before) gives 35% of them p <= 0.05. Pages of 24 such lines: none of 60 had a
line selected; where one change moved 6 of the 24 lines by 10%, BH selected 91% of those and 1.5% of the rest.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import HarnessError
from ..schema import PARQUET, RUN_JSON, TRIALS
from ..stats import CP_MIN_RUNS, CP_PERMUTATIONS, CP_SEED, bh_select, change_point_test
from ..store import load_run
from .frame import TIMING_MODES, _missing, _sort, prepare
from .plots import _figure, _grid

MIN_SHIFT, ALPHA, MIN_RUNS, PERMUTATIONS, SEED = 0.05, 0.05, CP_MIN_RUNS, CP_PERMUTATIONS, CP_SEED
CEILING_SHIFT = 0.25   # above the probe's own wander under one load condition (11-22%, harness/ceiling.py)
MAX_PANELS = 24
SERIES_KEYS = ["suite", "mode", "device", "variant", "trial_id", "hw_fingerprint"]


@dataclass
class History:
    records: pd.DataFrame                              # train/infer trials of every run, with run_start/run_label
    runs: pd.DataFrame                                 # one row per run: run_id, suite, run_start, run_label, path
    skipped: list[str] = field(default_factory=list)   # "path: why" for runs that could not be read


def run_dirs(results_dir: Path) -> list[Path]:
    found = {p.parent for name in (TRIALS, PARQUET) for p in results_dir.rglob(name)}
    return sorted(found)


def load_history(results_dir, suite: str | None = None) -> History:
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise HarnessError(f"{results_dir}: no such results directory")
    frames, runs, skipped = [], [], []
    for d in run_dirs(results_dir):
        try:
            df = load_run(d)
        except HarnessError as exc:
            skipped.append(f"{d}: {exc}")
            continue
        run_id = d.relative_to(results_dir).as_posix() if d != results_dir else d.name
        meta = _meta(d)
        start = pd.to_datetime(meta.get("started_at"), utc=True, errors="coerce")
        if pd.isna(start) and "started_at" in df:
            start = pd.to_datetime(df["started_at"], utc=True, errors="coerce").min()
        labels = [str(v) for c in ("code_version", "git_commit") if c in df for v in df[c] if not _missing(v)]
        suites = [str(s) for s in df.get("suite", pd.Series(dtype=object)) if not _missing(s)]
        row = {"run_id": run_id, "suite": meta.get("suite") or (suites[0] if suites else d.parent.name),
               "run_start": start, "run_label": labels[0] if labels else "?", "path": str(d)}
        runs.append(row)
        if not df.empty:
            frames.append(df.assign(run_id=run_id, run_suite=row["suite"], run_start=start,
                                    run_label=row["run_label"]))
    if not runs:
        raise HarnessError(f"{results_dir}: no runs (no folder below it holds {TRIALS} or {PARQUET})")
    runs = pd.DataFrame(runs).sort_values(["run_start", "run_id"], na_position="last", kind="stable")
    if suite is not None:
        if suite not in set(runs["suite"]):
            known = ", ".join(sorted(set(runs["suite"])))
            raise HarnessError(f"{results_dir}: no runs of suite {suite!r} (suites: {known})")
        runs = runs[runs["suite"] == suite]
    records = prepare(pd.concat(frames, ignore_index=True)) if frames else prepare(pd.DataFrame(columns=["run_id"]))
    records = records[records["run_id"].isin(set(runs["run_id"])) & records["mode"].isin(TIMING_MODES)
                      & (records["status"] == "ok") & records["img_per_s"].notna()]
    records = records.assign(suite=records["run_suite"], hw_fingerprint=records["hw_fingerprint"].fillna("?"))
    order = {r: i for i, r in enumerate(runs["run_id"])}
    records = records.assign(run_order=records["run_id"].map(order)).sort_values("run_order", kind="stable")
    return History(records.reset_index(drop=True), runs.reset_index(drop=True), skipped)


def _meta(d: Path) -> dict:
    try:
        meta = json.loads((d / RUN_JSON).read_text())
        return meta if isinstance(meta, dict) else {}
    except (OSError, ValueError):
        return {}


def change_points(values, min_shift: float = MIN_SHIFT, alpha: float = ALPHA, min_runs: int = MIN_RUNS,
                  permutations: int = PERMUTATIONS, seed: int = SEED) -> list[int]:
    """Indices i where a change starts (between values[i-1] and values[i]) in one line, by the module's binary
    segmentation at level alpha (for a line on its own; series_table sets alpha from BH across a page);
    values are img/s (positive), in run order."""
    x = np.log(np.asarray(values, dtype=float))
    found = []

    def search(lo: int, hi: int):
        seg = x[lo:hi]
        if len(seg) < 2 * min_runs:
            return
        k, p = change_point_test(seg, min_runs, permutations, seed)
        k = int(k)
        if p <= alpha and _shift(seg, k) >= min_shift:
            found.append(lo + k)
            search(lo, lo + k)
            search(lo + k, hi)

    search(0, len(x))
    return sorted(found)


def _shift(seg: np.ndarray, k: int) -> float:
    """|median after / median before - 1| of a split of log values."""
    return float(np.expm1(abs(np.median(seg[k:]) - np.median(seg[:k]))))


def page_change_points(lines: list, alpha: float = ALPHA, **kw) -> list[list[int]]:
    """Change points of every line of a page (a list of img/s arrays): the first split of each line that has
    enough runs is tested, Benjamini-Hochberg selects among them at alpha, and a selected line is segmented at
    alpha x selected / tested (Benjamini & Bogomolov 2014)."""
    min_runs = kw.get("min_runs", MIN_RUNS)
    tested = [i for i, v in enumerate(lines) if len(v) >= 2 * min_runs]
    p = [float(change_point_test(np.log(np.asarray(lines[i], dtype=float)), min_runs,
                                 kw.get("permutations", PERMUTATIONS), kw.get("seed", SEED))[1]) for i in tested]
    chosen = [i for i, sel in zip(tested, bh_select(p, alpha)) if sel] if tested else []
    level = alpha * max(len(chosen), 1) / max(len(tested), 1)
    out = [[] for _ in lines]
    for i in chosen:  # every selected p is within alpha x selected / tested (BH's step-up): the first split holds
        out[i] = change_points(lines[i], alpha=level, **kw)
    return out


def cause(rows: pd.DataFrame, i: int, min_runs: int = MIN_RUNS) -> str:
    """Why a line's level changed at its i-th clean run: "code changed", "machine changed", both, or
    "unexplained" (rows: the line's clean runs in order, with run_label and, where recorded, hostname and
    ceiling_gflop_per_s)."""
    causes = []
    near = rows.iloc[max(i - 2, 0):i + 2]
    if near["run_label"].astype(str).nunique() > 1:
        causes.append("code changed")
    machine = False
    if "hostname" in rows and rows["hostname"].iloc[i - 1:i + 1].dropna().astype(str).nunique() > 1:
        machine = True
    if "ceiling_gflop_per_s" in rows:
        before = pd.to_numeric(rows["ceiling_gflop_per_s"].iloc[max(i - min_runs, 0):i], errors="coerce").median()
        after = pd.to_numeric(rows["ceiling_gflop_per_s"].iloc[i:i + min_runs], errors="coerce").median()
        if before > 0 and after > 0 and abs(np.log(after / before)) > np.log1p(CEILING_SHIFT):
            machine = True
    if machine:
        causes.append("machine changed")
    return ", ".join(causes) or "unexplained"


def series_table(records: pd.DataFrame) -> pd.DataFrame:
    """One row per line (suite, mode, device, variant, trial_id, hw_fingerprint): runs, noisy runs, first and
    last img/s, last/first, and its change points ("run_id (label): +12%, code changed"), BH across the lines
    given (one page: build_history calls it per suite)."""
    cols = SERIES_KEYS + ["runs", "noisy_runs", "first_img_per_s", "last_img_per_s", "last/first", "change_points",
                          "_change_runs"]
    rows, cleans = [], []
    for key, g in records.groupby(SERIES_KEYS, dropna=False, sort=False):
        clean = g[~g["noisy"]]
        row = dict(zip(SERIES_KEYS, key), runs=len(clean), noisy_runs=int(g["noisy"].sum()), _change_runs=[])
        if len(clean):
            v = clean["img_per_s"].to_numpy(float)
            row.update(first_img_per_s=v[0], last_img_per_s=v[-1], **{"last/first": v[-1] / v[0]})
        rows.append(row)
        cleans.append(clean)
    found = page_change_points([c["img_per_s"].to_numpy(float) for c in cleans])
    for row, clean, cps in zip(rows, cleans, found):
        if not cps:
            continue
        v = clean["img_per_s"].to_numpy(float)
        row["_change_runs"] = [clean["run_id"].iloc[i] for i in cps]
        row["change_points"] = "; ".join(
            f"{clean['run_id'].iloc[i]} ({clean['run_label'].iloc[i]}): "
            f"{np.median(v[i:_next(cps, i, len(v))]) / np.median(v[_prev(cps, i):i]) - 1:+.0%}, {cause(clean, i)}"
            for i in cps)
    out = pd.DataFrame(rows, columns=cols)
    if out.empty:
        return out
    out["change_points"] = out["change_points"].where(out["change_points"].astype(bool), np.nan)
    has = out["_change_runs"].map(bool)
    return pd.concat([_sort(out[has], SERIES_KEYS), _sort(out[~has], SERIES_KEYS)], ignore_index=True)


def _prev(cps: list[int], i: int) -> int:
    return max([c for c in cps if c < i], default=0)


def _next(cps: list[int], i: int, n: int) -> int:
    return min([c for c in cps if c > i], default=n)


def plot_history(records: pd.DataFrame, series: pd.DataFrame, runs: pd.DataFrame, path: Path) -> str | None:
    """img/s over runs, a panel per spec (specs with change points first), a line per hw_fingerprint, noisy runs
    hollow, change points as dashed red lines. x: runs in start order, ticked with start time and code label."""
    if series.empty:
        return None
    specs = list(dict.fromkeys(series["trial_id"]))
    shown = specs[:MAX_PANELS]
    fig = _figure(4.6 * min(3, len(shown)), 3.4 * -(-len(shown) // 3))
    ticks = list(range(len(runs)))
    labels = [f"{'?' if pd.isna(s) else s.strftime('%m-%d %H:%M')}\n{str(lab)[:10]}"
              for s, lab in zip(runs["run_start"], runs["run_label"])]
    step = -(-len(ticks) // 6)
    pos = {r: i for i, r in enumerate(runs["run_id"])}
    colors = {fp: f"C{j % 10}" for j, fp in enumerate(dict.fromkeys(series["hw_fingerprint"]))}
    for ax, tid in zip(_grid(fig, len(shown), 3), shown):
        lines = series[series["trial_id"] == tid]
        for _, line in lines.iterrows():
            g = records[(records["trial_id"] == tid) & (records["hw_fingerprint"] == line["hw_fingerprint"])
                        & (records["suite"] == line["suite"])]
            color = colors[line["hw_fingerprint"]]
            clean = g[~g["noisy"]]
            ax.plot(clean["run_id"].map(pos), clean["img_per_s"], "-o", ms=4, color=color,
                    label=f"hw {str(line['hw_fingerprint'])[:12]}")
            noisy = g[g["noisy"]]
            ax.plot(noisy["run_id"].map(pos), noisy["img_per_s"], "o", ms=5, mfc="none", color=color)
            for run_id in line["_change_runs"]:
                ax.axvline(pos[run_id] - 0.5, color="tab:red", ls="--", lw=1.2)
        values = records.loc[records["trial_id"] == tid, "img_per_s"]
        mid = values.median()                      # at least +-10% around the median: scatter is not a cliff
        ax.set_ylim(min(values.min(), 0.9 * mid) * 0.98, max(values.max(), 1.1 * mid) * 1.02)
        first = lines.iloc[0]
        ax.set_title(f"{first['mode']} {first['variant']}", fontsize=8)
        ax.set_xticks(ticks[::step], labels[::step], fontsize=6)
        ax.set_ylabel("img/s", fontsize=7)
        ax.tick_params(axis="y", labelsize=7)
        ax.legend(fontsize=6)
    fig.savefig(path)
    left = len(specs) - len(shown)
    return f"first {len(shown)} of {len(specs)} specs (those with change points first)" if left else ""


def file_stem(suite: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(suite)) or "suite"
