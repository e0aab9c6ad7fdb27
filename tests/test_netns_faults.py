"""Faults on the two-host namespace cluster of scripts/netns-cluster.sh (lb-head 10.213.77.1, lb-worker
10.213.77.2), while a sweep runs from lb-head (`lstm-bench run ... --address 10.213.77.1:6379`):

- a short cut of the veth link (5 s, inside Ray's node-death detection): the worker node stays;
- a long cut, until the GCS declares the worker dead (health checks shortened for that cluster only, through
  RAY_health_check_* in the environment of `netns-cluster.sh up`, which `ray start` inherits in both
  namespaces): the head finishes the sweep, the worker's raylet exits once the link is back;
- SIGKILL to every process in lb-worker: the trial running there is retried on the head (max_retries), and
  the cuda trials queued for the worker, the only GPU node (a fake GPU), end infeasible once it is dead.

Each time the sweep itself must survive, with no --resume: every planned trial ok exactly once (or, for
the cuda trials, infeasible once), no failed record, none lost. Each test prints `planned N, ok N, failed N, lost N`, the trials per host and a timeline
around the fault, brings the cluster down in a finally and checks that no namespace and no process remains.

Needs root and working `ip netns` (skipped otherwise, like tests/test_netns.py, whose helpers it reuses);
uses the same namespace names, so it cannot run alongside tests/test_netns.py. All traffic stays between the
two namespaces.
"""
import contextlib
import datetime
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import sweep_executions
import yaml

from test_netns import (BIN, HEAD_IP, NAMESPACES, SCRIPT, WORKER_IP, _alive, _namespaces, _ns_pids,
                        _processes_mentioning, _script, _skip_reason)

# One host-wide set of namespaces and one state folder: these tests run one at a time, on one xdist worker.
pytestmark = [pytest.mark.netns, pytest.mark.slow, pytest.mark.xdist_group("netns")]

WORKER_IF = "lb-veth-w"


# ---------------------------------------------------------------------------------------------- helpers

@contextlib.contextmanager
def netns_cluster(**ray_env: str):
    """`up` a fresh two-host cluster (ray_env: extra environment for its Ray processes); always `down` it,
    then check that no namespace and no process of it is left."""
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    state = tempfile.mkdtemp(prefix="lbns-", dir="/tmp")  # short: Ray's unix socket paths live under it
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "RAY_ADDRESS", "RAY_AUTH_TOKEN", "RAY_PORT")}
    env.update(LB_BIN=str(BIN), LB_NETNS_STATE=state, LB_NETNS_TIMEOUT="60", **ray_env)
    c = SimpleNamespace(env=env, state=Path(state), seen_pids=set())
    try:
        _script("down", env=env, timeout=90)  # leftovers of an earlier, killed run
        up = _script("up", env=env, timeout=150)
        assert up.returncode == 0, "netns-cluster.sh up failed"
        c.seen_pids |= _ns_pids("lb-head") | _ns_pids("lb-worker")
        yield c
        print(gcs_node_events(c.state))
    finally:
        down = _script("down", env=env, timeout=90)
        shutil.rmtree(state, ignore_errors=True)
    assert down.returncode == 0, "netns-cluster.sh down failed"
    assert not (_namespaces() & set(NAMESPACES)), f"namespaces left: {_namespaces() & set(NAMESPACES)}"
    deadline = time.time() + 10
    while (left := [p for p in c.seen_pids if _alive(p)] + _processes_mentioning(state)) and time.time() < deadline:
        time.sleep(0.2)
    assert not left, f"processes left after down: {left}"
    assert c.seen_pids, "saw no processes in the namespaces"


def worker_declared_dead(state: Path) -> bool:
    """The head's GCS has marked a node dead (here only the worker can be)."""
    log = state / "ray-head/session_latest/logs/gcs_server.out"
    text = log.read_text(errors="replace") if log.exists() else ""
    return "Node is dead because" in text or "has been marked dead" in text


def gcs_node_events(state: Path) -> str:
    """The head GCS's log lines about nodes dying or failing health checks (what Ray made of the fault)."""
    lines = []
    for log in sorted(state.glob("ray-head/session_latest/logs/gcs_server.out")):
        for line in log.read_text(errors="replace").splitlines():
            if "CheckDeadSubscribers" not in line and re.search(
                    r"health check|marked dead|node.{0,40}(dead|removed|failed)|unhealthy|draining", line, re.I):
                lines.append(line[:300])
    return "--- head GCS, node events:\n" + ("\n".join(lines[-15:]) or "(none)")


def write_suite(tmp_path: Path, name: str, hidden: list[int], cuda_hidden: int | None = None) -> Path:
    """len(hidden) x 2 short CPU infer trials, one CPU each: both hosts (one CPU each) stay busy. With
    cuda_hidden, 2 cuda trials at that hidden size come last (queued behind every CPU trial: the driver keeps
    at most 4 in flight here, so they are still in its queue when a fault hits early)."""
    extra = [] if cuda_hidden is None else [cuda_hidden]
    suite = {"name": name, "axes": {"hidden_size": hidden + extra, "impl": ["cudnn", "naive"]},
             "fixed": {"seq": "row", "num_layers": 1, "batch_size": 32}, "modes": ["infer"],
             "devices": ["cpu", "cuda"] if extra else ["cpu"],
             "data": "synthetic", "cpus_per_trial": 1, "time_budget_s": 1, "sample_plan": "pair", "reruns": 0}
    if extra:
        suite["exclude"] = [{"hidden_size": h, "device": "cuda"} for h in hidden] + [
            {"hidden_size": cuda_hidden, "device": "cpu"}]
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(suite))
    return path


def read_records(out: Path, name: str) -> list[dict]:
    recs = []
    for path in out.glob(f"{name}/*/trials.jsonl"):
        for line in path.read_text(errors="replace").splitlines():
            try:
                recs.append(json.loads(line))
            except ValueError:  # a line being written
                pass
    return recs


def start_sweep(c, suite_path: Path, out: Path, log: Path) -> subprocess.Popen:
    """`lstm-bench run SUITE --address 10.213.77.1:6379` inside lb-head (through `netns-cluster.sh run`)."""
    c.t_sweep, c.out, c.name, c.arrived = time.time(), out, yaml.safe_load(suite_path.read_text())["name"], {}
    with log.open("w") as fh:
        return subprocess.Popen(["bash", str(SCRIPT), "run", str(suite_path), str(out), "--no-progress", "--quiet"],
                                env=c.env, stdout=fh, stderr=subprocess.STDOUT, text=True)


def wait_for(c, what: str, pred, driver: subprocess.Popen, timeout: float):
    """Poll pred() (noting the namespaces' processes) until it is true; fail if the driver ends first."""
    deadline = time.time() + timeout
    while True:
        note_arrivals(c)
        value = pred()
        if value:
            return value
        assert driver.poll() is None, f"the sweep ended (rc {driver.returncode}) before: {what}"
        assert time.time() < deadline, f"timed out after {timeout:g}s waiting for: {what}"
        time.sleep(0.3)


def ray_titles(ns: str) -> list[str]:
    """Titles of the Ray worker processes in namespace ns: `ray::<task name>` while busy, `ray::TrialClock`
    for the harness's start-clock actor, `ray::IDLE` otherwise."""
    found = []
    for pid in _ns_pids(ns):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if cmd.startswith("ray::"):
            found.append(cmd.replace("\0", " ").strip())
    return found


def running_trials(ns: str) -> set[str]:
    """trial_ids executing in namespace ns now (the harness names each task `trial <trial_id> ...`)."""
    return {m.group(1) for t in ray_titles(ns) if (m := re.match(r"ray::trial (\S+)", t))}


def clock_host(c) -> str:
    return ", ".join(ns for ns in NAMESPACES if any(t.startswith("ray::TrialClock") for t in ray_titles(ns)))


def note_arrivals(c) -> None:
    """Remember the namespaces' processes, when each record first appeared in trials.jsonl and when the GCS
    declared the worker dead."""
    c.seen_pids |= _ns_pids("lb-head") | _ns_pids("lb-worker")
    if getattr(c, "t_fault", None) and not getattr(c, "t_dead", None) and worker_declared_dead(c.state):
        c.t_dead = time.time()
    for r in read_records(c.out, c.name):
        c.arrived.setdefault((r["trial_id"], r["status"]), time.time())


def finish_sweep(c, driver: subprocess.Popen, log: Path, timeout: float, rc_wanted: int = 0) -> None:
    deadline = time.time() + timeout
    while (rc := driver.poll()) is None and time.time() < deadline:
        note_arrivals(c)
        time.sleep(0.3)
    if rc is None:
        driver.kill()
        driver.wait(timeout=30)
    note_arrivals(c)
    text = log.read_text(errors="replace")
    print(f"--- sweep driver: rc {rc} after {time.time() - c.t_sweep:.1f}s\n{text[-3000:]}")
    assert rc == rc_wanted, f"the sweep did not finish as it should (rc {rc}, not {rc_wanted})"


def check_outcome(c, suite_path: Path, infeasible: set[str] = frozenset()) -> tuple[dict, Counter]:
    """Prints planned / ok / failed / lost, trials per host and a timeline around the fault (seconds after
    it: when each trial started, when its record reached trials.jsonl); asserts every trial ok exactly once
    (those in `infeasible`: recorded infeasible once, never run), nothing failed, nothing lost."""
    from harness.suites import load_suite
    planned = {s.trial_id for s in load_suite(suite_path).trials} - infeasible
    recs = read_records(c.out, c.name)
    _, ok, _ = sweep_executions(recs)  # ok executions per trial (a drifted node re-records, it does not rerun)
    ended_infeasible = Counter(r["trial_id"] for r in recs if r["status"] == "infeasible")
    assert dict(ended_infeasible) == dict.fromkeys(infeasible, 1), f"infeasible records: {dict(ended_infeasible)}"
    not_ok = [r for r in recs if r["status"] != "ok" and r["trial_id"] not in infeasible]
    lost = planned - {r["trial_id"] for r in recs}
    hosts = Counter(r.get("node_ip") for r in recs if r["status"] == "ok")
    print(f"{c.name}: planned {len(planned)}, ok {sum(ok.values())}, failed {len(not_ok)}, lost {len(lost)}; "
          f"ok per host: {dict(hosts)}")
    t0 = getattr(c, "t_fault", c.t_sweep)
    for r in sorted(recs, key=lambda r: r.get("started_at") or ""):
        start = datetime.datetime.fromisoformat(r["started_at"]).timestamp() - t0 if r.get("started_at") else None
        seen = c.arrived.get((r["trial_id"], r["status"]))
        print(f"  {r['trial_id']} {r['status']:7} on {r.get('node_ip')}: started {_rel(start)}, ran "
              f"{r.get('duration_s') or 0:4.1f}s, recorded {_rel(seen - t0 if seen else None)} (s after the fault)")
    for r in not_ok:
        print(f"  not ok: {r['trial_id']} {r['status']} on {r.get('node_ip')}: {r.get('error')}")
    assert not lost, f"lost: {sorted(lost)}"
    assert not not_ok, f"not ok records: {[(r['trial_id'], r['status']) for r in not_ok]}"
    assert set(ok) == planned and all(n == 1 for n in ok.values()), f"ok per trial: {dict(ok)}"
    run_json = json.loads(next(c.out.glob(f"{c.name}/*/run.json")).read_text())
    assert run_json["status"] == "finished" and run_json["ok"] == len(planned), run_json
    assert run_json["infeasible"] == len(infeasible), run_json
    return {r["trial_id"]: r for r in recs}, hosts


def _rel(t: float | None) -> str:
    return "   ?  " if t is None else f"{t:+6.1f}"


def _utc(t: float) -> str:
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).isoformat()


def ip_link(ns: str, ifc: str, state: str) -> None:
    subprocess.run(["ip", "-n", ns, "link", "set", ifc, state], check=True, timeout=30)


def raylet_pids(ns: str) -> set[int]:
    found = set()
    for pid in _ns_pids(ns):
        try:
            if b"raylet/raylet" in Path(f"/proc/{pid}/cmdline").read_bytes() and _alive(pid):
                found.add(pid)
        except OSError:
            pass
    return found


# ------------------------------------------------------------------------------------------------ tests

def _sweep_until_worker_busy(c, suite_path: Path, tmp_path: Path):
    """Start the sweep; return once 2 trials are recorded and one is running on the worker host."""
    driver = start_sweep(c, suite_path, tmp_path / "results", tmp_path / "driver.log")
    wait_for(c, "2 trials recorded", lambda: len(read_records(c.out, c.name)) >= 2, driver, 120)
    busy = wait_for(c, "a trial running on the worker", lambda: running_trials("lb-worker"), driver, 30)
    print(f"--- {len(read_records(c.out, c.name))} trials recorded; running on the worker: {sorted(busy)}; "
          f"the harness's TrialClock actor is in: {clock_host(c) or '?'}")
    return driver, busy


@contextlib.contextmanager
def _driver(driver: subprocess.Popen):
    try:
        yield driver
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait(timeout=30)


@pytest.mark.timeout(200)
def test_short_link_cut_sweep_survives_and_worker_node_stays(tmp_path):
    """The veth is down for 5 s, well inside Ray's node-death detection (defaults: a health check every 3 s,
    dead after 5 failures in a row): the node stays in the cluster, the trial running there finishes and its
    result arrives once the link is back, and the sweep ends with every trial ok once."""
    suite_path = write_suite(tmp_path, "netns-link-cut", [8, 16, 24, 32, 40])
    with netns_cluster() as c:
        raylet = raylet_pids("lb-worker")
        assert raylet, "no raylet in lb-worker"
        driver, busy = _sweep_until_worker_busy(c, suite_path, tmp_path)
        with _driver(driver):
            c.t_fault = time.time()
            ip_link("lb-worker", WORKER_IF, "down")
            try:
                time.sleep(5)
            finally:
                ip_link("lb-worker", WORKER_IF, "up")
            print(f"--- link lb-veth-w down at {_utc(c.t_fault)}, up after {time.time() - c.t_fault:.1f}s")
            finish_sweep(c, driver, tmp_path / "driver.log", 150)
        raylet_survived = raylet_pids("lb-worker") == raylet
        declared_dead = worker_declared_dead(c.state)
    by_id, hosts = check_outcome(c, suite_path)
    print(f"trial(s) cut off on the worker ended on: {[(t, by_id[t].get('node_ip')) for t in sorted(busy)]}; "
          f"worker raylet survived: {raylet_survived}; worker declared dead by the GCS: {declared_dead}")
    assert raylet_survived and not declared_dead, "a 5 s link cut cost the worker node"
    assert set(hosts) == {HEAD_IP, WORKER_IP}, f"trials did not run on both hosts: {dict(hosts)}"


FAST_DEATH = {"RAY_health_check_initial_delay_ms": "1000", "RAY_health_check_period_ms": "1000",
              "RAY_health_check_timeout_ms": "1000", "RAY_health_check_failure_threshold": "3"}


@pytest.mark.timeout(200)
def test_long_link_cut_worker_declared_dead_sweep_finishes_on_head(tmp_path):
    """The veth stays down until the GCS declares the worker node dead (health checks shortened for this
    cluster to ~3-4 s, RAY_health_check_*), and a moment longer. The head runs the rest of the sweep; once the
    link is back the worker's raylet learns it was declared dead and exits (Ray never lets a dead node back).
    Every trial ok once: a trial cut off on the worker is rerun on the head, or, if it had finished there,
    its result still counts once."""
    suite_path = write_suite(tmp_path, "netns-long-cut", [8, 16, 24, 32])
    with netns_cluster(**FAST_DEATH) as c:
        raylet = raylet_pids("lb-worker")
        assert raylet, "no raylet in lb-worker"
        driver, busy = _sweep_until_worker_busy(c, suite_path, tmp_path)
        with _driver(driver):
            c.t_fault = time.time()
            ip_link("lb-worker", WORKER_IF, "down")
            try:
                wait_for(c, "the GCS to declare the worker dead", lambda: worker_declared_dead(c.state), driver, 30)
                t_dead = time.time() - c.t_fault
                time.sleep(2)
            finally:
                ip_link("lb-worker", WORKER_IF, "up")
            print(f"--- link lb-veth-w down at {_utc(c.t_fault)}; worker declared dead after {t_dead:.1f}s; "
                  f"link up after {time.time() - c.t_fault:.1f}s")
            finish_sweep(c, driver, tmp_path / "driver.log", 150)
        deadline = time.time() + 20
        while raylet_pids("lb-worker") and time.time() < deadline:
            time.sleep(0.3)
        raylet_left = raylet_pids("lb-worker")
        exit_line = [line for f in c.state.glob("ray-worker/session_latest/logs/raylet.out")
                     for line in f.read_text(errors="replace").splitlines() if "marked as dead" in line]
        print("worker raylet:", "still running" if raylet_left else "exited", "|", (exit_line or ["?"])[0][:220])
    by_id, hosts = check_outcome(c, suite_path)
    print(f"trial(s) cut off on the worker ended on: {[(t, by_id[t].get('node_ip')) for t in sorted(busy)]}")
    assert not raylet_left, "the worker's raylet kept running after the GCS declared its node dead"
    assert hosts[HEAD_IP] >= 1


@pytest.mark.timeout(200)
def test_worker_host_processes_killed_trials_retried_on_head_gpu_trials_end_infeasible(tmp_path):
    """Every process in lb-worker (raylet, its workers, agents) gets SIGKILL mid-sweep: the trial running there
    fails as a system failure, Ray retries it (max_retries) on the head, which keeps one CPU, and the sweep
    itself ends with every CPU trial ok once (no --resume): none a timeout, though the retry queues behind the
    others on the head (its deadline starts when it starts). Ray's default health checks: the owner sees the
    worker's connection drop well before the GCS declares the node dead.
    The worker is also the cluster's only GPU node (it declares one fake GPU, LB_NETNS_WORKER_GPUS=1), and 2
    cuda trials wait at the end of the queue: once the GCS declares the worker dead, they end infeasible,
    naming the dead node, within a poll interval (issue 19: before, they waited for a GPU forever)."""
    from harness.cluster import POLL_S
    suite_path = write_suite(tmp_path, "netns-worker-kill", [8, 16, 24, 32, 40, 48], cuda_hidden=56)  # 12 + 2
    with netns_cluster(LB_NETNS_WORKER_GPUS="1") as c:
        driver, busy = _sweep_until_worker_busy(c, suite_path, tmp_path)
        with _driver(driver):
            # again, just before the kill: a trial running there and not recorded yet
            busy = wait_for(c, "an unrecorded trial running on the worker", lambda: running_trials("lb-worker") - {
                r["trial_id"] for r in read_records(c.out, c.name)}, driver, 30)
            victims = _ns_pids("lb-worker")
            c.seen_pids |= victims
            c.t_fault = time.time()
            for pid in victims:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            wait_for(c, "lb-worker empty", lambda: not [p for p in _ns_pids("lb-worker") if _alive(p)], driver, 15)
            print(f"--- SIGKILLed {len(victims)} process(es) in lb-worker at {_utc(c.t_fault)}, trial(s) running "
                  f"there: {sorted(busy)}")
            finish_sweep(c, driver, tmp_path / "driver.log", 150, rc_wanted=1)  # 1: trials not run (infeasible)
    recs = read_records(c.out, c.name)
    cuda_ids = {r["trial_id"] for r in recs if r.get("device", "").startswith("cuda")}
    by_id, hosts = check_outcome(c, suite_path, infeasible=cuda_ids)
    print(f"trial(s) killed on the worker ended on: {[(t, by_id[t].get('node_ip')) for t in sorted(busy)]}")
    assert all(by_id[t]["node_ip"] == HEAD_IP for t in busy), "a trial killed on the worker was not rerun on the head"
    assert len(cuda_ids) == 2 and all("died" in by_id[t]["error"] and "GPU" in by_id[t]["error"] for t in cuda_ids)
    assert getattr(c, "t_dead", None), "the GCS never declared the worker dead"
    last = max(c.arrived[(t, "infeasible")] for t in cuda_ids)
    print(f"worker declared dead {c.t_dead - c.t_fault:.1f} s after the kill; the cuda trials' infeasible "
          f"records {last - c.t_dead:+.2f} s after that: {by_id[sorted(cuda_ids)[0]]['error']}")
    assert last - c.t_dead <= POLL_S + 2.0, "the GPU trials were not ended at the first poll after the node died"
