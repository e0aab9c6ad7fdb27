"""Reports over one or more run directories: markdown, a self-contained HTML page, CSV tables and PNG plots.

    build_report([run_dir, ...], out_dir, compare=baseline_dir, command="lstm-bench report ...")

writes into out_dir:
    report.md        the tables as markdown, plots linked from plots/
    report.html      one file: the same tables as HTML, the plots embedded as base64 data URIs
    tables/<name>.csv every table, exactly as returned by the table functions below
    plots/<name>.png the plots that had data (a plot without data is skipped, and a stale PNG removed)

Every table function is a pure function of a DataFrame of trial records (as `results.load_run` returns, or
several runs concatenated), so it can be called and checked on its own. What they compute:

  throughput_table   median img_per_s of ok, non-noisy train/infer trials, one column per impl. Rows are
                     keyed by mode, seq label (patch -> "patch4"), device label, batch_size, dtype,
                     bidirectional, num_layers, hidden_size: num_layers is part of the row index (one table,
                     one CSV), and the markdown splits it into one sub-table per
                     (mode, seq, device, batch, dtype, bidirectional). Repeats and seeds of one spec are
                     pooled into the median; noisy trials never are (they are listed in problems_table).
  speedup_table      cudnn / naive and cudnn / lstmcell: ratios of those medians for matching specs.
  layer_scaling_table img_per_s against num_layers per impl (rows with at least two layer counts).
  gflops_table       as throughput_table, of gflop_per_s.
  accuracy_table     one row per ok accuracy trial, next to the train- and infer-mode throughput of the same
                     variant (seq, hidden, layers, impl, batch, dtype, bidirectional, hardware; threads ignored).
  kernel_table       per profiled variant and impl: time share by category (from kernels.parquet), launches
                     per step, top kernel.
  environment_table  one row per run: counts, hosts, CPU, GPU, versions, commit, dataset.
  problems_table     failed, infeasible and noisy trials with their error or noise reasons.
  compare_table      current vs a baseline run per trial spec, with a verdict (see `verdict`).

Device labels name the hardware, so runs from different machines are never pooled: "cuda (NVIDIA H100 80GB
HBM3)", "cpu (AMD EPYC, 2 threads)" (on CPU the torch thread count is part of the device).
Nothing here imports torch.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import HarnessError
from .results import RUN_JSON, TRIALS, load_run, read_jsonl

KERNELS = "kernels.parquet"
TIMING_MODES = ("train", "infer")
MODE_ORDER = {"train": 0, "infer": 1, "accuracy": 2, "profile": 3}
IMPL_ORDER = ("cudnn", "naive", "lstmcell")
CATEGORIES = ("gemm", "cudnn-rnn", "elementwise", "reduction", "memcpy", "other")
STATUS_ORDER = {"failed": 0, "infeasible": 1}

# row keys of the throughput pivots; GROUP is what one markdown sub-table / one plot panel holds fixed
PIVOT_GROUP = ["mode", "seq", "device", "batch_size", "dtype", "bidirectional"]
PIVOT_INDEX = PIVOT_GROUP + ["num_layers", "hidden_size"]
# a variant on a piece of hardware, whatever the mode (accuracy rows join throughput rows on these)
JOIN_KEYS = ["hardware", "seq", "hidden_size", "num_layers", "impl", "batch_size", "dtype", "bidirectional"]
# compare falls back to these when trial_ids differ
FALLBACK_KEYS = ["seq", "hidden_size", "num_layers", "impl", "batch_size", "dtype", "bidirectional", "mode",
                 "device_kind"]
KERNEL_KEYS = ["device", "seq", "hidden_size", "num_layers", "batch_size", "dtype", "bidirectional", "impl"]

FIELDS = ["run_id", "trial_id", "seq", "patch_size", "hidden_size", "num_layers", "impl", "batch_size", "dtype",
          "bidirectional", "mode", "device", "threads", "repeat", "status", "img_per_s", "img_per_s_iqr",
          "rel_iqr", "gflop_per_s", "lstm_gflop_per_batch", "noisy", "noise_reasons", "error", "dataset",
          "hostname", "node_ip", "cpu_model", "gpu_name", "gpu_driver", "cuda_version", "cudnn_version",
          "torch_version", "torchvision_version", "ray_version", "python_version", "git_commit", "suite"]
NUMERIC = ["img_per_s", "img_per_s_iqr", "rel_iqr", "gflop_per_s", "lstm_gflop_per_batch", "test_acc",
           "best_test_acc", "train_img_per_s", "launches_per_step", "gemm_share", "epochs_run", "op_time_ms_per_step"]
INT_KEYS = ["hidden_size", "num_layers", "batch_size", "patch_size", "threads", "repeat"]


# ---- loading ----------------------------------------------------------------------------------------------

@dataclass
class RunSet:
    """Trial records of one or more runs (concatenated, `run_id` set), their kernels, and per-run metadata."""
    records: pd.DataFrame
    kernels: pd.DataFrame
    metas: dict[str, dict] = field(default_factory=dict)   # run_id -> run.json + path, unreadable_lines


def load_runs(run_dirs) -> RunSet:
    frames, kframes, metas = [], [], {}
    for run_dir in run_dirs:
        run_dir = Path(run_dir)
        df = load_run(run_dir)          # HarnessError for a missing directory
        run_id = run_dir.name
        if run_id in metas:            # two runs with the same folder name: tell them apart
            run_id = f"{run_dir.parent.name}/{run_dir.name}"
            df["run_id"] = run_id
        try:
            meta = json.loads((run_dir / RUN_JSON).read_text())
            if not isinstance(meta, dict):
                meta = {}
        except (OSError, ValueError):
            meta = {}
        _, bad = read_jsonl(run_dir / TRIALS)
        meta.update(path=str(run_dir), unreadable_lines=bad)
        metas[run_id] = meta
        if len(df.columns) > 1 and not df.empty:
            frames.append(df)
        kpath = run_dir / KERNELS
        if kpath.exists():
            try:
                k = pd.read_parquet(kpath)
            except Exception as exc:  # a torn or foreign file: say so, do not stop the report
                raise HarnessError(f"{kpath}: unreadable ({type(exc).__name__}: {exc})") from None
            k.insert(0, "run_id", run_id)
            kframes.append(k)
    records = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["run_id"])
    kernels = pd.concat(kframes, ignore_index=True) if kframes else pd.DataFrame()
    return RunSet(records=records, kernels=kernels, metas=metas)


def _obj(v):
    """A nested field as a Python object (trials.parquet stores dicts and lists as JSON text)."""
    if isinstance(v, str):
        try:
            return json.loads(v)
        except ValueError:
            return None
    if isinstance(v, np.ndarray):
        return v.tolist()
    return v


def _missing(v) -> bool:
    if v is None or v is pd.NA:
        return True
    try:
        return isinstance(v, float) and math.isnan(v)
    except TypeError:
        return False


def _truthy(v) -> bool:
    if _missing(v):
        return False
    if isinstance(v, str):
        return v.strip().lower() in ("true", "1", "yes")
    return bool(v)


def seq_label(seq, patch_size) -> str:
    if _missing(seq):
        return "?"
    if seq == "patch" and not _missing(patch_size):
        return f"patch{int(patch_size)}"
    return str(seq)


def prepare(df: pd.DataFrame) -> pd.DataFrame:
    """Normalized copy of trial records: every expected column present, `seq` as its label ("patch4"),
    `device` as a hardware label, `hardware` (device without threads), `device_kind` (cpu/cuda), `variant`
    (the Variant label), numbers as numbers, `noisy` as bool. Idempotent."""
    if "hardware" in df.columns and "variant" in df.columns:
        return df
    df = df.copy()
    for col in FIELDS + NUMERIC:
        if col not in df.columns:
            df[col] = np.nan
    df = df.astype({c: object for c in ("device", "seq", "impl", "dtype", "mode", "status")})
    df["status"] = [("unknown" if _missing(s) else str(s)) for s in df["status"]]
    df["noisy"] = [_truthy(v) for v in df["noisy"]]
    df["bidirectional"] = [_truthy(v) for v in df["bidirectional"]]
    for col in NUMERIC:
        df[col] = pd.to_numeric(df[col], errors="coerce")
    for col in INT_KEYS:
        df[col] = pd.to_numeric(df[col], errors="coerce").astype("Int64")
    for col in ("impl", "dtype", "mode"):
        df[col] = ["?" if _missing(v) else str(v) for v in df[col]]
    kind, hardware, device = [], [], []
    for d, gpu, cpu, threads in zip(df["device"], df["gpu_name"], df["cpu_model"], df["threads"]):
        k = "cuda" if isinstance(d, str) and d.startswith("cuda") else ("?" if _missing(d) else str(d))
        hw = gpu if k == "cuda" else cpu
        hw_label = f"{k} ({hw})" if not _missing(hw) and hw else k
        kind.append(k)
        hardware.append(hw_label)
        if k == "cpu" and not _missing(threads):
            inner = f"{hw}, " if not _missing(hw) and hw else ""
            device.append(f"cpu ({inner}{int(threads)} thread{'s' if int(threads) != 1 else ''})")
        else:
            device.append(hw_label)
    df["device_kind"], df["hardware"], df["device"] = kind, hardware, device
    df["seq"] = [seq_label(s, p) for s, p in zip(df["seq"], df["patch_size"])]
    df["variant"] = [
        f"{s}/h{_i(h)}x{_i(n)}{'-bi' if bi else ''}/{impl}/b{_i(b)}/{dtype}"
        for s, h, n, bi, impl, b, dtype in zip(df["seq"], df["hidden_size"], df["num_layers"], df["bidirectional"],
                                               df["impl"], df["batch_size"], df["dtype"])]
    return df


def _i(v) -> str:
    return "?" if _missing(v) else str(int(v))


# ---- sorting helpers --------------------------------------------------------------------------------------

def _seq_rank(s) -> float:
    base = {"row": 0, "column": 1, "pixel": 2, "cnn": 4}
    if isinstance(s, str) and s.startswith("patch") and s[5:].isdigit():
        return 3 + int(s[5:]) / 1000
    return base.get(s, 9)


def _impl_rank(s) -> float:
    return IMPL_ORDER.index(s) if s in IMPL_ORDER else 9


def _sort(t: pd.DataFrame, cols) -> pd.DataFrame:
    cols = [c for c in cols if c in t.columns]
    if t.empty or not cols:
        return t.reset_index(drop=True)

    def key(s: pd.Series):
        if s.name == "mode":
            return s.map(lambda v: MODE_ORDER.get(v, 99))
        if s.name == "seq":
            return s.map(_seq_rank)
        if s.name == "impl":
            return s.map(_impl_rank)
        if s.name == "status":
            return s.map(lambda v: STATUS_ORDER.get(v, 5))
        return s
    return t.sort_values(cols, key=key, kind="stable", na_position="last").reset_index(drop=True)


def _impl_columns(cols) -> list:
    return sorted(cols, key=lambda c: (_impl_rank(c), str(c)))


def _timing_rows(df: pd.DataFrame, metric: str = "img_per_s", include_noisy: bool = False) -> pd.DataFrame:
    d = prepare(df)
    keep = (d["status"] == "ok") & d["mode"].isin(TIMING_MODES) & d[metric].notna()
    if not include_noisy:
        keep &= ~d["noisy"].astype(bool)
    return d[keep]


# ---- tables -----------------------------------------------------------------------------------------------

def throughput_table(df: pd.DataFrame, metric: str = "img_per_s", include_noisy: bool = False) -> pd.DataFrame:
    """Median `metric` per spec: columns PIVOT_INDEX, then one column per impl (cudnn, naive, lstmcell, ...)."""
    d = _timing_rows(df, metric, include_noisy)
    if d.empty:
        return pd.DataFrame(columns=PIVOT_INDEX)
    t = d.groupby(PIVOT_INDEX + ["impl"], dropna=False, sort=False)[metric].median().unstack("impl")
    t = t[_impl_columns(t.columns)]
    t.columns.name = None
    return _sort(t.reset_index(), PIVOT_INDEX)


def gflops_table(df: pd.DataFrame) -> pd.DataFrame:
    """Achieved GFLOP/s (the LSTM GEMMs' FLOPs per second, gflop_per_s) per spec and impl, medians."""
    return throughput_table(df, metric="gflop_per_s")


def speedup_table(df: pd.DataFrame) -> pd.DataFrame:
    """cudnn over naive and over lstmcell: ratios of median img_per_s of the same spec (seq, patch, hidden,
    layers, batch, dtype, bidirectional, mode, device). Columns PIVOT_INDEX, the impls' img/s, the ratios."""
    t = throughput_table(df)
    others = [c for c in ("naive", "lstmcell") if c in t.columns]
    if "cudnn" not in t.columns or not others:
        return pd.DataFrame(columns=PIVOT_INDEX + ["cudnn/naive", "cudnn/lstmcell"])
    out = t[PIVOT_INDEX + ["cudnn"] + others].copy()
    ratios = []
    for other in others:
        name = f"cudnn/{other}"
        out[name] = out["cudnn"] / out[other]
        ratios.append(name)
    return out[out[ratios].notna().any(axis=1)].reset_index(drop=True)


def layer_scaling_table(df: pd.DataFrame) -> pd.DataFrame:
    """img_per_s against num_layers per impl: columns PIVOT_GROUP, hidden_size, impl, layers=1, layers=2, ...,
    and deepest/shallowest (img/s at the most layers over img/s at the fewest). Only rows with >= 2 depths."""
    d = _timing_rows(df)
    keys = PIVOT_GROUP + ["hidden_size", "impl"]
    if d.empty:
        return pd.DataFrame(columns=keys)
    t = d.groupby(keys + ["num_layers"], dropna=False)["img_per_s"].median().unstack("num_layers")
    t = t[sorted(t.columns)]
    t = t[t.notna().sum(axis=1) >= 2]
    if t.empty:
        return pd.DataFrame(columns=keys)
    ratio = [row.dropna().iloc[-1] / row.dropna().iloc[0] for _, row in t.iterrows()]
    t.columns = [f"layers={int(n)}" for n in t.columns]
    t["deepest/shallowest"] = ratio
    return _sort(t.reset_index(), keys)


def _pct(target: float) -> str:
    return f"{target * 100:g}%"


def accuracy_table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per ok accuracy trial: variant, recipe, test/best accuracy, time to each target accuracy
    (time_to_<pct>_s; empty when not reached), img/s measured while training (train_img_per_s), and the
    median train- and infer-mode throughput of the same variant on the same hardware from any of the runs
    (throughput_train_img_per_s, throughput_infer_img_per_s)."""
    d = prepare(df)
    acc = d[(d["mode"] == "accuracy") & (d["status"] == "ok")]
    base_cols = ["run_id", "trial_id", "seq", "device", "hidden_size", "num_layers", "impl", "batch_size", "dtype",
                 "bidirectional"]
    recipe = [c for c in ("optimizer", "lr", "schedule", "augment", "epochs") if c in d.columns]
    if acc.empty:
        return pd.DataFrame(columns=base_cols + recipe + ["test_acc", "best_test_acc"])
    targets = set()
    ttt = []
    for v in acc.get("time_to_target_s", pd.Series([None] * len(acc), index=acc.index)):
        m = _obj(v) if not _missing(v) else None
        m = {float(k): t for k, t in m.items()} if isinstance(m, dict) else {}
        targets |= set(m)
        ttt.append(m)
    stopped = ["stopped_by"] if "stopped_by" in acc.columns else []
    out = acc[base_cols + recipe + ["epochs_run"] + stopped + ["test_acc", "best_test_acc"]].copy()
    for t in sorted(targets):
        out[f"time_to_{_pct(t)}_s"] = [pd.to_numeric(m.get(t), errors="coerce") if not _missing(m.get(t)) else np.nan
                                       for m in ttt]
    out["train_img_per_s"] = acc["train_img_per_s"].to_numpy()
    timing = _timing_rows(d)
    for mode in TIMING_MODES:
        med = timing[timing["mode"] == mode].groupby(JOIN_KEYS, dropna=False)["img_per_s"].median()
        col = f"throughput_{mode}_img_per_s"
        out[col] = [med.get(tuple(k), np.nan) for k in acc[JOIN_KEYS].itertuples(index=False, name=None)]
    return _sort(out, ["seq", "device", "hidden_size", "num_layers", "impl", "run_id"])


def kernel_table(df: pd.DataFrame, kernels: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per profiled variant (KERNEL_KEYS): trials, share_<category> of kernel time (device time, or CPU time
    where no device time was recorded: time_source says which; shares sum to 1), launches_per_step and
    top_kernel (from the profile records, else from kernels.parquet), gemm_share as the record gives it."""
    d = prepare(df)
    prof = d[(d["mode"] == "profile") & (d["status"] == "ok")]
    k = kernels if kernels is not None else pd.DataFrame()
    if not k.empty and "trial_id" in k.columns:
        on = ["run_id", "trial_id"] if "run_id" in k.columns else ["trial_id"]
        k = k.merge(d[on + KERNEL_KEYS].drop_duplicates(on), on=on, how="inner")
    else:
        k = pd.DataFrame()
    if prof.empty and k.empty:
        return pd.DataFrame(columns=KERNEL_KEYS + ["trials", "launches_per_step", "top_kernel"])
    rows = {}
    for key, g in prof.groupby(KERNEL_KEYS, dropna=False):
        tk = g["top_kernel"].dropna() if "top_kernel" in g else pd.Series(dtype=object)
        rows[key] = {"trials": len(g), "launches_per_step": g["launches_per_step"].median(),
                     "gemm_share": g["gemm_share"].median(),
                     "op_time_ms_per_step": g["op_time_ms_per_step"].median(),
                     "top_kernel": tk.mode().iloc[0] if not tk.empty else np.nan}
    if not k.empty:
        for col in ("self_device_time_us", "self_cpu_time_us", "launches_per_step", "calls"):
            k[col] = pd.to_numeric(k[col], errors="coerce") if col in k.columns else np.nan
        k["category"] = k["category"].fillna("other") if "category" in k.columns else "other"
        for key, g in k.groupby(KERNEL_KEYS, dropna=False):
            row = rows.setdefault(key, {"trials": g["trial_id"].nunique()})
            source = "self_device_time_us" if g["self_device_time_us"].fillna(0).sum() > 0 else "self_cpu_time_us"
            time = g[source].fillna(0)
            total = time.sum()
            row["time_source"] = "device" if source == "self_device_time_us" else "cpu"
            by_cat = time.groupby(g["category"]).sum()
            for cat in list(CATEGORIES) + sorted(set(by_cat.index) - set(CATEGORIES)):
                if cat in by_cat.index:
                    row[f"share_{cat}"] = by_cat[cat] / total if total > 0 else np.nan
            if _missing(row.get("launches_per_step")):
                per_trial = g.groupby("trial_id")["launches_per_step"].sum(min_count=1)
                row["launches_per_step"] = per_trial.median()
            if _missing(row.get("top_kernel")) and total > 0 and "name" in g.columns:
                row["top_kernel"] = g.loc[time.idxmax(), "name"]
    out = pd.DataFrame([{**dict(zip(KERNEL_KEYS, key)), **vals} for key, vals in rows.items()])
    shares = [f"share_{c}" for c in CATEGORIES if f"share_{c}" in out.columns]
    shares += sorted(c for c in out.columns if c.startswith("share_") and c not in shares)
    if shares:
        out[shares] = out[shares].fillna(0.0)
    rest = [c for c in ("trials", "time_source") if c in out.columns] + shares + \
        [c for c in ("launches_per_step", "op_time_ms_per_step", "gemm_share", "top_kernel") if c in out.columns]
    return _sort(out[KERNEL_KEYS + rest], KERNEL_KEYS)


ENV_FIELDS = ["hostname", "node_ip", "cpu_model", "gpu_name", "gpu_driver", "cuda_version", "cudnn_version",
              "torch_version", "torchvision_version", "ray_version", "python_version", "git_commit", "dataset"]


def _distinct(values) -> str | float:
    seen = []
    for v in values:
        if _missing(v) or v == "":
            continue
        s = str(int(v)) if isinstance(v, float) and v.is_integer() else str(v)
        if s not in seen:
            seen.append(s)
    return "; ".join(sorted(seen)) if seen else np.nan


def environment_table(df: pd.DataFrame, metas: dict[str, dict] | None = None) -> pd.DataFrame:
    """One row per run: suite, run status, start/end, planned/recorded trials and their outcome counts, trials
    missing (planned but no record), unreadable lines, then each environment field (distinct values joined
    with '; ' when the trials of a run differ, e.g. several hosts)."""
    d = prepare(df)
    metas = metas or {}
    run_ids = list(metas) + [r for r in d["run_id"].dropna().unique() if r not in metas]
    rows = []
    for run_id in run_ids:
        meta = metas.get(run_id, {})
        r = d[d["run_id"] == run_id]
        planned = meta.get("planned")
        planned = planned if isinstance(planned, (int, float)) and not isinstance(planned, bool) else np.nan
        row = {"run_id": run_id,
               "suite": meta.get("suite") or _distinct(r["suite"]),
               "run_status": meta.get("status", np.nan),
               "started_at": meta.get("started_at", np.nan),
               "ended_at": meta.get("ended_at", np.nan),
               "planned": planned,
               "recorded": len(r),
               "ok": int((r["status"] == "ok").sum()),
               "failed": int((r["status"] == "failed").sum()),
               "infeasible": int((r["status"] == "infeasible").sum()),
               "noisy": int(((r["status"] == "ok") & r["noisy"]).sum()),
               "missing": max(int(planned) - len(r), 0) if not _missing(planned) else np.nan,
               "unreadable_lines": meta.get("unreadable_lines", 0)}
        for f in ENV_FIELDS:
            row[f] = _distinct(r[f])
        rows.append(row)
    cols = ["run_id", "suite", "run_status", "started_at", "ended_at", "planned", "recorded", "ok", "failed",
            "infeasible", "noisy", "missing", "unreadable_lines"] + ENV_FIELDS
    return pd.DataFrame(rows, columns=cols)


def problems_table(df: pd.DataFrame) -> pd.DataFrame:
    """Every trial that is not a clean result: failed, infeasible (or any other non-ok status), and ok but
    noisy. `problem` is the status or "noisy"; `reason` the error or the noise reasons."""
    d = prepare(df)
    bad = d[(d["status"] != "ok") | d["noisy"]]
    cols = ["run_id", "problem", "trial_id", "mode", "device", "variant", "img_per_s", "rel_iqr", "reason"]
    if bad.empty:
        return pd.DataFrame(columns=cols)
    out = bad.assign(
        problem=[s if s != "ok" else "noisy" for s in bad["status"]],
        reason=[(e if s != "ok" else n) for s, e, n in zip(bad["status"], bad["error"], bad["noise_reasons"])])
    out["reason"] = [np.nan if _missing(v) or v == "" else str(v) for v in out["reason"]]
    out = out[cols]
    order = {"failed": 0, "infeasible": 1, "noisy": 9}
    out = out.assign(_o=out["problem"].map(lambda p: order.get(p, 5)))
    out = out.sort_values(["_o", "run_id", "mode", "variant"], key=lambda s: s.map(lambda v: MODE_ORDER.get(v, 99))
                          if s.name == "mode" else s, kind="stable")
    return out.drop(columns="_o").reset_index(drop=True)


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


def _key(v):
    return None if _missing(v) else (int(v) if isinstance(v, (float, np.floating)) and float(v).is_integer() else v)


def unmatched_baseline(df: pd.DataFrame, baseline: pd.DataFrame, comparison: pd.DataFrame) -> pd.DataFrame:
    """Baseline train/infer trials that no current trial was compared with."""
    base = prepare(baseline)
    base = base[base["mode"].isin(TIMING_MODES)]
    used = set(comparison["baseline_trial_id"].dropna()) if "baseline_trial_id" in comparison else set()
    return base[~base["trial_id"].isin(used)]


# ---- plots (matplotlib's Figure directly: no pyplot, no global backend switch; Agg canvas) ---------------

def _figure(w: float, h: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(w, h), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _grid(fig, n: int, ncols: int):
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in axes[n:]:
        ax.set_visible(False)
    return axes[:n]


IMPL_COLORS = {"cudnn": "tab:blue", "naive": "tab:orange", "lstmcell": "tab:green"}
MAX_PANELS = 24


def _group_title(key: dict) -> str:
    parts = [str(key.get("mode", "")), str(key.get("seq", "")), str(key.get("device", ""))]
    if "batch_size" in key:
        parts.append(f"b{_i(key['batch_size'])} {key.get('dtype', '')}{' bi' if key.get('bidirectional') else ''}")
    return " · ".join(p for p in parts if p)


def plot_throughput(table: pd.DataFrame, path: Path) -> str | None:
    """img/s vs hidden size, a line per impl (and per num_layers: solid, dashed, ...), log y; a panel per
    PIVOT_GROUP. Returns a note (e.g. panels left out) or None; writes nothing without data."""
    impls = [c for c in table.columns if c not in PIVOT_INDEX]
    if table.empty or not impls:
        return None
    from matplotlib.ticker import NullLocator
    groups = list(table.groupby(PIVOT_GROUP, dropna=False, sort=False))
    shown = groups[:MAX_PANELS]
    fig = _figure(4.2 * min(3, len(shown)), 3.2 * math.ceil(len(shown) / 3))
    styles = ["-", "--", ":", "-."]
    for ax, (key, g) in zip(_grid(fig, len(shown), 3), shown):
        layers = sorted(g["num_layers"].dropna().unique())
        for impl in impls:
            for j, n in enumerate(layers):
                s = g[g["num_layers"] == n][["hidden_size", impl]].dropna().sort_values("hidden_size")
                if s.empty:
                    continue
                ax.plot(s["hidden_size"].astype(float), s[impl], styles[j % 4], marker="o", ms=3,
                        color=IMPL_COLORS.get(impl), label=f"{impl} L{int(n)}")
        ax.set_xscale("log", base=2)
        hs = sorted(int(h) for h in g["hidden_size"].dropna().unique())
        ax.set_xticks(hs, [str(h) for h in hs])
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_yscale("log")
        ax.set_xlabel("hidden size")
        ax.set_ylabel("img/s")
        ax.set_title(_group_title(dict(zip(PIVOT_GROUP, key))), fontsize=8)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=6)
    fig.savefig(path)
    return f"first {MAX_PANELS} of {len(groups)} panels" if len(groups) > MAX_PANELS else ""


def plot_speedup_heatmap(table: pd.DataFrame, path: Path, other: str = "naive") -> str | None:
    """cudnn/<other> as a heatmap over seq (rows) x hidden size (columns); a panel per mode, device, dtype,
    num_layers (geometric mean over any remaining keys, e.g. batch sizes). Blue: cudnn faster."""
    col = f"cudnn/{other}"
    if table.empty or col not in table.columns or table[col].notna().sum() == 0:
        return None
    from matplotlib.colors import TwoSlopeNorm
    d = table[table[col].notna() & (table[col] > 0)].copy()
    d["log2"] = np.log2(d[col].astype(float))
    panels = list(d.groupby(["mode", "device", "dtype", "num_layers"], dropna=False, sort=False))[:MAX_PANELS]
    lim = max(1.0, float(d["log2"].abs().max()))
    norm = TwoSlopeNorm(vmin=-lim, vcenter=0.0, vmax=lim)
    fig = _figure(4.5 * min(2, len(panels)), 3.4 * math.ceil(len(panels) / 2))
    im = None
    for ax, (key, g) in zip(_grid(fig, len(panels), 2), panels):
        m = g.groupby(["seq", "hidden_size"])["log2"].mean().unstack("hidden_size")
        m = m.loc[sorted(m.index, key=_seq_rank), sorted(m.columns)]
        im = ax.imshow(m.to_numpy(dtype=float), cmap="RdBu", norm=norm, aspect="auto")
        ax.set_xticks(range(len(m.columns)), [str(int(h)) for h in m.columns])
        ax.set_yticks(range(len(m.index)), list(m.index))
        ax.set_xlabel("hidden size")
        for (i, j), v in np.ndenumerate(m.to_numpy(dtype=float)):
            if not math.isnan(v):
                ax.text(j, i, f"{2 ** v:.1f}x", ha="center", va="center", fontsize=7,
                        color="white" if abs(v) > 0.6 * lim else "black")
        mode, device, dtype, layers = key
        ax.set_title(f"{col} · {mode} · {device} · {dtype} · L{_i(layers)}", fontsize=8)
    if im is not None:
        cb = fig.colorbar(im, ax=fig.axes, shrink=0.8)
        cb.set_label(f"log2({col})")
    fig.savefig(path)
    return ""


def plot_accuracy_curves(df: pd.DataFrame, path: Path) -> str | None:
    """test_acc against epoch and against elapsed seconds, a line per ok accuracy trial."""
    d = prepare(df)
    acc = d[(d["mode"] == "accuracy") & (d["status"] == "ok")]
    curves = []
    multi = d["run_id"].nunique() > 1
    for _, r in acc.iterrows():
        curve = _obj(r["curve"]) if "curve" in r and not _missing(r["curve"]) else None
        pts = [p for p in (curve or []) if isinstance(p, dict) and not _missing(p.get("test_acc"))]
        if pts:
            curves.append((r["variant"] + (f" [{r['run_id']}]" if multi else ""), pts))
    if not curves:
        return None
    fig = _figure(11, 4)
    ax1, ax2 = fig.subplots(1, 2)
    for label, pts in curves:
        ax1.plot([p.get("epoch") for p in pts], [p["test_acc"] for p in pts], marker="o", ms=3, label=label)
        if all(not _missing(p.get("elapsed_s")) for p in pts):
            ax2.plot([p["elapsed_s"] for p in pts], [p["test_acc"] for p in pts], marker="o", ms=3, label=label)
    ax1.set_xlabel("epoch")
    ax2.set_xlabel("elapsed s")
    ax2.set_xscale("log")
    for ax in (ax1, ax2):
        ax.set_ylabel("test accuracy")
        ax.grid(True, alpha=0.3)
    ax1.legend(fontsize=6)
    ax1.set_title("test accuracy per epoch", fontsize=9)
    ax2.set_title("time to accuracy", fontsize=9)
    fig.savefig(path)
    return ""


def plot_kernel_breakdown(table: pd.DataFrame, path: Path) -> str | None:
    """Stacked bars of kernel time share by category, a bar per row of kernel_table."""
    shares = [c for c in table.columns if c.startswith("share_")]
    if table.empty or not shares:
        return None
    t = table[table[shares].sum(axis=1) > 0]
    if t.empty:
        return None
    labels = [f"{r['impl']}\n{r['seq']}/h{_i(r['hidden_size'])}x{_i(r['num_layers'])}" for _, r in t.iterrows()]
    fig = _figure(max(5.0, 0.9 * len(t) + 2.5), 4)
    ax = fig.subplots()
    bottom = np.zeros(len(t))
    cmap = {"gemm": "tab:blue", "cudnn-rnn": "tab:purple", "elementwise": "tab:orange", "reduction": "tab:green",
            "memcpy": "tab:red", "other": "tab:gray"}
    for c in shares:
        vals = t[c].to_numpy(dtype=float)
        ax.bar(range(len(t)), vals, bottom=bottom, label=c[len("share_"):], color=cmap.get(c[len("share_"):]))
        bottom += vals
    ax.set_xticks(range(len(t)), labels, fontsize=7)
    ax.set_ylabel("share of kernel time")
    ax.set_ylim(0, 1.0)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.set_title("kernel time by category", fontsize=9)
    fig.savefig(path)
    return ""


# ---- rendering --------------------------------------------------------------------------------------------

COUNT_COLS = {"hidden_size", "num_layers", "batch_size", "patch_size", "threads", "repeat", "planned", "recorded",
              "ok", "failed", "infeasible", "noisy", "missing", "unreadable_lines", "epochs", "epochs_run", "trials",
              "launches_per_step"}


def fmt_cell(col: str, v) -> str:
    if _missing(v):
        return ""
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        v = float(v)
        if math.isinf(v):
            return str(v)
        if col in COUNT_COLS and v.is_integer():
            return str(int(v))
        if "/" in col or col == "ratio":
            return f"{v:.2f}"
        if col.startswith("share_") or col.endswith("_share") or col.endswith("acc") or col == "rel_iqr":
            return f"{v:.3f}"
        if col.endswith("_s") and not col.endswith("per_s"):
            return f"{v:,.1f}"
        if col == "lr":
            return f"{v:g}"
        a = abs(v)
        if a >= 1000:
            return f"{v:,.0f}"
        if a >= 100:
            return f"{v:.0f}"
        if a >= 1:
            return f"{v:.2f}"
        return f"{v:.3g}"
    return str(v)


def _numeric_col(s: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s)


def markdown_table(df: pd.DataFrame) -> str:
    """A GitHub-flavoured markdown table (numbers right-aligned); no tabulate needed."""
    if df.empty:
        return "(none)"
    cols = list(df.columns)
    cells = [[fmt_cell(str(c), v).replace("|", "\\|").replace("\n", " ") for c, v in zip(cols, row)]
             for row in df.itertuples(index=False, name=None)]
    head = [str(c).replace("|", "\\|") for c in cols]
    align = ["---:" if _numeric_col(df[c]) else "---" for c in cols]
    lines = ["| " + " | ".join(head) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(r) + " |" for r in cells]
    return "\n".join(lines)


def html_table(df: pd.DataFrame) -> str:
    if df.empty:
        return "<p><em>(none)</em></p>"
    cols = list(df.columns)
    num = [_numeric_col(df[c]) for c in cols]
    out = ["<table>", "<thead><tr>" + "".join(f"<th>{html.escape(str(c))}</th>" for c in cols) + "</tr></thead>",
           "<tbody>"]
    for row in df.itertuples(index=False, name=None):
        tds = "".join(("<td class=\"n\">" if n else "<td>") + html.escape(fmt_cell(str(c), v)) + "</td>"
                      for c, v, n in zip(cols, row, num))
        out.append(f"<tr>{tds}</tr>")
    out.append("</tbody></table>")
    return "\n".join(out)


@dataclass
class Doc:
    """A report as a list of blocks, rendered both to markdown and to HTML."""
    blocks: list = field(default_factory=list)

    def h(self, level: int, text: str):
        self.blocks.append(("h", level, text))

    def p(self, text: str):
        self.blocks.append(("p", text))

    def code(self, text: str):
        self.blocks.append(("code", text))

    def items(self, lines: list[str]):
        self.blocks.append(("ul", lines))

    def table(self, df: pd.DataFrame):
        self.blocks.append(("table", df))

    def img(self, path: Path, rel: str, caption: str):
        self.blocks.append(("img", path, rel, caption))

    def markdown(self) -> str:
        out = []
        for b in self.blocks:
            if b[0] == "h":
                out.append("#" * b[1] + " " + b[2])
            elif b[0] == "p":
                out.append(b[1])
            elif b[0] == "code":
                out.append("```\n" + b[1] + "\n```")
            elif b[0] == "ul":
                out.append("\n".join(f"- {x}" for x in b[1]))
            elif b[0] == "table":
                out.append(markdown_table(b[1]))
            elif b[0] == "img":
                out.append(f"![{b[3]}]({b[2]})")
        return "\n\n".join(out) + "\n"

    def html(self, title: str) -> str:
        out = ["<!DOCTYPE html>", "<html><head><meta charset=\"utf-8\">", f"<title>{html.escape(title)}</title>",
               "<style>body{font-family:sans-serif;margin:2em;max-width:1400px}"
               "table{border-collapse:collapse;margin:0.5em 0 1.5em;font-size:13px}"
               "th,td{border:1px solid #ccc;padding:2px 6px}th{background:#f0f0f0}td.n{text-align:right}"
               "tbody tr:nth-child(even){background:#fafafa}img{max-width:100%}"
               "pre{background:#f4f4f4;padding:0.5em;white-space:pre-wrap}</style>", "</head><body>"]
        for b in self.blocks:
            if b[0] == "h":
                out.append(f"<h{b[1]}>{html.escape(b[2])}</h{b[1]}>")
            elif b[0] == "p":
                out.append(f"<p>{html.escape(b[1])}</p>")
            elif b[0] == "code":
                out.append(f"<pre>{html.escape(b[1])}</pre>")
            elif b[0] == "ul":
                out.append("<ul>" + "".join(f"<li>{html.escape(x)}</li>" for x in b[1]) + "</ul>")
            elif b[0] == "table":
                out.append(html_table(b[1]))
            elif b[0] == "img":
                data = base64.b64encode(Path(b[1]).read_bytes()).decode("ascii")
                out.append(f"<figure><img alt=\"{html.escape(b[3])}\" src=\"data:image/png;base64,{data}\">"
                           f"<figcaption>{html.escape(b[3])}</figcaption></figure>")
        out.append("</body></html>")
        return "\n".join(out) + "\n"


def _split(doc: Doc, table: pd.DataFrame, by: list[str]):
    """One sub-table per distinct value of `by` (those columns dropped from it), under a small heading."""
    if table.empty:
        doc.table(table)
        return
    for key, g in table.groupby(by, dropna=False, sort=False):
        doc.h(4, _group_title(dict(zip(by, key))))
        doc.table(g.drop(columns=by).reset_index(drop=True))


# ---- the report -------------------------------------------------------------------------------------------

TABLE_NAMES = ("environment", "problems", "throughput", "speedup", "layer_scaling", "gflops", "accuracy",
               "kernels", "compare")


def compute_tables(runs: RunSet, baseline: RunSet | None = None) -> dict[str, pd.DataFrame]:
    df = prepare(runs.records)
    tables = {
        "environment": environment_table(df, runs.metas),
        "problems": problems_table(df),
        "throughput": throughput_table(df),
        "speedup": speedup_table(df),
        "layer_scaling": layer_scaling_table(df),
        "gflops": gflops_table(df),
        "accuracy": accuracy_table(df),
        "kernels": kernel_table(df, runs.kernels),
    }
    if baseline is not None:
        tables["compare"] = compare_table(df, baseline.records)
    return tables


def build_report(run_dirs, out_dir, compare=None, command: str | None = None) -> Path:
    """Write report.md, report.html, tables/*.csv and plots/*.png for the runs into out_dir; returns the
    report.md path. `compare`: a baseline run directory; `command`: the command line, named in the header."""
    run_dirs = [Path(p) for p in run_dirs]
    if not run_dirs:
        raise HarnessError("report: no run directories given")
    out_dir = Path(out_dir)
    runs = load_runs(run_dirs)
    baseline = load_runs([Path(compare)]) if compare is not None else None
    tables = compute_tables(runs, baseline)
    try:
        (out_dir / "tables").mkdir(parents=True, exist_ok=True)
        (out_dir / "plots").mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise HarnessError(f"cannot write the report to {out_dir}: {exc.strerror or exc}") from None
    for name, t in tables.items():
        t.to_csv(out_dir / "tables" / f"{name}.csv", index=False)
    stale = out_dir / "tables" / "compare.csv"
    if "compare" not in tables and stale.exists():
        stale.unlink()

    plots = {}
    for name, fn, arg in (("throughput_vs_hidden", plot_throughput, tables["throughput"]),
                          ("speedup_cudnn_over_naive", plot_speedup_heatmap, tables["speedup"]),
                          ("accuracy_curves", plot_accuracy_curves, runs.records),
                          ("kernel_time_by_category", plot_kernel_breakdown, tables["kernels"])):
        path = out_dir / "plots" / f"{name}.png"
        path.unlink(missing_ok=True)
        note = fn(arg, path)
        if note is not None and path.exists():
            plots[name] = (path, note)

    doc = _document(runs, baseline, tables, plots, command, compare)
    md_path = out_dir / "report.md"
    md_path.write_text(doc.markdown(), encoding="utf-8")
    (out_dir / "report.html").write_text(doc.html("lstm-bench report: " + ", ".join(runs.metas)),
                                         encoding="utf-8")
    return md_path


def _document(runs: RunSet, baseline: RunSet | None, tables: dict, plots: dict, command, compare) -> Doc:
    doc = Doc()
    doc.h(1, "lstm-bench report")
    env = tables["environment"]
    lines = []
    for _, r in env.iterrows():
        meta = runs.metas.get(r["run_id"], {})
        counts = f"{r['recorded']} trials: {r['ok']} ok ({r['noisy']} noisy), {r['failed']} failed, " \
                 f"{r['infeasible']} infeasible"
        if not _missing(r["missing"]) and r["missing"]:
            counts += f", {int(r['missing'])} of {int(r['planned'])} planned have no record"
        lines.append(f"{r['run_id']} (suite {fmt_cell('suite', r['suite']) or '?'}, {meta.get('path', '')}): "
                     f"{counts}")
    doc.p("Runs:")
    doc.items(lines)
    if baseline is not None:
        doc.p(f"Baseline: {', '.join(baseline.metas)} ({compare})")
    doc.p("Command:")
    doc.code(command or "(not given)")
    doc.p(f"Generated {dt.datetime.now(dt.timezone.utc).isoformat(timespec='seconds')}. Throughput cells are "
          f"medians of img/s over ok, non-noisy trials of the same spec (repeats pooled); noisy, failed and "
          f"infeasible trials are listed under Problems and never mixed in. Devices name their hardware (and "
          f"the thread count on CPU), so different machines are never pooled.")

    doc.h(2, "Environment")
    doc.table(env)

    if "compare" in tables:
        cmp = tables["compare"]
        doc.h(2, f"Compare with baseline {', '.join(baseline.metas)}")
        counts = cmp["verdict"].value_counts()
        doc.p("ratio = img/s current / baseline. A regression or improvement is called only when the intervals "
              "[median - IQR/2, median + IQR/2] of the two trials do not overlap; otherwise within noise. "
              "Verdicts: " + (", ".join(f"{n} {v}" for v, n in counts.items()) or "none") + ".")
        unmatched = unmatched_baseline(runs.records, baseline.records, cmp)
        if len(unmatched):
            doc.p(f"{len(unmatched)} baseline train/infer trial(s) have no counterpart in the current run(s).")
        no_base = cmp["verdict"] == "no baseline"
        if no_base.any():
            doc.p(f"{int(no_base.sum())} current train/infer trial(s) have no baseline: left out below, listed in "
                  f"tables/compare.csv.")
        doc.table(cmp[~no_base].reset_index(drop=True))

    doc.h(2, "Problems: failed, infeasible and noisy trials")
    prob = tables["problems"]
    missing = [(r["run_id"], int(r["missing"])) for _, r in env.iterrows() if not _missing(r["missing"])
               and r["missing"]]
    if missing:
        doc.p("Planned trials with no record (interrupted or lost; `lstm-bench run SUITE --resume RUN_ID` reruns "
              "them): " + ", ".join(f"{rid}: {n}" for rid, n in missing) + ".")
    bad_lines = [(rid, m.get("unreadable_lines", 0)) for rid, m in runs.metas.items() if m.get("unreadable_lines")]
    if bad_lines:
        doc.p("Unreadable (torn) lines skipped in trials.jsonl: " + ", ".join(f"{r}: {n}" for r, n in bad_lines))
    doc.table(prob)

    doc.h(2, "Throughput (img/s, median)")
    if "throughput_vs_hidden" in plots:
        path, note = plots["throughput_vs_hidden"]
        doc.img(path, "plots/throughput_vs_hidden.png", "img/s vs hidden size per impl (log y)"
                + (f"; {note}" if note else ""))
    doc.p("A blank cell: no ok, non-noisy trial of that spec (see Problems).")
    _split(doc, tables["throughput"], PIVOT_GROUP)

    doc.h(2, "Speedup of cudnn over naive and lstmcell")
    doc.p("Ratios of the median img/s of matching specs (same seq, patch, hidden, layers, batch, dtype, "
          "bidirectional, mode, device).")
    if "speedup_cudnn_over_naive" in plots:
        doc.img(plots["speedup_cudnn_over_naive"][0], "plots/speedup_cudnn_over_naive.png",
                "cudnn/naive over seq x hidden size")
    doc.table(tables["speedup"])

    doc.h(2, "Scaling with num_layers (img/s)")
    doc.table(tables["layer_scaling"])

    doc.h(2, "Achieved GFLOP/s (LSTM GEMMs, median)")
    _split(doc, tables["gflops"], PIVOT_GROUP)

    doc.h(2, "Accuracy and time to accuracy")
    if "accuracy_curves" in plots:
        doc.img(plots["accuracy_curves"][0], "plots/accuracy_curves.png", "test accuracy per epoch and over time")
    doc.table(tables["accuracy"])

    doc.h(2, "Kernel breakdown (profile trials)")
    if "kernel_time_by_category" in plots:
        doc.img(plots["kernel_time_by_category"][0], "plots/kernel_time_by_category.png",
                "kernel time by category per impl")
    if runs.kernels.empty and not tables["kernels"].empty:
        doc.p("No kernels.parquet: launches and top kernel from the profile records only.")
    doc.table(tables["kernels"])

    doc.p("Every table is also in tables/<name>.csv: " + ", ".join(f"{n}.csv" for n in tables) + ".")
    return doc
