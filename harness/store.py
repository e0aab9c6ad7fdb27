"""The results store: one directory per run, JSON and Parquet only (nothing here is ever a pickle).

    results/<suite>/<run_id>/
        run.json        suite file and its sha256, --set overrides, cluster nodes and resources, start/end, counts
        trials.jsonl    one record per finished trial, appended (flushed and fsynced) as each arrives
        trials.parquet  the same records, consolidated at the end of a run
        profiles/<trial_id>/   a profile trial's TensorBoard trace(s) and its kernels.parquet
        kernels.parquet every profiled trial's kernel rows, consolidated

trials.jsonl is the source of truth. A driver killed mid-write can leave a torn last line: readers keep every
intact line and skip the torn one, so `--resume` reruns just that trial. A trial rerun after a failure
appends a new record; the latest record of a trial_id wins. Every other file is written whole or not at all
(`atomic_write`: temp file, fsync, rename, fsync of the folder).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import math
import os
import secrets
from pathlib import Path

import pandas as pd

from .errors import HarnessError
from .schema import KERNEL_COLUMNS, KERNELS, PARQUET, PROFILES, RUN_JSON, TRIALS, TrialResult, check_record

_TRACE_SUFFIXES = (".pt.trace.json", ".pt.trace.json.gz")


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


def atomic_write(path: Path, data: bytes | str | None = None, *, write=None) -> Path:
    """Write `path` whole or not at all: into a temp file beside it (`data`, or `write(tmp_path)`), fsync, rename
    over `path`, fsync the folder so the rename itself survives a crash. HarnessError (one line) on failure."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if write is not None:
            write(tmp)
        else:
            tmp.write_bytes(data.encode("utf-8") if isinstance(data, str) else bytes(data))
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise HarnessError(f"cannot write {path}: {exc.strerror or exc}") from None
    return path


def write_parquet(df: pd.DataFrame, path: Path) -> Path:
    return atomic_write(path, write=lambda tmp: df.to_parquet(tmp, index=False))


class RunStore:
    """Append-only trial records, run metadata and profile artifacts for one run directory."""

    def __init__(self, run_dir: Path):
        self.dir = Path(run_dir)
        self.trials_path = self.dir / TRIALS
        self._fh = None

    def open(self) -> "RunStore":
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            with open(self.trials_path, "ab+") as fh:  # bytes: a torn line may end inside a UTF-8 character
                if fh.tell() > 0:  # a crash may have torn the last line: end it, so new records stand alone
                    fh.seek(-1, os.SEEK_END)
                    if fh.read(1) != b"\n":
                        fh.write(b"\n")
            self._fh = open(self.trials_path, "a", encoding="utf-8")
        except OSError as exc:
            raise HarnessError(f"cannot write results to {self.dir}: {exc.strerror or exc}") from None
        return self

    def append(self, record: dict, sync: bool = True) -> None:
        """Write one record durably before the driver moves on (a crash loses nothing already returned).
        sync=False leaves the fsync to a later sync(): the driver syncs once per batch of results."""
        line = json.dumps(jsonable(record), separators=(",", ":")) + "\n"
        try:
            self._fh.write(line)
            self._fh.flush()
            if sync:
                os.fsync(self._fh.fileno())
        except OSError as exc:
            raise HarnessError(f"cannot append to {self.trials_path}: {exc.strerror or exc}; "
                               f"records already written are kept") from None

    def sync(self) -> None:
        try:
            os.fsync(self._fh.fileno())
        except OSError as exc:
            raise HarnessError(f"cannot append to {self.trials_path}: {exc.strerror or exc}; "
                               f"records already written are kept") from None

    def add(self, result: TrialResult, sync: bool = True) -> dict:
        """Store one trial's result: its profile artifacts first (so a record never points at a missing trace),
        then its record. A profile that cannot be written turns the record into a failure saying why."""
        record = dict(result.record)
        if result.artifacts or result.kernels is not None:
            try:
                record["profile_dir"] = store_profile(self.dir, record.get("trial_id"), result.artifacts,
                                                      result.kernels)
            except HarnessError as exc:
                record.update(status="failed", error=str(exc))
        self.append(record, sync)
        return record

    def close(self) -> None:
        if self._fh:
            fh, self._fh = self._fh, None
            try:
                fh.close()
            except OSError:  # a full disk fails the flush in close() too; append() has already said so
                pass

    def write_meta(self, meta: dict) -> None:
        atomic_write(self.dir / RUN_JSON, json.dumps(jsonable(meta), indent=2) + "\n")

    def read_meta(self) -> dict:
        path = self.dir / RUN_JSON
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise HarnessError(f"{path}: unreadable run metadata ({exc})") from None

    def consolidate(self) -> Path | None:
        """trials.jsonl -> trials.parquet (latest record per trial), and the profiles' kernels.parquet files into
        one. Nested fields are stored as JSON text."""
        consolidate_kernels(self.dir)
        df = read_records(self.dir)
        if df.empty:
            return None
        for col in df.columns:
            if df[col].map(lambda v: isinstance(v, (dict, list))).any():
                df[col] = df[col].map(lambda v: json.dumps(v) if isinstance(v, (dict, list)) else v)
        return write_parquet(df, self.dir / PARQUET)


def read_jsonl(path: Path) -> tuple[list[dict], int]:
    """Every intact record of a trials.jsonl, and how many lines were torn or unreadable. A line is a record only
    when it is valid UTF-8 and JSON, an object, with a non-empty string trial_id; any other line is counted here
    and skipped (a torn write, a foreign or hand-edited line), never passed on to fail later."""
    records, bad = [], 0
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return [], 0
    except OSError as exc:
        raise HarnessError(f"cannot read {path}: {exc.strerror or exc}") from None
    for line in data.split(b"\n"):
        if not line.strip():
            continue
        try:
            rec = json.loads(line.decode("utf-8"))
        except ValueError:  # UnicodeDecodeError and JSONDecodeError are both ValueErrors
            bad += 1
            continue
        if isinstance(rec, dict) and isinstance(rec.get("trial_id"), str) and rec["trial_id"]:
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


def record_problems(run_dir: str | Path) -> list[str]:
    """Every record of a run checked against the schema (a test and `lstm-bench results` can call this)."""
    records, _ = read_jsonl(Path(run_dir) / TRIALS)
    return [f"{r.get('trial_id')}: {p}" for r in records for p in check_record(r)]


# ---- profiles ---------------------------------------------------------------------------------------------

class ArtifactError(HarnessError):
    """An artifact name that would escape its trial's profile directory."""


def _safe_name(name, what: str) -> str:
    if not isinstance(name, str) or not name or name in (".", "..") or ".." in name or "\x00" in name \
            or "/" in name or "\\" in name or (os.altsep and os.altsep in name) or os.sep in name:
        raise ArtifactError(f"refusing {what} {name!r}: it must be a plain file name "
                            f"(no path separators, no '..')")
    return name


def write_artifacts(run_dir: Path, trial_id: str, artifacts: dict[str, bytes]) -> Path:
    """Write a profile's trace files to run_dir/profiles/<trial_id>/ and return that directory.
    Every name is checked before anything is written; each file is written whole."""
    _safe_name(trial_id, "trial id")
    for name, blob in artifacts.items():
        _safe_name(name, "artifact name")
        if not isinstance(blob, (bytes, bytearray, memoryview)):
            raise ArtifactError(f"artifact {name!r} is {type(blob).__name__}, not bytes")
    dest = Path(run_dir) / PROFILES / trial_id
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise HarnessError(f"cannot write profile of trial {trial_id} to {dest}: {exc.strerror or exc}") from None
    for name, blob in artifacts.items():
        atomic_write(dest / name, blob)
    return dest


def kernels_frame(records_kernels: list[tuple[str, list[dict]]]) -> pd.DataFrame:
    """[(trial_id, kernel rows), ...] -> one DataFrame (trial_id + KERNEL_COLUMNS), for kernels.parquet."""
    rows = [{"trial_id": tid, **{c: r.get(c) for c in KERNEL_COLUMNS}}
            for tid, kernels in records_kernels for r in (kernels or [])]
    df = pd.DataFrame(rows, columns=["trial_id", *KERNEL_COLUMNS])
    for c in ("trial_id", "name", "category"):
        df[c] = df[c].astype("string")
    df["calls"] = pd.to_numeric(df["calls"]).astype("int64")
    for c in ("self_device_time_us", "self_cpu_time_us", "share_of_step", "launches_per_step"):
        df[c] = pd.to_numeric(df[c]).astype("float64")
    return df


def store_profile(run_dir: Path, trial_id, artifacts: dict[str, bytes] | None, kernels: list[dict] | None) -> str:
    """Write a profile's trace(s) and kernel rows under run_dir/profiles/<trial_id>/, replacing an earlier profile
    of the same trial (the latest record of a trial wins: so does its trace). Returns that folder relative to
    run_dir, for the record's `profile_dir`."""
    trial_id = _safe_name(trial_id, "trial id")
    dest = Path(run_dir) / PROFILES / trial_id
    if dest.is_dir() and artifacts:
        for old in dest.iterdir():
            if old.is_file() and old.name.endswith(_TRACE_SUFFIXES) and old.name not in artifacts:
                old.unlink()
    dest = write_artifacts(run_dir, trial_id, artifacts or {})
    if kernels is not None:
        write_parquet(kernels_frame([(trial_id, kernels)]), dest / KERNELS)
    return str(dest.relative_to(run_dir))


def consolidate_kernels(run_dir: Path) -> Path | None:
    """run_dir/profiles/*/kernels.parquet -> run_dir/kernels.parquet (one table, trial_id first). Written per trial
    first, so a driver that dies mid-run loses no trial's rows and --resume only adds to them. None when no trial
    was profiled."""
    parts = sorted((Path(run_dir) / PROFILES).glob(f"*/{KERNELS}"))
    if not parts:
        return None
    frames = []
    for p in parts:
        try:
            frames.append(pd.read_parquet(p))
        except Exception as exc:  # a torn file: name it
            raise HarnessError(f"{p}: unreadable ({type(exc).__name__}: {exc})") from None
    return write_parquet(pd.concat(frames, ignore_index=True), Path(run_dir) / KERNELS)
