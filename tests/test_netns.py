"""A sweep across two hosts, for real: scripts/netns-cluster.sh makes two network namespaces (lb-head at
10.213.77.1, lb-worker at 10.213.77.2, joined by a veth pair), a Ray node in each with token authentication
(started by scripts/ray-head.sh and scripts/ray-worker.sh), and runs `lstm-bench run` inside lb-head. Every
trial must come back ok exactly once, trials must run on both hosts, and afterwards no namespace and no process
of the cluster may remain. The same with TLS (LB_TLS=1: scripts/make-tls-certs.sh, TLS_DIR): drivers without
a certificate from the cluster's CA are refused, and the smoke suite runs on both hosts.

Needs root and working `ip netns` (skipped otherwise, with the reason). All traffic stays between the two
namespaces: their /24 has no route anywhere else.
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import pytest
from conftest import sweep_executions
import yaml

# One host-wide set of namespaces and one state folder: these tests run one at a time, on one xdist worker.
pytestmark = [pytest.mark.netns, pytest.mark.slow, pytest.mark.xdist_group("netns")]

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "netns-cluster.sh"
BIN = Path(sys.executable).parent  # the venv's bin: its ray and lstm-bench run the project's Python (not resolved)
NAMESPACES = ("lb-head", "lb-worker")
HEAD_IP, WORKER_IP = "10.213.77.1", "10.213.77.2"


def _skip_reason() -> str | None:
    if not sys.platform.startswith("linux"):
        return "network namespaces are Linux only"
    if os.geteuid() != 0:
        return "needs root (ip netns)"
    if shutil.which("ip") is None:
        return "needs iproute2 (no ip command)"
    for tool in ("ray", "lstm-bench"):
        if not (BIN / tool).exists():
            return f"no {tool} next to {sys.executable}"
    probe = f"lb-probe-{os.getpid()}"
    add = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True, timeout=30)
    if add.returncode != 0:
        return f"ip netns add does not work here: {add.stderr.strip() or add.returncode}"
    run = subprocess.run(["ip", "netns", "exec", probe, "ip", "link", "set", "lo", "up"],
                         capture_output=True, text=True, timeout=30)
    subprocess.run(["ip", "netns", "del", probe], capture_output=True, timeout=30)
    if run.returncode != 0:
        return f"ip netns exec does not work here: {run.stderr.strip() or run.returncode}"
    return None


def _namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=30).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def _ns_pids(ns: str) -> set[int]:
    if ns not in _namespaces():
        return set()
    out = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True, timeout=30).stdout
    return {int(p) for p in out.split()}


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for its parent to reap it is not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and int(d.name) != os.getpid():
            try:
                if text in (d / "cmdline").read_bytes().decode(errors="replace") and _alive(int(d.name)):
                    found.append(int(d.name))
            except OSError:
                pass
    return found


def _script(action: str, *args: str, env: dict, timeout: float) -> subprocess.CompletedProcess:
    t0 = time.time()
    res = subprocess.run(["bash", str(SCRIPT), action, *args], env=env, capture_output=True, text=True,
                         timeout=timeout)
    print(f"--- netns-cluster.sh {action}: rc {res.returncode} in {time.time() - t0:.1f}s")
    print(res.stdout[-4000:], res.stderr[-4000:], sep="\n")
    return res


def write_suite(tmp_path: Path) -> Path:
    suite = {"name": "netns-two-host", "axes": {"impl": ["cudnn", "naive", "lstmcell"]},
             "fixed": {"seq": "row", "hidden_size": 16, "num_layers": 1, "batch_size": 32},
             "modes": ["train", "infer"], "devices": ["cpu"], "data": "synthetic", "cpus_per_trial": 1,
             "time_budget_s": 1, "sample_plan": "pair", "reruns": 0}
    path = tmp_path / "netns-two-host.yaml"
    path.write_text(yaml.safe_dump(suite))
    return path


@pytest.mark.timeout(420)
def test_sweep_over_two_network_namespaces_runs_on_both_hosts_and_cleans_up(tmp_path):
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    from harness.suites import load_suite

    suite_path = write_suite(tmp_path)
    planned = {s.trial_id for s in load_suite(suite_path).trials}
    out = tmp_path / "results"
    # Short: Ray's unix sockets live under it (paths over ~107 bytes fail).
    state = tempfile.mkdtemp(prefix="lbns-", dir="/tmp")
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "RAY_ADDRESS", "RAY_AUTH_TOKEN", "RAY_PORT")}
    env.update(LB_BIN=str(BIN), LB_NETNS_STATE=state, LB_NETNS_TIMEOUT="60")

    t0 = time.time()
    seen_pids: set[int] = set()
    try:
        _script("down", env=env, timeout=90)  # leftovers of an earlier, killed run
        up = _script("up", env=env, timeout=150)
        assert up.returncode == 0, "netns-cluster.sh up failed"
        seen_pids |= _ns_pids("lb-head") | _ns_pids("lb-worker")
        # Meanwhile a driver with a wrong token must be turned away (Ray retries for ~20 s, hence in parallel).
        wrong = tmp_path / "wrong_token"
        wrong.write_text("0" * 64)
        intruder = subprocess.Popen(
            ["ip", "netns", "exec", "lb-head", "env", "RAY_AUTH_MODE=token", f"RAY_AUTH_TOKEN_PATH={wrong}",
             str(BIN / "lstm-bench"), "run", str(suite_path), "--address", f"{HEAD_IP}:6379",
             "--out", str(tmp_path / "intruder"), "--no-progress", "--quiet"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            run = _script("run", str(suite_path), str(out), "--no-progress", "--quiet", env=env, timeout=180)
            seen_pids |= _ns_pids("lb-head") | _ns_pids("lb-worker")
            intruder_out, _ = intruder.communicate(timeout=120)
        finally:
            if intruder.poll() is None:
                intruder.kill()
                intruder.wait(timeout=30)
        assert run.returncode == 0, "lstm-bench run in lb-head failed"
        print(f"--- driver with a wrong token: rc {intruder.returncode}: {intruder_out.strip().splitlines()[-1:]}")
        assert intruder.returncode != 0 and "cannot connect to Ray" in intruder_out, intruder_out[-2000:]
        assert "InvalidAuthToken" in intruder_out or "uthenticat" in intruder_out, intruder_out[-2000:]
        assert not list((tmp_path / "intruder").glob("*/*/trials.jsonl"))
    finally:
        down = _script("down", env=env, timeout=90)
        shutil.rmtree(state, ignore_errors=True)
    elapsed = time.time() - t0

    # Cleanup first: nothing of the cluster may outlive the test.
    assert down.returncode == 0
    assert not (_namespaces() & set(NAMESPACES)), f"namespaces left: {_namespaces() & set(NAMESPACES)}"
    deadline = time.time() + 10
    while (left := [p for p in seen_pids if _alive(p)] + _processes_mentioning(state)) and time.time() < deadline:
        time.sleep(0.2)
    assert not left, f"processes left after down: {left}"
    assert seen_pids, "saw no processes in the namespaces"

    run_dirs = list(out.glob("netns-two-host/*/trials.jsonl"))
    assert len(run_dirs) == 1, run_dirs
    records = [json.loads(line) for line in run_dirs[0].read_text().splitlines() if line.strip()]
    latest, ok, hosts = sweep_executions(records)
    status = Counter(r["status"] for r in latest.values())
    print(f"netns sweep: {len(planned)} planned, {status['ok']} ok, {len(latest) - status['ok']} failed "
          f"({len(records)} records); executions per host: {dict(hosts)}; {elapsed:.0f}s up+run+down")
    assert set(ok) == planned and all(n == 1 for n in ok.values()), f"ok executions per trial: {dict(ok)}"
    assert set(latest) == planned and status["ok"] == len(planned), f"latest status per trial: {status}"
    assert set(hosts) == {HEAD_IP, WORKER_IP}, f"trials did not run on both hosts: {dict(hosts)}"
    meta = json.loads((run_dirs[0].parent / "run.json").read_text())
    assert meta["status"] == "finished" and meta["ok"] == len(planned)
    assert sorted(n["node_ip"] for n in meta["nodes"]) == [HEAD_IP, WORKER_IP]


def _cleanup_checks(down: subprocess.CompletedProcess, seen_pids: set[int], state: str) -> None:
    assert down.returncode == 0
    assert not (_namespaces() & set(NAMESPACES)), f"namespaces left: {_namespaces() & set(NAMESPACES)}"
    deadline = time.time() + 10
    while (left := [p for p in seen_pids if _alive(p)] + _processes_mentioning(state)) and time.time() < deadline:
        time.sleep(0.2)
    assert not left, f"processes left after down: {left}"
    assert seen_pids, "saw no processes in the namespaces"


@pytest.mark.timeout(600)
def test_tls_two_hosts_refuse_drivers_without_the_ca_and_run_the_smoke_suite(tmp_path):
    """LB_TLS=1: every Ray process runs with RAY_USE_TLS=1 and its host's certificate (scripts/ray-head.sh and
    scripts/ray-worker.sh with TLS_DIR). Two drivers holding the right token are turned away while the smoke
    suite runs: one without TLS, one whose certificate and CA come from another CA. Ray retries a GCS it
    cannot reach for minutes; RAY_gcs_server_port_wait_time_s=1 (Ray's own knob, in those two drivers only)
    makes them give up after one attempt (about 45 s)."""
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    if shutil.which("openssl") is None:
        pytest.skip("needs openssl (scripts/make-tls-certs.sh)")
    from harness.suites import load_suite

    smoke = ROOT / "suites" / "smoke.yaml"
    planned = {s.trial_id for s in load_suite(smoke, overrides={"cpus_per_trial": 1, "sample_plan": "pair"}).trials}
    out = tmp_path / "results"
    state = tempfile.mkdtemp(prefix="lbns-", dir="/tmp")  # short: Ray's unix socket paths live under it
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "RAY_ADDRESS", "RAY_AUTH_TOKEN", "RAY_PORT", "TLS_DIR",
                        "RAY_USE_TLS", "RAY_TLS_SERVER_CERT", "RAY_TLS_SERVER_KEY", "RAY_TLS_CA_CERT")}
    env.update(LB_BIN=str(BIN), LB_NETNS_STATE=state, LB_NETNS_TIMEOUT="60", LB_TLS="1")
    # Another CA's certificate for the head's own address: valid in every way but the issuer.
    rogue = tmp_path / "rogue"
    subprocess.run(["bash", str(ROOT / "scripts" / "make-tls-certs.sh"), str(rogue), f"head={HEAD_IP}"],
                   check=True, capture_output=True, timeout=120)
    intruder_env = {"plain": [], "other CA": [
        "RAY_USE_TLS=1", f"RAY_TLS_SERVER_CERT={rogue}/head/node.crt", f"RAY_TLS_SERVER_KEY={rogue}/head/node.key",
        f"RAY_TLS_CA_CERT={rogue}/head/ca.crt"]}

    t0 = time.time()
    seen_pids: set[int] = set()
    intruders: dict[str, subprocess.Popen] = {}
    results: dict[str, str] = {}
    try:
        _script("down", env=env, timeout=90)  # leftovers of an earlier, killed run
        up = _script("up", env=env, timeout=150)
        assert up.returncode == 0, "netns-cluster.sh up failed"
        seen_pids |= _ns_pids("lb-head") | _ns_pids("lb-worker")
        head_log = (Path(state) / "head.log").read_text()
        worker_log = (Path(state) / "worker.log").read_text()
        assert "with token authentication and TLS" in head_log, head_log[-2000:]
        assert "with TLS" in worker_log, worker_log[-2000:]
        tls = Path(state) / "tls"
        # The GCS port speaks TLS with the head's certificate from the cluster's CA.
        s_client = subprocess.run(
            ["ip", "netns", "exec", "lb-head", "openssl", "s_client", "-connect", f"{HEAD_IP}:6379",
             "-CAfile", str(tls / "ca.crt"), "-verify_return_error", "-brief"],
            input="", capture_output=True, text=True, timeout=30)
        print(f"--- openssl s_client {HEAD_IP}:6379: {s_client.stderr.strip().splitlines()[:6]}")
        assert "Verification: OK" in s_client.stderr or "Verify return code: 0" in s_client.stderr + s_client.stdout
        assert "CN = head" in s_client.stderr + s_client.stdout or "CN=head" in s_client.stderr + s_client.stdout
        for name, extra in intruder_env.items():
            intruders[name] = subprocess.Popen(
                ["ip", "netns", "exec", "lb-head", "env", "-u", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER",
                 "RAY_AUTH_MODE=token", f"RAY_AUTH_TOKEN_PATH={state}/auth_token", "RAY_gcs_server_port_wait_time_s=1",
                 *extra, str(BIN / "lstm-bench"), "run", str(smoke), "--set", "cpus_per_trial=1",
                 "--address", f"{HEAD_IP}:6379", "--out", str(tmp_path / "intruder"), "--no-progress", "--quiet"],
                env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            # the pair plan: ~1.5 s a trial, not ~10 s (this tests TLS and the two hosts, not the timings)
            run = _script("run", str(smoke), str(out), "--set", "cpus_per_trial=1", "--set", "sample_plan=pair",
                          "--set", "reruns=0", "--no-progress", "--quiet",
                          env=env, timeout=360)
            seen_pids |= _ns_pids("lb-head") | _ns_pids("lb-worker")
            for name, p in intruders.items():
                results[name] = p.communicate(timeout=240)[0]
        finally:
            for p in intruders.values():
                if p.poll() is None:
                    p.kill()
                    p.wait(timeout=30)
        gcs_err = Path(state) / "ray-head" / "session_latest" / "logs" / "gcs_server.err"
        gcs_text = gcs_err.read_text(errors="replace") if gcs_err.exists() else ""
        assert run.returncode == 0, "lstm-bench run suites/smoke.yaml in lb-head failed"
    finally:
        down = _script("down", env=env, timeout=90)
        shutil.rmtree(state, ignore_errors=True)
    elapsed = time.time() - t0
    _cleanup_checks(down, seen_pids, state)

    for name, text in results.items():
        rc = intruders[name].returncode
        print(f"--- driver with the token but {name}: rc {rc}: {text.strip().splitlines()[-1:]}")
        assert rc != 0 and "cannot connect to Ray" in text, (name, text[-2000:])
    assert "CERTIFICATE_VERIFY_FAILED" in results["other CA"], results["other CA"][-2000:]
    # the head saw the plain driver's bytes where a TLS handshake belonged
    assert "WRONG_VERSION_NUMBER" in gcs_text or "Handshake failed" in gcs_text, gcs_text[-2000:]
    assert not list((tmp_path / "intruder").glob("*/*/trials.jsonl"))

    run_dirs = list(out.glob("smoke/*/trials.jsonl"))
    assert len(run_dirs) == 1, run_dirs
    records = [json.loads(line) for line in run_dirs[0].read_text().splitlines() if line.strip()]
    latest, ok, hosts = sweep_executions(records)
    status = Counter(r["status"] for r in latest.values())
    meta = json.loads((run_dirs[0].parent / "run.json").read_text())
    print(f"TLS netns smoke: {len(planned)} planned, {status['ok']} ok, {len(latest) - status['ok']} not ok "
          f"({len(records)} records); executions per host: {dict(hosts)}; {elapsed:.0f}s up+run+down")
    assert set(ok) == planned and all(n == 1 for n in ok.values()), f"ok executions per trial: {dict(ok)}"
    assert set(latest) == planned and status["ok"] == len(planned), f"latest status per trial: {status}"
    assert set(hosts) == {HEAD_IP, WORKER_IP}, f"trials did not run on both hosts: {dict(hosts)}"
    assert meta["status"] == "finished"
    assert sorted(n["node_ip"] for n in meta["nodes"]) == [HEAD_IP, WORKER_IP]
