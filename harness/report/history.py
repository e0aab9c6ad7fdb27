"""History across runs: every run under a results folder as one table, each spec's img/s over runs, change points.

    h = load_history("results", suite="smoke")   # History: records (one row per train/infer trial of every run)
    s = series_table(h.records)                   # one row per suite x spec x hw_fingerprint, change points named
    plot_history(h.records, s, "smoke.png")

A run is any folder under the results folder holding trials.jsonl or trials.parquet (read by
harness.store.load_run); its start time is run.json's started_at (else its earliest trial's), its label the
code_version its trials recorded (else git_commit). Runs are placed in start-time order.

Change points (stated method): binary segmentation of one line (a spec on one hardware fingerprint, its
non-noisy runs in start order, log img/s). The split that maximises the two-sample t (pooled variance) between
the runs before and after it (each side at least MIN_RUNS runs) is a change point when (a) the medians of the
two sides differ by at least MIN_SHIFT (5%) and (b) a permutation test gives p <= ALPHA: PERMUTATIONS shuffles
of the runs (fixed seed), each scored by its own best split, so searching over split positions is paid for.
Each side is then searched again. One odd run cannot be a change point (two runs a side), and a series whose
runs scatter by less than 5% never has one. The test treats runs as exchangeable under no change; drift within
a side lowers its power, not its false-alarm rate.
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
from ..store import load_run
from .frame import TIMING_MODES, _missing, _sort, prepare
from .plots import _figure, _grid

MIN_SHIFT, ALPHA, MIN_RUNS, PERMUTATIONS, SEED = 0.05, 0.05, 2, 999, 20261129
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
    """Indices i where a change starts (between values[i-1] and values[i]) by the module's binary segmentation;
    values are img/s (positive), in run order."""
    x = np.log(np.asarray(values, dtype=float))
    rng = np.random.default_rng(seed)
    found = []

    def search(lo: int, hi: int):
        seg = x[lo:hi]
        if len(seg) < 2 * min_runs:
            return
        perms = np.vstack([seg, rng.permuted(np.tile(seg, (permutations, 1)), axis=1)])
        ks, t = _split_t(perms, min_runs)
        best = int(np.argmax(np.abs(t[0])))
        k = int(ks[best])
        shift = np.expm1(abs(np.median(seg[k:]) - np.median(seg[:k])))
        stat = np.abs(t).max(axis=1)
        p = np.mean(stat[1:] >= stat[0] - 1e-12) * permutations / (permutations + 1) + 1 / (permutations + 1)
        if shift >= min_shift and p <= alpha:
            found.append(lo + k)
            search(lo, lo + k)
            search(lo + k, hi)

    search(0, len(x))
    return sorted(found)


def _split_t(x: np.ndarray, min_runs: int) -> tuple[np.ndarray, np.ndarray]:
    """Two-sample t (pooled variance) of every split k (min_runs..n-min_runs) of every row of x: the splits, and t
    of shape rows x splits. Pooled, so that a side of two runs that happen to agree cannot give a huge t."""
    n = x.shape[1]
    ks = np.arange(min_runs, n - min_runs + 1)
    s1, s2 = np.cumsum(x, axis=1), np.cumsum(x * x, axis=1)
    a1, a2 = s1[:, ks - 1], s2[:, ks - 1]
    m_l, m_r = a1 / ks, (s1[:, -1:] - a1) / (n - ks)
    within = (a2 - ks * m_l ** 2) + ((s2[:, -1:] - a2) - (n - ks) * m_r ** 2)
    var = np.maximum(within, 0) / max(n - 2, 1) + 1e-6 ** 2
    return ks, (m_r - m_l) / np.sqrt(var * (1 / ks + 1 / (n - ks)))


def series_table(records: pd.DataFrame) -> pd.DataFrame:
    """One row per line (suite, mode, device, variant, trial_id, hw_fingerprint): runs, noisy runs, first and
    last img/s, last/first, and its change points ("run_id (label): +12%")."""
    cols = SERIES_KEYS + ["runs", "noisy_runs", "first_img_per_s", "last_img_per_s", "last/first", "change_points",
                          "_change_runs"]
    rows = []
    for key, g in records.groupby(SERIES_KEYS, dropna=False, sort=False):
        clean = g[~g["noisy"]]
        row = dict(zip(SERIES_KEYS, key), runs=len(clean), noisy_runs=int(g["noisy"].sum()), _change_runs=[])
        if len(clean):
            v = clean["img_per_s"].to_numpy(float)
            row.update(first_img_per_s=v[0], last_img_per_s=v[-1], **{"last/first": v[-1] / v[0]})
            cps = change_points(v)
            row["_change_runs"] = [clean["run_id"].iloc[i] for i in cps]
            row["change_points"] = "; ".join(
                f"{clean['run_id'].iloc[i]} ({clean['run_label'].iloc[i]}): "
                f"{np.median(v[i:_next(cps, i, len(v))]) / np.median(v[_prev(cps, i):i]) - 1:+.0%}" for i in cps)
        rows.append(row)
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
