"""The report's tables: each a pure function of a DataFrame of trial records (as `results.load_run` returns,
or several runs concatenated), so it can be called and checked on its own. See the package docstring for
what each computes. Nothing here imports torch.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..schema import RESULT_FIELDS
from .compare import FALLBACK_KEYS, compare_table, unmatched_baseline, verdict  # noqa: F401 (re-exported)
from .frame import MODE_ORDER, TIMING_MODES, _i, _impl_columns, _missing, _obj, _sort, _timing_rows, prepare

CATEGORIES = ("gemm", "cudnn-rnn", "elementwise", "reduction", "memcpy", "other")
# row keys of the throughput pivots; GROUP is what one markdown sub-table / one plot panel holds fixed
PIVOT_GROUP = ["mode", "seq", "device", "batch_size", "dtype", "bidirectional"]
PIVOT_INDEX = PIVOT_GROUP + ["num_layers", "hidden_size"]
# a variant on a piece of hardware, whatever the mode (accuracy rows join throughput rows on these)
JOIN_KEYS = ["hardware", "seq", "hidden_size", "num_layers", "impl", "batch_size", "dtype", "bidirectional"]
KERNEL_KEYS = ["device", "seq", "hidden_size", "num_layers", "batch_size", "dtype", "bidirectional", "impl"]


def group_title(key: dict) -> str:
    """The heading of one PIVOT_GROUP: a markdown sub-table's or a plot panel's."""
    parts = [str(key.get("mode", "")), str(key.get("seq", "")), str(key.get("device", ""))]
    if "batch_size" in key:
        parts.append(f"b{_i(key['batch_size'])} {key.get('dtype', '')}{' bi' if key.get('bidirectional') else ''}")
    return " · ".join(p for p in parts if p)


# ---- throughput -------------------------------------------------------------------------------------------

def throughput_table(df: pd.DataFrame, metric: str = "img_per_s", include_noisy: bool = False) -> pd.DataFrame:
    """Median `metric` per spec: columns PIVOT_INDEX, then one column per impl (cudnn, naive, lstmcell, ...)."""
    d = _timing_rows(df, metric, include_noisy)
    if d.empty:
        return pd.DataFrame(columns=PIVOT_INDEX)
    t = d.groupby(PIVOT_INDEX + ["impl"], dropna=False, sort=False)[metric].median().unstack("impl")
    t = t[_impl_columns(t.columns)]
    t.columns.name = None
    return _sort(t.reset_index(), PIVOT_INDEX)


CELL_COLUMNS = PIVOT_INDEX + ["impl", "img_per_s", "img_per_s_iqr", "noisy", "trials"]


def throughput_cells(df: pd.DataFrame) -> pd.DataFrame:
    """Every spec and impl that has an ok train/infer trial, one row each, noisy ones included (what the
    throughput plot draws): img_per_s and img_per_s_iqr are medians over the cell's non-noisy trials, or over
    its noisy ones when it has no other, and then `noisy` is true. A noisy cell is drawn, marked, with its
    spread, rather than dropped: a plot with holes where the machine was busy says less than one that shows
    the number and how far to trust it."""
    d = _timing_rows(df, include_noisy=True)
    if d.empty:
        return pd.DataFrame(columns=CELL_COLUMNS)
    rows = []
    for key, g in d.groupby(PIVOT_INDEX + ["impl"], dropna=False, sort=False):
        clean = g[~g["noisy"].astype(bool)]
        use = clean if len(clean) else g
        rows.append({**dict(zip(PIVOT_INDEX + ["impl"], key)), "img_per_s": use["img_per_s"].median(),
                     "img_per_s_iqr": use["img_per_s_iqr"].median(), "noisy": clean.empty, "trials": len(g)})
    return _sort(pd.DataFrame(rows, columns=CELL_COLUMNS), PIVOT_INDEX + ["impl"])


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


# ---- accuracy and kernels ---------------------------------------------------------------------------------

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


# ---- runs and problems ------------------------------------------------------------------------------------

ENV_FIELDS = [f.name for f in RESULT_FIELDS if f.group == "environment"] + ["dataset"]


def _text(v) -> str | float:
    """A value as text ("92400", not "92400.0"); NaN when missing or empty."""
    if _missing(v) or v == "":
        return np.nan
    return str(int(v)) if isinstance(v, float) and v.is_integer() else str(v)


def _distinct(values) -> str | float:
    seen = []
    for s in map(_text, values):
        if not _missing(s) and s not in seen:
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


def environment_by_field(env: pd.DataFrame) -> pd.DataFrame:
    """environment_table transposed to read on one screen: a row per field (`field`), a column per run, every
    value as text ("18", "2.14.1+cu130"; empty when missing)."""
    fields = [c for c in env.columns if c != "run_id"]
    out = pd.DataFrame({"field": fields})
    for _, row in env.iterrows():
        out[str(row["run_id"])] = [_text(row[f]) for f in fields]
    return out


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
