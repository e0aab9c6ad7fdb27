"""The sweep driver at scale (issue "The sweep driver at thousands of trials"): instant trials through the real
driver, store and resume code lose nothing and time nothing out; a trial killed for memory is retried once."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def test_thousand_instant_trials_lose_nothing():
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_driver_scale.py"), "--trials", "1000"],
                         capture_output=True, text=True, timeout=900, cwd=ROOT)
    last = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else ""
    print(last)
    m = re.fullmatch(r"driver overhead per trial: ([\d.]+) ms, driver RSS growth: (-?\d+) MB, lost: (\d+)", last)
    assert out.returncode == 0 and m, out.stderr[-2000:]
    assert int(m.group(3)) == 0  # no trial lost, no false timeout


def test_a_trial_killed_for_memory_is_retried_once_and_recorded(tmp_path):
    """Ray's memory monitor, told that any use is too much, kills the trial's worker; the run records it failed,
    naming out-of-memory and the attempts, instead of retrying it forever."""
    suite = tmp_path / "oom.yaml"
    suite.write_text(yaml.safe_dump({"name": "oom", "fixed": {"seq": "row", "num_layers": 1, "hidden_size": 8,
                                                                "batch_size": 8},
                                     "modes": ["infer"], "devices": ["cpu"], "time_budget_s": 5.0,
                                     "placement": "shared"}))
    env = dict(os.environ, RAY_memory_usage_threshold="0.01", RAY_memory_monitor_refresh_ms="100",
               RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
    out = subprocess.run([sys.executable, "-m", "harness.cli", "run", str(suite), "--out", str(tmp_path / "r"),
                          "--no-progress", "--quiet", "--num-cpus", "1"], capture_output=True, text=True,
                         timeout=600, cwd=ROOT, env=env)
    from harness.store import read_jsonl
    (run_dir,) = (tmp_path / "r" / "oom").iterdir()
    (rec,), _ = read_jsonl(run_dir / "trials.jsonl")
    assert out.returncode == 1 and rec["status"] == "failed", (out.returncode, rec.get("error"), out.stderr[-1500:])
    assert "out of memory" in rec["error"] and rec["attempt"] == 2


def test_a_trial_killed_for_memory_on_an_address_cluster_is_retried_once(tmp_path, monkeypatch):
    """The same on a cluster the driver joins by address, whose head sets no task_oom_retries (Ray's default:
    "infinite oom retries remaining"): the trial is recorded failed (out of memory) and the sweep ends. The sweep
    runs in a thread, so a missing cap fails this test after 150 s instead of hanging it."""
    import threading

    ray = pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    from harness.cluster import Hooks, run_suite
    from harness.store import read_jsonl
    from harness.suites import load_suite
    for key, value in {"RAY_memory_usage_threshold": "0.01", "RAY_memory_monitor_refresh_ms": "100",
                       "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}.items():
        monkeypatch.setenv(key, value)  # read by the cluster's raylet as it starts
    monkeypatch.delenv("RAY_task_oom_retries", raising=False)
    if ray.is_initialized():
        ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})

    def trial_fn(spec, **_):  # nested: pickled by value. Held until the memory monitor kills it
        import time
        time.sleep(120)

    suite = tmp_path / "oom.yaml"
    suite.write_text(yaml.safe_dump({"name": "oom", "fixed": {"seq": "row", "num_layers": 1, "hidden_size": 8,
                                                                "batch_size": 8},
                                     "modes": ["infer"], "devices": ["cpu"], "placement": "shared",
                                     "memory_mb": 1}))
    ended = {}
    sweep = threading.Thread(daemon=True, target=lambda: ended.update(out=run_suite(
        load_suite(suite), out_dir=tmp_path / "r", address=cluster.address, progress=False,
        hooks=Hooks(trial_fn=trial_fn, probe_s=0.2))))
    sweep.start()
    sweep.join(150)
    try:
        assert "out" in ended, "the sweep did not end: the OOM-killed trial is retried without end"
    finally:
        ray.shutdown()
        cluster.shutdown()
    (rec,), _ = read_jsonl(ended["out"].run_dir / "trials.jsonl")
    assert rec["status"] == "failed" and "out of memory" in rec["error"], rec.get("error")
