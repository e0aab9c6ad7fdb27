"""The sweep driver at scale: N trials of an instant function through the same driver, store and resume code
as a real sweep, on an embedded Ray (only the driver is timed):

    .venv/bin/python scripts/bench_driver_scale.py --trials 2000

Each trial is replaced by `instant` (passed to run_suite as a test hook, never a trial kind a suite can name),
which returns its spec as an ok record at once. The last line:

    driver overhead per trial: X ms, driver RSS growth: Y MB, lost: Z

X = (time of the last record written - time of the first submission) / N, both from run.json; Y = the driver's
RSS at the end minus right after Ray connected; Z = planned trials not recorded ok (a false timeout is lost).
Targets on the 2-core machine here: N = 2,000: X <= 20 ms, Y <= 200 MB, Z = 0; N = 10,000: Z = 0.
"""
import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import psutil
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

from harness.cluster import Hooks, run_suite  # noqa: E402
from harness.nodes import connect  # noqa: E402
from harness.schema import TrialResult  # noqa: E402
from harness.store import latest_by_trial, read_jsonl  # noqa: E402
from harness.suites import load_suite  # noqa: E402


def instant(spec, **_) -> TrialResult:
    """A trial that returns its record at once: what is left to time is the driver."""
    rec = spec.flat()
    rec.update(status="ok", img_per_s=1.0, duration_s=0.0)
    return TrialResult(record=rec)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=2000)
    p.add_argument("--num-cpus", type=int, default=2)
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        suite_path = Path(tmp) / "scale.yaml"
        suite_path.write_text(yaml.safe_dump({
            "name": "scale", "repeats": a.trials, "modes": ["infer"], "data": "synthetic",
            "fixed": {"seq": "row", "num_layers": 1, "hidden_size": 8, "batch_size": 8},
            "devices": ["cpu"], "cpus_per_trial": 1, "placement": "shared", "memory_mb": 1}))
        suite = load_suite(suite_path)
        connect(None, num_cpus=a.num_cpus)
        rss0 = psutil.Process().memory_info().rss
        t0 = time.time()
        out = run_suite(suite, out_dir=Path(tmp) / "r", progress=False, hooks=Hooks(trial_fn=instant, probe_s=0.2))
        rss1 = psutil.Process().memory_info().rss
        meta = json.loads((out.run_dir / "run.json").read_text())
        latest = latest_by_trial(read_jsonl(out.run_dir / "trials.jsonl")[0])
        lost = len(suite.trials) - sum(r.get("status") == "ok" for r in latest.values())
        x_ms = 1000 * (meta["last_record_at"] - meta["first_submit_at"]) / a.trials
        print(f"{a.trials} trials in {time.time() - t0:.1f} s (Ray already up)", file=sys.stderr)
        print(f"driver overhead per trial: {x_ms:.1f} ms, driver RSS growth: {(rss1 - rss0) / 2**20:.0f} MB, "
              f"lost: {lost}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
