"""`lstm-bench calibrate`: A/A sessions (the same code and spec on both sides) that measure what this machine's
pairs look like when nothing changed: per hardware fingerprint and cell, the spread of the paired log-ratios
and how often a session called a change anyway (the false-alarm rate at the session's threshold).

Stored as <results root>/calibration/<hw_fingerprint>.json, where `ab` looks for the fingerprint its pairs ran
on: the calibrated spread is the floor of the MDE it reports (a session's own spread from a few pairs can be
luckily small), and the report names the file it used.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from pathlib import Path

from . import stats
from .ab import CALIBRATION, Session, log_ratio
from .store import atomic_write, jsonable


def summarise(sessions: list[Session], threshold: float) -> dict[str, dict]:
    """{hw_fingerprint: calibration}: pooled log-ratios per cell (by the baseline's trial_id), their robust spread,
    and the share of sessions that called that cell (or any cell) changed."""
    out = {}
    for fp in sorted({fp for s in sessions for fp in s.fingerprints}):
        cells, flagged_sessions = {}, 0
        mine = [s for s in sessions if fp in s.fingerprints]
        for s in mine:
            any_flag = False
            for c in s.cells:
                logs = [log_ratio(p) for p in s.pairs.get(c.name, [])
                        if p["baseline"].get("hw_fingerprint") == fp]
                entry = cells.setdefault(c.baseline.trial_id, {"cell": c.name, "log_ratios": [], "sessions": 0,
                                                               "false_alarms": 0})
                entry["log_ratios"] += logs
                entry["sessions"] += 1
                flag = s.verdicts.get(c.name) is not None and s.verdicts[c.name].verdict in ("regression",
                                                                                                "improvement")
                entry["false_alarms"] += flag
                any_flag |= flag
            flagged_sessions += any_flag
        for entry in cells.values():
            d = entry["log_ratios"]
            entry.update(pairs=len(d), log_sd=stats.robust_sd(d) if len(d) >= 2 else None,
                         median_ratio=math.exp(sorted(d)[len(d) // 2]) if d else None,
                         false_alarm_rate=entry["false_alarms"] / entry["sessions"] if entry["sessions"] else None)
        out[fp] = {"hw_fingerprint": fp, "made_at": dt.datetime.now(dt.timezone.utc).isoformat(),
                   "threshold": threshold, "sessions": len(mine),
                   "sessions_with_any_false_alarm": flagged_sessions,
                   "run_dirs": [str(s.run_dir) for s in mine], "cells": cells}
    return out


def write(results_root: Path, calibrations: dict[str, dict]) -> list[Path]:
    paths = []
    for fp, cal in calibrations.items():
        paths.append(atomic_write(Path(results_root) / CALIBRATION / f"{fp}.json",
                                  json.dumps(jsonable(cal), indent=2)))
    return paths
