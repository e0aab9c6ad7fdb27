"""Loading runs and normalizing their trial records: the DataFrame every table, plot and section starts from.

load_runs reads run directories into a RunSet (records, kernels, per-run metadata); prepare normalizes the
records (every field present, seq labels, hardware-named devices, numbers as numbers); the sorting helpers put
rows in the report's order (train before infer, row before pixel, cudnn before naive). Nothing here imports
torch.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import HarnessError
from ..schema import KERNELS, RUN_JSON, TRIALS, all_fields, spec_fields
from ..spec import seq_label
from ..store import load_run, read_jsonl

TIMING_MODES = ("train", "infer")
MODE_ORDER = {"train": 0, "infer": 1, "accuracy": 2, "profile": 3}
IMPL_ORDER = ("cudnn", "naive", "lstmcell")
STATUS_ORDER = {"failed": 0, "infeasible": 1}

# The report's view of a trial record, read off the schema: every field exists after `prepare` (null where a
# run did not record it), measured numbers are numeric, the spec's integer fields are nullable integers.
FIELDS = ["run_id", *all_fields()]
NUMERIC = [f.name for f in all_fields().values() if f.type in ("int", "float") and f.group != "spec"]
INT_KEYS = [f.name for f in spec_fields() if f.type == "int"]


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
        metas[run_id] = _meta(run_dir)
        if len(df.columns) > 1 and not df.empty:
            frames.append(df)
        k = _kernels(run_dir)
        if k is not None:
            k.insert(0, "run_id", run_id)
            kframes.append(k)
    records = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["run_id"])
    kernels = pd.concat(kframes, ignore_index=True) if kframes else pd.DataFrame()
    return RunSet(records=records, kernels=kernels, metas=metas)


def _meta(run_dir: Path) -> dict:
    """run.json (empty when missing or not an object), plus the run's path and its unreadable trial lines."""
    try:
        meta = json.loads((run_dir / RUN_JSON).read_text())
        if not isinstance(meta, dict):
            meta = {}
    except (OSError, ValueError):
        meta = {}
    _, bad = read_jsonl(run_dir / TRIALS)
    meta.update(path=str(run_dir), unreadable_lines=bad)
    return meta


def _kernels(run_dir: Path) -> pd.DataFrame | None:
    kpath = run_dir / KERNELS
    if not kpath.exists():
        return None
    try:
        return pd.read_parquet(kpath)
    except Exception as exc:  # a torn or foreign file: say so, do not stop the report
        raise HarnessError(f"{kpath}: unreadable ({type(exc).__name__}: {exc})") from None


# ---- normalizing ------------------------------------------------------------------------------------------

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


def _i(v) -> str:
    return "?" if _missing(v) else str(int(v))


def prepare(df: pd.DataFrame) -> pd.DataFrame:
    """Normalized copy of trial records: every expected column present, `seq` as its label ("patch4"),
    `device` as a hardware label, `hardware` (device without threads), `device_kind` (cpu/cuda), `variant`
    (the Variant label), numbers as numbers, `noisy` as bool. Idempotent."""
    if "hardware" in df.columns and "variant" in df.columns:
        return df
    missing = [c for c in dict.fromkeys(FIELDS + NUMERIC) if c not in df.columns]
    if missing:
        df = pd.concat([df, pd.DataFrame(np.nan, index=df.index, columns=missing)], axis=1)
    df = df.copy()  # one block per dtype: later column assignments would otherwise fragment it
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
    labels = [_device_labels(*row) for row in zip(df["device"], df["gpu_name"], df["cpu_model"], df["threads"],
                                                  df["hw_fingerprint"])]
    # Records made before precision was an axis: dtype float32 with cuDNN's TF32 on is not strict float32.
    df["dtype"] = [f"{d}+tf32-cudnn" if d == "float32" and _truthy(c) and not _truthy(m) else d
                   for d, c, m in zip(df["dtype"], df["tf32_cudnn"], df["tf32_matmul"])]
    kinds, hardware, devices = zip(*labels) if labels else ((), (), ())
    df = df.copy()
    df["device_kind"], df["hardware"], df["device"] = list(kinds), list(hardware), list(devices)
    df["seq"] = [seq_label(s, p) for s, p in zip(df["seq"], df["patch_size"])]
    df["variant"] = [
        f"{s}/h{_i(h)}x{_i(n)}{'-bi' if bi else ''}/{impl}/b{_i(b)}/{dtype}"
        for s, h, n, bi, impl, b, dtype in zip(df["seq"], df["hidden_size"], df["num_layers"], df["bidirectional"],
                                               df["impl"], df["batch_size"], df["dtype"])]
    return df


def _device_labels(device, gpu, cpu, threads, fingerprint=None) -> tuple[str, str, str]:
    """(kind, hardware, device): "cuda", "cuda (NVIDIA H100 80GB HBM3, hw 1a2b3c)", and on CPU the device label
    adds the thread count: "cpu (AMD EPYC, hw 4d5e6f, 2 threads)". The hardware fingerprint (its first six
    characters) keeps two machines with the same CPU or GPU name apart."""
    if isinstance(device, str) and device.startswith("cuda"):
        kind = "cuda"
    else:
        kind = "?" if _missing(device) else str(device)
    hw = gpu if kind == "cuda" else cpu
    if not _missing(fingerprint) and fingerprint:
        hw = f"{'' if _missing(hw) or not hw else f'{hw}, '}hw {str(fingerprint)[:6]}"
    hardware = f"{kind} ({hw})" if not _missing(hw) and hw else kind
    if kind == "cpu" and not _missing(threads):
        inner = f"{hw}, " if not _missing(hw) and hw else ""
        return kind, hardware, f"cpu ({inner}{int(threads)} thread{'s' if int(threads) != 1 else ''})"
    return kind, hardware, hardware


# ---- sorting helpers --------------------------------------------------------------------------------------

def _seq_rank(s) -> float:
    base = {"row": 0, "column": 1, "pixel": 2, "cnn": 4}
    if isinstance(s, str) and s.startswith("patch") and s[5:].isdigit():
        return 3 + int(s[5:]) / 1000
    return base.get(s, 9)


def _impl_rank(s) -> float:
    return IMPL_ORDER.index(s) if s in IMPL_ORDER else 9


def _sort_key(s: pd.Series) -> pd.Series:
    if s.name == "mode":
        return s.map(lambda v: MODE_ORDER.get(v, 99))
    if s.name == "seq":
        return s.map(_seq_rank)
    if s.name == "impl":
        return s.map(_impl_rank)
    if s.name == "status":
        return s.map(lambda v: STATUS_ORDER.get(v, 5))
    return s


def _sort(t: pd.DataFrame, cols) -> pd.DataFrame:
    cols = [c for c in cols if c in t.columns]
    if t.empty or not cols:
        return t.reset_index(drop=True)
    return t.sort_values(cols, key=_sort_key, kind="stable", na_position="last").reset_index(drop=True)


def _impl_columns(cols) -> list:
    return sorted(cols, key=lambda c: (_impl_rank(c), str(c)))


def _timing_rows(df: pd.DataFrame, metric: str = "img_per_s", include_noisy: bool = False) -> pd.DataFrame:
    d = prepare(df)
    keep = (d["status"] == "ok") & d["mode"].isin(TIMING_MODES) & d[metric].notna()
    if not include_noisy:
        keep &= ~d["noisy"].astype(bool)
    return d[keep]
