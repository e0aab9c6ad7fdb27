"""The results store: one directory per run, JSON and Parquet only (nothing here is ever a pickle).

    results/<suite>/<run_id>/
        run.json        suite file and its sha256, cluster nodes and resources, start/end, counts
        trials.jsonl    one record per finished trial, appended (flushed and fsynced) as each arrives
        trials.parquet  the same records, consolidated at the end of a run

trials.jsonl is the source of truth. A driver killed mid-write can leave a torn last line: readers keep every
intact line and skip the torn one, so `--resume` reruns just that trial. A trial rerun after a failure
appends a new record; the latest record of a trial_id wins.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import secrets
from pathlib import Path

import pandas as pd

from .errors import HarnessError

TRIALS = "trials.jsonl"
PARQUET = "trials.parquet"
RUN_JSON = "run.json"


def new_run_id() -> str:
    return dt.datetime.now().strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(2)


def jsonable(x):
    """JSON has no NaN or infinity: write null; tuples become lists, keys strings."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    return x


class RunStore:
    """Append-only trial records plus run metadata for one run directory."""

    def __init__(self, run_dir: Path):
        self.dir = Path(run_dir)
        self.trials_path = self.dir / TRIALS
        self._fh = None

    def open(self) -> "RunStore":
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            self._fh = open(self.trials_path, "a+", encoding="utf-8")
            if self._fh.tell() > 0:  # a crash may have torn the last line: end it, so new records stand alone
                self._fh.seek(self._fh.tell() - 1)
                if self._fh.read(1) != "\n":
                    self._fh.write("\n")
        except OSError as exc:
            raise HarnessError(f"cannot write results to {self.dir}: {exc.strerror or exc}") from None
        return self

    def append(self, record: dict) -> None:
        """Write one record durably before the driver moves on (a crash loses nothing already returned)."""
        line = json.dumps(jsonable(record), separators=(",", ":")) + "\n"
        try:
            self._fh.write(line)
            self._fh.flush()
            os.fsync(self._fh.fileno())
        except OSError as exc:
            raise HarnessError(f"cannot append to {self.trials_path}: {exc.strerror or exc}; "
                               f"records already written are kept") from None

    def close(self) -> None:
        if self._fh:
            fh, self._fh = self._fh, None
            try:
                fh.close()
            except OSError:  # a full disk fails the flush in close() too; append() has already said so
                pass

    def write_meta(self, meta: dict) -> None:
        tmp = self.dir / (RUN_JSON + ".tmp")
        tmp.write_text(json.dumps(jsonable(meta), indent=2) + "\n")
        os.replace(tmp, self.dir / RUN_JSON)  # atomic: run.json is never half written

    def read_meta(self) -> dict:
        path = self.dir / RUN_JSON
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise HarnessError(f"{path}: unreadable run metadata ({exc})") from None

    def consolidate(self) -> Path | None:
        """trials.jsonl -> trials.parquet (latest record per trial). Nested fields are stored as JSON text."""
        df = read_records(self.dir)
        if df.empty:
            return None
        for col in df.columns:
            if df[col].map(lambda v: isinstance(v, (dict, list))).any():
                df[col] = df[col].map(lambda v: json.dumps(v) if isinstance(v, (dict, list)) else v)
        path = self.dir / PARQUET
        df.to_parquet(path, index=False)
        return path


def read_jsonl(path: Path) -> tuple[list[dict], int]:
    """Every intact record of a trials.jsonl, and how many lines were torn or unreadable."""
    records, bad = [], 0
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return [], 0
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            bad += 1
            continue
        if isinstance(rec, dict) and "trial_id" in rec:
            records.append(rec)
        else:
            bad += 1
    return records, bad


def latest_by_trial(records: list[dict]) -> dict[str, dict]:
    """trial_id -> its latest record, except that an ok record is never replaced by a later failure."""
    out: dict[str, dict] = {}
    for r in records:
        prev = out.get(r["trial_id"])
        if prev is None or not (prev.get("status") == "ok" and r.get("status") != "ok"):
            out[r["trial_id"]] = r
    return out


def read_records(run_dir: str | Path) -> pd.DataFrame:
    """A run's trials as a DataFrame, one row per trial (latest record wins)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise HarnessError(f"{run_dir}: no such run directory")
    records, _ = read_jsonl(run_dir / TRIALS)
    if not records and (run_dir / PARQUET).exists():
        try:
            return pd.read_parquet(run_dir / PARQUET)
        except Exception as exc:  # pyarrow raises several types for a damaged file
            raise HarnessError(f"{run_dir / PARQUET}: unreadable ({type(exc).__name__}) and no {TRIALS}") from None
    return pd.DataFrame(list(latest_by_trial(records).values()))


def load_run(run_dir: str | Path) -> pd.DataFrame:
    """Public entry point: a run directory -> pandas DataFrame of its trial records, with `run_id` added."""
    df = read_records(run_dir)
    df.insert(0, "run_id", Path(run_dir).name)
    return df


SUMMARY_COLUMNS = ["trial_id", "seq", "patch_size", "hidden_size", "num_layers", "impl", "batch_size", "dtype",
                   "mode", "device", "status", "img_per_s", "img_per_s_iqr", "latency_ms_p50", "peak_mem_mb",
                   "gflop_per_s", "test_acc", "noisy", "backend", "node_ip"]


def format_table(df: pd.DataFrame, columns=SUMMARY_COLUMNS) -> str:
    if df.empty:
        return "(no trials)"
    cols = [c for c in columns if c in df.columns]
    view = df[cols].copy()
    if "patch_size" in view:
        view["seq"] = [f"patch{int(p)}" if s == "patch" and pd.notna(p) else s
                       for s, p in zip(view["seq"], view["patch_size"])]
        view = view.drop(columns="patch_size")
    sort = [c for c in ("device", "mode", "seq", "hidden_size", "num_layers", "impl") if c in view]
    view = view.sort_values(sort, kind="stable")
    with pd.option_context("display.max_rows", None, "display.width", 250, "display.max_columns", None,
                           "display.float_format", lambda v: f"{v:,.2f}"):
        return view.to_string(index=False)
