"""How much does the CPU float32 ceiling probe wander on this node? Evidence for the drift threshold.

Runs the probe N times (default 10), each in a fresh process (as a lone trial would) unless --same-process,
with a pause between windows so the runs span a couple of minutes, then prints per-window GFLOP/s, the median,
the largest relative drop between any two windows (1 - min/max) and a recommended drift threshold.

    .venv/bin/python scripts/probe_spread.py [--runs 10] [--pause 10] [--seconds 1] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

STEADY_BAND = 0.25
ONE = ("import json, sys, torch; from harness.ceiling import probe; "
       "p = probe(torch.device('cpu'), 'float32', threads={threads}, seconds={seconds}); "
       "print(json.dumps(dict(gflop_per_s=p.gflop_per_s, spread=p.spread, n=p.n, repeats=p.repeats, "
       "threads=p.threads)))")


def one_window(args) -> dict:
    if args.same_process:
        import torch

        from harness.ceiling import probe
        p = probe(torch.device("cpu"), "float32", threads=args.threads, seconds=args.seconds)
        return {"gflop_per_s": p.gflop_per_s, "spread": p.spread, "n": p.n, "repeats": p.repeats,
                "threads": p.threads}
    code = ONE.format(threads=args.threads, seconds=args.seconds)
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def pair_drops(g: list[float]) -> list[float]:
    """Relative fall from each window to every later one (what drifted() would see for that start/end pair)."""
    return [1.0 - g[j] / g[i] for i in range(len(g)) for j in range(i + 1, len(g))]


def steady(g: list[float], band: float = STEADY_BAND) -> list[float]:
    """Windows within `band` of the median: the node's usual condition. The others are condition changes
    (another process took or freed a core), which a drift check should flag rather than absorb."""
    med = statistics.median(g)
    return [x for x in g if abs(x / med - 1.0) <= band]


def recommend(g: list[float], step: float = 0.05) -> float:
    """The next 5% step above the probe's wander under a steady condition (1 - min/max of the steady windows)."""
    s = steady(g)
    wander = 1.0 - min(s) / max(s)
    return round((math.floor(wander / step + 1e-9) + 1) * step, 2)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--pause", type=float, default=10.0, help="seconds between windows")
    ap.add_argument("--seconds", type=float, default=1.0, help="probe length per window")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--same-process", action="store_true", help="probe in this process instead of fresh ones")
    args = ap.parse_args(argv)

    rows, t0 = [], time.monotonic()
    for i in range(args.runs):
        if i:
            time.sleep(args.pause)
        r = one_window(args)
        r["t"], r["load1"] = time.monotonic() - t0, os.getloadavg()[0]
        rows.append(r)
        print(f"window {i + 1:2d}  t={r['t']:6.1f}s  {r['gflop_per_s']:8.1f} GFLOP/s  "
              f"spread {100 * r['spread']:4.1f}%  repeats {r['repeats']:3d}  n={r['n']}  "
              f"threads {r['threads']}  load1 {r['load1']:.2f}", flush=True)

    g = [r["gflop_per_s"] for r in rows]
    med, max_drop = statistics.median(g), 1.0 - min(g) / max(g)
    drops = pair_drops(g)
    later_drop = max(drops, default=0.0)
    spreads = [r["spread"] for r in rows]
    loads = [r["load1"] for r in rows]
    print(f"\nper-window GFLOP/s: {' '.join(f'{x:.1f}' for x in g)}")
    print(f"median {med:.1f} GFLOP/s over {len(g)} windows in {rows[-1]['t']:.0f} s "
          f"({'same process' if args.same_process else 'fresh processes'}, {os.cpu_count()} CPUs)")
    print(f"within-window spread (IQR/median): {100 * min(spreads):.1f}-{100 * max(spreads):.1f}%")
    print(f"max relative drop between any two windows (1 - min/max): {100 * max_drop:.1f}%; "
          f"worst earlier->later drop: {100 * later_drop:.1f}%")
    print(f"1-min load average during the windows: {min(loads):.2f}-{max(loads):.2f}")
    st = steady(g)
    print(f"start->end drops over {len(drops)} window pairs: median {100 * statistics.median(drops):.1f}%")
    print(f"steady windows (within {100 * STEADY_BAND:.0f}% of the median): {len(st)}/{len(g)}, "
          f"{min(st):.1f}-{max(st):.1f} GFLOP/s, wander {100 * (1 - min(st) / max(st)):.1f}%; "
          f"off-median (condition changed): {' '.join(f'{x:.1f}' for x in g if x not in st) or 'none'}")
    rec = recommend(g)
    flagged = {t: sum(d > t for d in drops) for t in sorted({0.05, 0.10, 0.15, 0.20, round(rec, 2)})}
    print("start->end pairs a threshold would flag: "
          + ", ".join(f"{100 * t:.0f}%: {n}/{len(drops)}" for t, n in flagged.items()))
    print(f"recommended drift threshold: {100 * rec:.0f}% (next 5% step above the steady-window wander)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
