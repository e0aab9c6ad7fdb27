"""Per-trial overhead of the sweep machinery (Ray task submission, scheduling, result transfer, durable
append) on an embedded local Ray:

    .venv/bin/python scripts/bench_overhead.py [--trials 24]

N short trials run one at a time (each asks for every CPU), so the sweep's wall time minus the sum of the
trials' own durations, divided by N, is what the machinery adds per trial. Ray's start-up is timed apart
(it is paid once per run, not per trial). Target: at most 0.5 s per trial.
"""
import argparse
import os
import tempfile
import time
from pathlib import Path

import yaml

from harness.cluster import connect, run_suite
from harness.store import read_jsonl
from harness.suites import load_suite


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--trials", type=int, default=24)
    a = p.parse_args()
    cores = len(os.sched_getaffinity(0))
    hidden = list(range(8, 8 + 8 * (a.trials // 2), 8))
    suite = {"name": "overhead", "axes": {"hidden_size": hidden}, "modes": ["infer", "train"],
             "fixed": {"seq": "row", "num_layers": 1, "batch_size": 8}, "devices": ["cpu"],
             "cpus_per_trial": cores, "time_budget_s": 0.3}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "overhead.yaml"
        path.write_text(yaml.safe_dump(suite))
        s = load_suite(path)
        t0 = time.perf_counter()
        connect(None)
        t1 = time.perf_counter()
        out = run_suite(s, out_dir=Path(tmp) / "results", progress=False)
        t2 = time.perf_counter()
        records, _ = read_jsonl(out.run_dir / "trials.jsonl")
    own = sum(r["duration_s"] for r in records)
    n = len(records)
    per_trial = (t2 - t1 - own) / n
    print(f"{n} trials ({out.ok} ok), one at a time on {cores} CPUs; Ray start-up {t1 - t0:.1f} s (once per run)")
    print(f"sweep wall {t2 - t1:.2f} s, trials' own durations {own:.2f} s")
    print(f"overhead per trial: {per_trial:.3f} s (target <= 0.5 s)")
    raise SystemExit(0 if per_trial <= 0.5 else 1)


if __name__ == "__main__":
    main()
