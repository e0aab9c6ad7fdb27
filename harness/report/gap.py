"""Closing the gap to cuDNN: how much of the naive-to-cudnn throughput gap each other impl closes, how far
each sits from the node's GEMM ceiling, and (from profile trials) how launch-bound each step is.

  gap_table        one row per seq x hidden x layers x mode x device x batch x precision x bidirectional:
                   median img/s of cudnn and naive, then per other impl (lstmcell, compiled, graphed)
                   `gap closed (<impl>)` = (impl - naive) / (cudnn - naive) of median img/s: 0 is naive's speed,
                   1 cudnn's, above 1 faster than cudnn, below 0 slower than naive. Empty, with the reason in
                   `note`, where cudnn or naive is missing or where their spreads overlap (each trial spans
                   median +- IQR/2; repeats are pooled into [lowest, highest]): there is no gap to close.
  gap_impls_table  the same rows long, one per impl: img/s, gap closed, `ceiling_frac` (the lead's record
                   field, shown when any trial has it), compile_s / capture_s, and from the profile trials of
                   the same variant (training steps) launches_per_step and gpu_busy_frac.
  gpu_busy_frac    the union of the device's kernel, memcpy and memset intervals over the profiled steps' wall
                   time (HTA's temporal breakdown: 1 - idle share), read off the chrome trace the store keeps
                   under RUN_DIR/profiles/<trial_id>/*.pt.trace.json.gz. The window runs from the first
                   ProfilerStep#N span's start to the last one's end (the profile syncs the device before the
                   first recorded step and at the end of the last, so no kernel of another step falls inside).
                   A launch-bound step leaves the GPU idle between small kernels: the signature graph capture
                   targets.

Precision: trials compare only within one precision. `precision` is the dtype when the recorded TF32 switches
agree with it (strict float32: both off); otherwise it names the mismatch (frame.prepare's float32+tf32-cudnn
for GPU results from before the precision axis, which ran cuDNN with TF32 under the label float32) or that they
were not recorded, so a TF32 cuDNN is never the reference of a strict-float32 loop. On CPU TF32 does not
exist: the dtype is the precision.
"""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from .frame import _missing, _sort, _timing_rows, _truthy, prepare
from .plots import IMPL_COLORS, _figure, _grid
from .tables import PIVOT_GROUP

GAP_KEYS = [k if k != "dtype" else "precision" for k in PIVOT_GROUP] + ["num_layers", "hidden_size"]
PROFILE_KEYS = [k for k in GAP_KEYS if k != "mode"]
REFERENCE = ("cudnn", "naive")
BUSY_CATS = ("kernel", "gpu_memcpy", "gpu_memset")
CLOSERS = ("compiled", "graphed")  # the impls meant to close the gap: the plot's bars
GOAL = 0.5  # the goal: compiled or graphed closes at least half the gap (GPU, row, hidden 128, train)


def closed_col(impl: str) -> str:
    return f"gap closed ({impl})"


# ---- precision ------------------------------------------------------------------------------------------

def precision_label(dtype, device_kind, tf32_cudnn, tf32_matmul) -> str:
    """dtype when the TF32 switches recorded agree with it; else the dtype and what the switches were. A dtype
    that frame.prepare already labelled (float32+tf32-cudnn: cuDNN ran TF32 under the label float32) stays."""
    if device_kind != "cuda" or "+" in str(dtype):
        return str(dtype)
    flags = (tf32_cudnn, tf32_matmul)
    if any(_missing(f) for f in flags):
        return f"{dtype} (TF32 unrecorded)"
    want = dtype == "tf32"
    if all(_truthy(f) == want for f in flags):
        return str(dtype)
    on = lambda f: "on" if _truthy(f) else "off"  # noqa: E731
    return f"{dtype} (TF32 cudnn {on(tf32_cudnn)}, matmul {on(tf32_matmul)})"


def with_precision(df: pd.DataFrame) -> pd.DataFrame:
    d = prepare(df).copy()
    d["precision"] = [precision_label(*r) for r in zip(d["dtype"], d["device_kind"], d["tf32_cudnn"],
                                                       d["tf32_matmul"])]
    return d


# ---- GPU busy fraction from a trace ---------------------------------------------------------------------

def union_length(intervals) -> float:
    """Total length covered by (start, end) intervals, overlaps counted once."""
    total, end = 0.0, -math.inf
    for s, e in sorted(intervals):
        if e <= end:
            continue
        total += e - max(s, end)
        end = e
    return total


def gpu_busy_frac(trace: dict) -> float | None:
    """Union of device activity over the profiled steps' wall time (see the module doc); None without
    ProfilerStep spans or without any device activity (a CPU trace)."""
    events = [e for e in trace.get("traceEvents", []) if isinstance(e, dict) and e.get("ph") == "X"]
    steps = [(float(e["ts"]), float(e["ts"]) + float(e.get("dur", 0))) for e in events
             if str(e.get("name", "")).startswith("ProfilerStep#") and e.get("cat") != "gpu_user_annotation"]
    busy = [(float(e["ts"]), float(e["ts"]) + float(e.get("dur", 0))) for e in events if e.get("cat") in BUSY_CATS]
    if not steps or not busy:
        return None
    lo, hi = min(s for s, _ in steps), max(e for _, e in steps)
    clipped = [(max(s, lo), min(e, hi)) for s, e in busy if min(e, hi) > max(s, lo)]
    return union_length(clipped) / (hi - lo) if hi > lo else None


def read_trace(path: Path) -> dict:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return json.load(f)


def busy_fracs(records: pd.DataFrame, metas: dict) -> pd.Series:
    """gpu_busy_frac of every profile record whose trace the store kept (NaN otherwise), aligned to records."""
    out = pd.Series(np.nan, index=records.index, dtype=float)
    if records.empty or "profile_dir" not in records.columns:
        return out
    for i, r in records.iterrows():
        run = metas.get(r.get("run_id"), {}).get("path")
        if r.get("mode") != "profile" or _missing(r.get("profile_dir")) or not run:
            continue
        fracs = []
        for path in sorted((Path(run) / str(r["profile_dir"])).glob("*.pt.trace.json*")):
            try:
                frac = gpu_busy_frac(read_trace(path))
            except (OSError, ValueError, KeyError, TypeError):  # a torn or foreign trace: no figure, no error
                frac = None
            if frac is not None:
                fracs.append(frac)
        if fracs:
            out[i] = float(np.median(fracs))
    return out


# ---- tables -----------------------------------------------------------------------------------------------

def _impl_stats(g: pd.DataFrame) -> dict:
    ips, iqr = g["img_per_s"].astype(float), g["img_per_s_iqr"].astype(float).fillna(0.0)
    return {"img_per_s": float(ips.median()), "lo": float((ips - iqr / 2).min()), "hi": float((ips + iqr / 2).max())}


def _gap_note(stats: dict) -> str | None:
    missing = [i for i in REFERENCE if i not in stats]
    if missing:
        return f"no {' or '.join(missing)} trial: no gap to measure"
    c, n = stats["cudnn"], stats["naive"]
    if c["lo"] <= n["hi"] and n["lo"] <= c["hi"]:
        return (f"cudnn ({c['img_per_s']:,.0f}) and naive ({n['img_per_s']:,.0f}) lie within each other's spread "
                f"(IQR): no gap to close")
    return None


def _long(df: pd.DataFrame) -> pd.DataFrame:
    """One row per GAP_KEYS x impl of the timing trials: img/s (median, spread), gap closed, note, and the medians
    of ceiling_frac, compile_s and capture_s."""
    d = with_precision(_timing_rows(df))
    rows = []
    for key, g in d.groupby(GAP_KEYS, dropna=False, sort=False):
        stats = {impl: _impl_stats(gi) for impl, gi in g.groupby("impl", sort=False)}
        note = _gap_note(stats)
        for impl, gi in g.groupby("impl", sort=False):
            s = stats[impl]
            closed = None
            if note is None and impl not in REFERENCE:
                c, n = stats["cudnn"]["img_per_s"], stats["naive"]["img_per_s"]
                closed = (s["img_per_s"] - n) / (c - n)
            rows.append({**dict(zip(GAP_KEYS, key)), "impl": impl, "img_per_s": s["img_per_s"],
                         "gap_closed": closed, "note": note,
                         **{f: gi[f].median() for f in ("ceiling_frac", "compile_s", "capture_s") if f in gi}})
    return pd.DataFrame(rows, columns=GAP_KEYS + ["impl", "img_per_s", "gap_closed", "note", "ceiling_frac",
                                                  "compile_s", "capture_s"])


def gap_table(df: pd.DataFrame) -> pd.DataFrame:
    """The headline: a row per GAP_KEYS, cudnn and naive img/s, the other impls' img/s and gap closed, note."""
    long = _long(df)
    if long.empty:
        return pd.DataFrame(columns=GAP_KEYS + list(REFERENCE) + ["note"])
    keys = [tuple(r) for r in long[GAP_KEYS].itertuples(index=False)]
    impls = sorted(long["impl"].unique(), key=lambda i: (_rank(i), i))
    rows = {}
    for k, r in zip(keys, long.itertuples(index=False)):
        row = rows.setdefault(k, {**dict(zip(GAP_KEYS, k)), "note": r.note})
        row[r.impl] = r.img_per_s
        if r.impl not in REFERENCE:
            row[closed_col(r.impl)] = r.gap_closed
    cols = GAP_KEYS + impls + [closed_col(i) for i in impls if i not in REFERENCE] + ["note"]
    return _sort(pd.DataFrame(list(rows.values())).reindex(columns=cols), GAP_KEYS)


def gap_impls_table(df: pd.DataFrame, busy: pd.Series | None = None) -> pd.DataFrame:
    """gap_table long (a row per impl) with ceiling_frac (when recorded), compile_s, capture_s, and from profile
    trials of the variant launches_per_step and gpu_busy_frac (shown on its train rows)."""
    long = _long(df)
    d = with_precision(df)
    d["gpu_busy_frac"] = busy if busy is not None else np.nan
    prof = d[(d["mode"] == "profile") & (d["status"] == "ok")]
    if not prof.empty:
        per = prof.groupby(PROFILE_KEYS + ["impl"], dropna=False)[["launches_per_step", "gpu_busy_frac"]].median()
        per = per.reset_index().assign(mode="train")
        long = long.merge(per, on=PROFILE_KEYS + ["impl", "mode"], how="outer")
    for col in ("ceiling_frac", "compile_s", "capture_s", "launches_per_step", "gpu_busy_frac"):
        if col in long.columns and long[col].isna().all():
            long = long.drop(columns=col)
    return _sort(long, GAP_KEYS + ["impl"])


def _rank(impl: str) -> int:
    order = ("cudnn", "naive", "lstmcell", "compiled", "graphed")
    return order.index(impl) if impl in order else len(order)


# ---- plot and section -------------------------------------------------------------------------------------

def plot_gap_closed(table: pd.DataFrame, path: Path) -> str | None:
    """Bars of gap closed by the impls that set out to close it (compiled, graphed) over seq/hidden (x), a
    panel per mode x device x precision; 0 = naive, 1 = cudnn, the dashed line the goal (half the gap).
    Writes nothing when neither has a figure (lstmcell's stays in the table)."""
    cols = [closed_col(i) for i in CLOSERS if closed_col(i) in table.columns]
    if table.empty or not cols or table[cols].notna().sum().sum() == 0:
        return None
    panels = list(table.groupby(["mode", "device", "precision"], dropna=False, sort=False))
    fig = _figure(5.5 * min(2, len(panels)), 3.6 * math.ceil(len(panels) / 2))
    width = 0.8 / len(cols)
    for ax, (key, g) in zip(_grid(fig, len(panels), 2), panels):
        labels = [f"{r.seq}/h{int(r.hidden_size)}x{int(r.num_layers)}" for r in g.itertuples(index=False)]
        for j, c in enumerate(cols):
            impl = c[len("gap closed ("):-1]
            ax.bar(np.arange(len(g)) + (j - (len(cols) - 1) / 2) * width, g[c].astype(float).fillna(0.0),
                   width, label=impl, color=IMPL_COLORS.get(impl))
        ax.axhline(0.0, color="tab:orange", lw=1)
        ax.axhline(1.0, color="tab:blue", lw=1)
        ax.axhline(GOAL, color="gray", lw=1, ls="--")
        ax.set_xticks(range(len(g)), labels, fontsize=7, rotation=30)
        ax.set_ylabel("gap closed (0 naive, 1 cudnn)")
        ax.set_title(" · ".join(str(k) for k in key), fontsize=8)
        ax.legend(fontsize=6)
    fig.savefig(path)
    return ""


def section(doc, report) -> None:
    """The report's "Closing the gap to cuDNN" section (build.SECTIONS)."""
    gap, impls = report.tables.get("gap"), report.tables.get("gap_impls")
    records = report.runs.records
    new_impls = "impl" in records.columns and records["impl"].isin(["compiled", "graphed"]).any()
    if gap is None or (gap.empty and not new_impls):
        return
    doc.h(2, "Closing the gap to cuDNN")
    if gap.empty:
        doc.p("No ok, non-noisy train or infer trial to compare (see Problems).")
        return
    doc.p("gap closed = (impl - naive) / (cudnn - naive) of median img/s within one precision: 0 is naive's "
          "speed, 1 cudnn's (above 1: faster than cudnn; below 0: slower than naive). Empty with a note where "
          "cudnn and naive lie within each other's spread (median +- IQR/2), or one is missing.")
    if "gap_closed" in report.plots:
        path, caption = report.plots["gap_closed"]
        doc.img(path, "plots/gap_closed.png", caption)
    doc.table(gap)
    doc.p("Per impl: ceiling_frac (share of the node's GEMM ceiling, where recorded), compile_s (compiled) and "
          "capture_s (graphed), and from profile trials of training steps launches_per_step and gpu_busy_frac "
          "(union of device activity over the profiled steps' wall time, from the trace).")
    doc.table(impls)
