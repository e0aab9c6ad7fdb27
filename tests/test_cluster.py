"""Sweeps through Ray on loopback clusters: trials on every node, a node lost mid-sweep, a driver killed
mid-sweep and resumed. Each test prints planned / ok / failed / lost counts (lost must be 0)."""
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # before Ray starts: nodes stay on 127.0.0.1
ray = pytest.importorskip("ray")
from ray.cluster_utils import Cluster  # noqa: E402

from harness.cluster import run_suite  # noqa: E402
from harness.store import read_jsonl  # noqa: E402
from harness.suites import load_suite  # noqa: E402
from conftest import sweep_counts  # noqa: E402

pytestmark = pytest.mark.slow


def write_suite(tmp_path: Path, name: str, n_hidden=(8, 16), budget=0.5, data="synthetic", **extra) -> Path:
    suite = {"name": name, "axes": {"hidden_size": list(n_hidden), "impl": ["cudnn", "naive", "lstmcell"]},
             "fixed": {"seq": "row", "num_layers": 1, "batch_size": 16}, "modes": ["train", "infer"],
             "devices": ["cpu"], "cpus_per_trial": 1, "time_budget_s": budget, "data": data,
             "sample_plan": "pair", "reruns": 0, **extra}  # the pair plan: ~1.5 s a trial, not ~7 s (these test the driver)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(suite))
    return path


@pytest.fixture
def cluster():
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "resources": {"node_a": 1, "timing_slot": 1}})
    c.add_node(num_cpus=1, resources={"node_b": 1, "timing_slot": 1})
    c.wait_for_nodes()
    yield c
    ray.shutdown()
    c.shutdown()


def test_two_node_sweep_uses_both_nodes_and_shares_data_through_object_store(cluster, tmp_path, tiny_cifar):
    from harness.cifar import load_cifar10
    suite = load_suite(write_suite(tmp_path, "two-node", data="cifar10"))
    out = run_suite(suite, out_dir=tmp_path / "results", address=cluster.address, progress=False,
                    data_root=str(tiny_cifar), allow_unofficial=True)
    c = sweep_counts(out.run_dir, len(suite.trials))
    assert c["ok"] == c["planned"] == 12 and c["lost"] == 0 and c["duplicates"] == 0
    records, _ = read_jsonl(out.run_dir / "trials.jsonl")
    nodes = Counter(r["node_id"] for r in records)
    print("trials per node:", dict(nodes))
    assert len(nodes) == 2, "every trial ran on one node"
    assert {r["node_ip"] for r in records} == {"127.0.0.1"}
    # The workers got the driver's copy through the object store (the tiny set, not a copy they found).
    tag = load_cifar10(str(tiny_cifar), allow_unofficial=True).source
    assert {r["dataset"] for r in records} == {tag}
    meta = json.loads((out.run_dir / "run.json").read_text())
    assert meta["ok"] == 12 and meta["failed"] == 0 and len(meta["nodes"]) == 2
    assert (out.run_dir / "trials.parquet").exists()


def test_node_removed_mid_sweep_every_trial_ok_exactly_once(tmp_path):
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "resources": {"timing_slot": 1}})
    doomed = c.add_node(num_cpus=1, resources={"doomed": 1, "timing_slot": 1})
    c.wait_for_nodes()
    try:
        suite = load_suite(write_suite(tmp_path, "node-loss", n_hidden=(8, 16, 24), budget=1.0))
        run_dir_holder = {}

        def remove_when_busy():
            # wait until the sweep has results, then take the second node away with its running trial
            deadline = time.time() + 120
            while time.time() < deadline:
                runs = list((tmp_path / "results" / "node-loss").glob("*/trials.jsonl"))
                if runs and len(runs[0].read_text().splitlines()) >= 3:
                    run_dir_holder["removed_at"] = len(runs[0].read_text().splitlines())
                    c.remove_node(doomed)
                    return
                time.sleep(0.2)

        killer = threading.Thread(target=remove_when_busy)
        killer.start()
        out = run_suite(suite, out_dir=tmp_path / "results", address=c.address, progress=False)
        killer.join()
        assert "removed_at" in run_dir_holder, "the node was never removed"
        cnt = sweep_counts(out.run_dir, len(suite.trials))
        assert cnt["lost"] == 0 and cnt["duplicates"] == 0 and cnt["failed"] == 0
        assert cnt["ok"] == len(suite.trials) == 18
    finally:
        ray.shutdown()
        c.shutdown()


def test_the_only_gpu_node_dies_its_trials_end_infeasible_and_the_sweep_ends(tmp_path):
    """Issue 19 items 2 and 3: the one node with a GPU (Ray's GPU resource; the trials are stand-ins through the
    hooks, so no CUDA is needed) is removed mid-sweep. Its queued and pending cuda trials end infeasible, naming
    the dead node, within a poll or so of Ray declaring it dead; a cpu trial lost with it is retried on the head;
    nothing is a timeout, nothing is lost, the run finishes. Before the fix the cuda trials waited for a GPU
    forever (here: the watchdog interrupts the sweep and the status check fails)."""
    import _thread

    from harness.cluster import POLL_S, Hooks
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "resources": {"timing_slot": 1}})
    gpu_node = c.add_node(num_cpus=1, num_gpus=1, resources={"timing_slot": 1})
    c.wait_for_nodes()
    path = write_suite(tmp_path, "gpu-loss", n_hidden=(8, 16, 24), modes=["infer"],
                       devices=["cpu", "cuda"])
    suite = load_suite(path)
    cuda_ids = {s.trial_id for s in suite.trials if s.device.startswith("cuda")}

    def trial_fn(spec, extra=None, **_):  # nested: pickled by value
        import time

        from harness.schema import TrialResult
        time.sleep(1.5 if spec.device.startswith("cuda") else 0.5)
        return TrialResult(record={**spec.flat(), **(extra or {}), "status": "ok", "img_per_s": 1.0})

    seen = {}

    def remove_after_first_gpu_result():
        deadline = time.time() + 60
        while time.time() < deadline and "dead_at" not in seen:
            recs = [r for f in (tmp_path / "results" / "gpu-loss").glob("*/trials.jsonl")
                    for r in read_jsonl(f)[0]]
            if any(r["trial_id"] in cuda_ids for r in recs):
                c.remove_node(gpu_node)
                while any(n["NodeID"] == gpu_node.node_id and n["Alive"] for n in ray.nodes()):
                    time.sleep(0.05)
                seen["dead_at"] = time.time()
            time.sleep(0.1)
        while time.time() < deadline:  # when did every cuda trial have its record?
            recs = [r for f in (tmp_path / "results" / "gpu-loss").glob("*/trials.jsonl") for r in read_jsonl(f)[0]]
            if {r["trial_id"] for r in recs} >= cuda_ids:
                seen["cuda_done_at"] = time.time()
                return
            time.sleep(0.05)
        _thread.interrupt_main()  # the sweep hangs: stop it (it ends "interrupted", which the test refuses)

    watcher = threading.Thread(target=remove_after_first_gpu_result, daemon=True)
    watcher.start()
    try:
        out = run_suite(suite, out_dir=tmp_path / "results", address=c.address, progress=False, hang_grace_s=1,
                        hooks=Hooks(trial_fn=trial_fn, probe_s=0.1))
        watcher.join(30)
        meta = json.loads((out.run_dir / "run.json").read_text())
        latest = {r["trial_id"]: r for r in read_jsonl(out.run_dir / "trials.jsonl")[0]}
        infeasible = sorted(t for t, r in latest.items() if r["status"] == "infeasible")
        delay = seen["cuda_done_at"] - seen["dead_at"]
        print(f"\n{len(infeasible)} of {len(cuda_ids)} cuda trials infeasible, the last {delay:.2f} s after Ray "
              f"declared the node dead; statuses {Counter(r['status'] for r in latest.values())}")
        cnt = sweep_counts(out.run_dir, len(suite.trials))
        assert meta["status"] == "finished" and cnt["lost"] == 0 and cnt["duplicates"] == 0
        assert infeasible and set(infeasible) <= cuda_ids
        assert all(r["status"] == "ok" for t, r in latest.items() if t not in infeasible)  # no timeout, no failure
        assert all("died" in latest[t]["error"] and "GPU" in latest[t]["error"] for t in infeasible)
        assert meta["infeasible"] == len(infeasible) and meta["ok"] == len(suite.trials) - len(infeasible)
        assert delay <= POLL_S + 2.0, "stranded trials were not ended at the first poll after the node died"
    finally:
        ray.shutdown()
        c.shutdown()


def test_a_head_with_no_cpus_gets_no_probe_and_trials_start_without_waiting_for_one(tmp_path):
    """Issue 19 item 6 on a real (loopback) cluster: a 0-CPU head, as KubeRay and the launcher recipes start it,
    gets no ceiling probe (one pinned there could never run and held every run 120 s at its start and its end):
    the first trial starts within seconds of run_suite being called, and the run ends as soon as its trials do."""
    import datetime as dt

    from harness.cluster import Hooks
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    c.add_node(num_cpus=1, resources={"timing_slot": 1})
    c.wait_for_nodes()

    def trial_fn(spec, extra=None, **_):  # nested: pickled by value
        import datetime as dt

        from harness.schema import TrialResult
        return TrialResult(record={**spec.flat(), **(extra or {}), "status": "ok", "img_per_s": 1.0,
                                   "started_at": dt.datetime.now(dt.timezone.utc).isoformat()})

    try:
        suite = load_suite(write_suite(tmp_path, "cpu-less-head", n_hidden=(8,), modes=["infer"]))
        t0 = time.time()
        out = run_suite(suite, out_dir=tmp_path / "results", address=c.address, progress=False,
                        hooks=Hooks(trial_fn=trial_fn, probe_s=0.1))
        took = time.time() - t0
        recs, _ = read_jsonl(out.run_dir / "trials.jsonl")
        first = min(dt.datetime.fromisoformat(r["started_at"]).timestamp() for r in recs) - t0
        meta = json.loads((out.run_dir / "run.json").read_text())
        print(f"\nfirst trial started {first:.2f} s after run_suite was called; the run took {took:.2f} s; "
              f"probed nodes: {sorted(meta['ceilings'])}")
        assert sweep_counts(out.run_dir, len(suite.trials))["ok"] == len(suite.trials) == 3
        assert len(meta["ceilings"]) == 1 and len(meta["nodes"]) == 2  # only the worker was probed
        # 3.99 s on this 2-core VM, quiet (issue 19 asks for 5 s); 18.5 s under 4 workers (`pytest -n 4` at 31ff149).
        # The bound leaves room for that and still fails the bug, which held the start and the end 120 s each
        assert first < 60.0 and took < 100.0
    finally:
        ray.shutdown()
        c.shutdown()


def test_driver_killed_then_resume_completes_without_rerunning_ok_trials(tmp_path):
    path = write_suite(tmp_path, "killed", n_hidden=(8, 16), budget=1.0)  # 12 trials: killed after 4 or more
    suite = load_suite(path)
    out = tmp_path / "results"
    cmd = [sys.executable, "-m", "harness.cli", "run", str(path), "--out", str(out), "--no-progress", "--quiet",
           "--num-cpus", "2"]
    env = dict(os.environ, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
    driver = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 180
        trials = None
        while time.time() < deadline:
            found = list(out.glob("killed/*/trials.jsonl"))
            if found and len(found[0].read_text().splitlines()) >= 4:
                trials = found[0]
                break
            time.sleep(0.2)
        assert trials is not None, "the driver wrote no results in time"
        os.killpg(driver.pid, signal.SIGKILL)  # the driver and the embedded Ray it started
        driver.wait(30)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    before, _ = read_jsonl(trials)
    ok_before = {r["trial_id"]: r["started_at"] for r in before if r["status"] == "ok"}
    assert 4 <= len(ok_before) < len(suite.trials)

    run_id = trials.parent.name
    res = subprocess.run(cmd + ["--resume", run_id], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    c = sweep_counts(trials.parent, len(suite.trials))
    assert c["lost"] == 0 and c["duplicates"] == 0 and c["ok"] == len(suite.trials)
    after, _ = read_jsonl(trials)
    for r in after:  # trials that were ok before the kill were not run again
        if r["trial_id"] in ok_before:
            assert r["started_at"] == ok_before[r["trial_id"]]
    meta = json.loads((trials.parent / "run.json").read_text())
    assert meta["skipped_already_ok"] == len(ok_before) and meta["status"] == "finished"


def test_profiles_made_on_workers_come_back_to_the_driver(cluster, tmp_path):
    import pandas as pd
    path = tmp_path / "prof.yaml"
    path.write_text(yaml.safe_dump({"name": "prof", "axes": {"impl": ["cudnn", "naive"]},
                                    "fixed": {"seq": "row", "hidden_size": 16, "num_layers": 1, "batch_size": 8},
                                    "modes": ["profile"], "devices": ["cpu"], "cpus_per_trial": 1}))
    suite = load_suite(path)
    out = run_suite(suite, out_dir=tmp_path / "results", address=cluster.address, progress=False)
    c = sweep_counts(out.run_dir, len(suite.trials))
    assert c["ok"] == 2 and c["lost"] == 0
    records, _ = read_jsonl(out.run_dir / "trials.jsonl")
    assert all("_artifacts" not in r and "_kernels" not in r for r in records)  # bytes never reach the JSONL
    for r in records:
        traces = list((out.run_dir / "profiles" / r["trial_id"]).glob("*.pt.trace.json*"))
        assert traces and traces[0].stat().st_size > 1000
    kernels = pd.read_parquet(out.run_dir / "kernels.parquet")
    assert set(kernels["trial_id"]) == {r["trial_id"] for r in records}
    by_impl = {r["impl"]: r["launches_per_step"] for r in records}
    assert by_impl["naive"] > 3 * by_impl["cudnn"]
