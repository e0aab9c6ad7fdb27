"""Faults inside a worker during an embedded-Ray sweep: the worker process SIGKILLed mid-trial (Ray retries
the task; the trial ends ok exactly once), and a trial whose model cannot be allocated (recorded failed; the
sweep goes on). Each prints planned / ok / failed / lost / duplicates (lost must be 0)."""
from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest
import yaml

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # before Ray is imported: nodes stay on 127.0.0.1
ray = pytest.importorskip("ray")
psutil = pytest.importorskip("psutil")

from harness.cluster import connect, run_suite  # noqa: E402
from harness.store import latest_by_trial, read_jsonl  # noqa: E402
from harness.suites import load_suite  # noqa: E402
from conftest import sweep_counts  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def embedded_ray():
    if ray.is_initialized():  # left by another module: start our own, with these settings
        ray.shutdown()
    connect(None, num_cpus=2)  # run_suite reuses it
    yield
    ray.shutdown()


def write_suite(tmp_path: Path, doc: dict) -> Path:
    path = tmp_path / f"{doc['name']}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def kill_one_trial_worker(found: dict, stop: threading.Event, match: str, after_s: float = 1.0,
                          timeout_s: float = 240.0) -> None:
    """SIGKILL the first worker process of *this* driver (a descendant: never another session's Ray) whose
    title says it runs a trial matching `match`, once it has run that trial for `after_s`."""
    me = psutil.Process()
    first_seen: dict[tuple[int, str], float] = {}
    deadline = time.time() + timeout_s
    while not stop.is_set() and time.time() < deadline:
        for p in me.children(recursive=True):
            try:
                title = " ".join(p.cmdline()).strip()
            except psutil.Error:
                continue
            if not (title.startswith("ray::trial ") and match in title):  # Ray titles a busy worker ray::<task name>
                continue
            since = first_seen.setdefault((p.pid, title), time.time())
            if time.time() - since >= after_s:
                os.kill(p.pid, signal.SIGKILL)
                found.update(pid=p.pid, trial_id=title.split()[1], title=title, at=time.time())
                return
        time.sleep(0.05)


def test_worker_killed_mid_trial_is_retried_and_ends_ok_exactly_once(tmp_path, embedded_ray):
    # pixel/naive is the slow one (1024 Python-loop steps a batch): the worker is killed while it times it
    doc = {"name": "worker-kill", "axes": {"seq": ["pixel", "row"], "hidden_size": [8, 16, 24]},
           "exclude": [{"seq": "pixel", "hidden_size": 16}, {"seq": "pixel", "hidden_size": 24}],
           "fixed": {"impl": "naive", "num_layers": 1, "batch_size": 8}, "modes": ["infer"], "devices": ["cpu"],
           "cpus_per_trial": 1, "time_budget_s": 3, "sample_plan": "pair", "reruns": 0}  # pair: the driver is tested, not timing
    suite = load_suite(write_suite(tmp_path, doc))
    assert len(suite.trials) == 4
    found, stop = {}, threading.Event()
    killer = threading.Thread(target=kill_one_trial_worker, args=(found, stop, " pixel/"), daemon=True)
    killer.start()
    try:
        out = run_suite(suite, out_dir=tmp_path / "r", progress=False, num_cpus=2)
    finally:
        stop.set()
        killer.join(10)
    assert found, "no trial worker was seen running, so none was killed"
    print(f"\nkilled worker pid {found['pid']} running {found['title']!r}")
    c = sweep_counts(out.run_dir, len(suite.trials))
    assert c == {"planned": 4, "ok": 4, "failed": 0, "lost": 0, "duplicates": 0, "torn": 0}
    assert out.ok == 4 and out.failed == 0
    records, _ = read_jsonl(out.run_dir / "trials.jsonl")
    # one execution, though a drifted node's records are appended again (flag_drifted_nodes): the latest wins
    victim = latest_by_trial(records)[found["trial_id"]]
    assert victim["status"] == "ok" and victim["worker_pid"] != found["pid"], "the retry ran in a new worker"


def _allocation_refused(nbytes: int) -> bool:
    """Would the kernel refuse `nbytes` outright? torch.empty does not touch the pages, so even with
    overcommit this probe uses no memory; the trial would (it initializes the weights)."""
    import torch
    try:
        t = torch.empty(nbytes, dtype=torch.uint8)
    except RuntimeError:
        return True
    del t
    return False


def test_a_trial_that_cannot_allocate_its_model_is_failed_and_the_sweep_goes_on(tmp_path, embedded_ray):
    # hidden 65536 (the harness's upper bound): weight_hh is 4H x H float32 = 64 GiB, more than this machine's
    # RAM + swap, so under the kernel's default heuristic overcommit the allocation is refused at once: a clean
    # RuntimeError ("can't allocate memory"), no OOM killer. Where overcommit would grant it, do not try.
    big = 4 * 65536 * 65536 * 4
    if Path("/proc/sys/vm/overcommit_memory").read_text().strip() == "1" or not _allocation_refused(big):
        pytest.skip("this kernel would grant the allocation (overcommit): the trial would meet the OOM killer")
    doc = {"name": "oom", "axes": {"hidden_size": [8, 65536, 16]},
           "fixed": {"seq": "row", "impl": "cudnn", "num_layers": 1, "batch_size": 8}, "modes": ["infer"],
           "devices": ["cpu"], "cpus_per_trial": 1, "time_budget_s": 0.5, "sample_plan": "pair", "reruns": 0}
    suite = load_suite(write_suite(tmp_path, doc))
    out = run_suite(suite, out_dir=tmp_path / "r", progress=False, num_cpus=2)
    c = sweep_counts(out.run_dir, len(suite.trials))
    assert c == {"planned": 3, "ok": 2, "failed": 1, "lost": 0, "duplicates": 0, "torn": 0}
    records, _ = read_jsonl(out.run_dir / "trials.jsonl")
    print("records:", [(r["hidden_size"], r["status"], r.get("noise_reasons")) for r in records])
    (bad,) = [r for r in latest_by_trial(records).values() if r["status"] != "ok"]
    print(f"failed trial: hidden_size {bad['hidden_size']}: {bad['error'][:160]}")
    assert bad["hidden_size"] == 65536 and bad["status"] == "failed"
    assert "RuntimeError" in bad["error"] and "allocate" in bad["error"], bad["error"]
    assert {r["hidden_size"] for r in records if r["status"] == "ok"} == {8, 16}
