"""The cluster recipes, read and run without a cluster (fast; the live two-host TLS test is in test_netns.py):

- scripts/cluster/kuberay-raycluster.yaml: results on a PersistentVolumeClaim mounted where `--out` writes, a
  NetworkPolicy admitting only the cluster's own pods, the token as a file from a Secret (never an environment
  variable), and no dashboard on 0.0.0.0;
- scripts/cluster/ray-cluster-launcher.yaml: Ray's own launcher validation, dashboard not on 0.0.0.0;
- scripts/make-tls-certs.sh: a CA and per-node certificates whose subjectAltName holds the node IPs;
- scripts/ray-head.sh, scripts/ray-worker.sh: what they hand `ray start` (a stand-in `ray` records its
  arguments and the TLS variables): TLS_DIR turns on RAY_USE_TLS with Ray 2.60's variable names, bad TLS
  folders and a 0.0.0.0 dashboard are refused, every node gets a timing slot.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
KUBERAY = ROOT / "scripts" / "cluster" / "kuberay-raycluster.yaml"
LAUNCHER = ROOT / "scripts" / "cluster" / "ray-cluster-launcher.yaml"
MAKE_CERTS = ROOT / "scripts" / "make-tls-certs.sh"
HEAD_SH = ROOT / "scripts" / "ray-head.sh"
WORKER_SH = ROOT / "scripts" / "ray-worker.sh"
TLS_VARS = ("RAY_USE_TLS", "RAY_TLS_SERVER_CERT", "RAY_TLS_SERVER_KEY", "RAY_TLS_CA_CERT")
EVERYWHERE = {"0.0.0.0", "::", "[::]", ""}


# ---------------------------------------------------------------------------------------------- KubeRay

@pytest.fixture(scope="module")
def kuberay() -> dict:
    docs = [d for d in yaml.safe_load_all(KUBERAY.read_text()) if d]
    by_kind: dict[str, list] = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)
    assert set(by_kind) == {"PersistentVolumeClaim", "NetworkPolicy", "RayCluster"}, sorted(by_kind)
    assert all(len(v) == 1 for v in by_kind.values())
    return {k: v[0] for k, v in by_kind.items()}


def pod_groups(cluster: dict) -> dict[str, dict]:
    """group name ('head', 'cpu', 'gpu') -> {'params': rayStartParams, 'pod': pod spec}."""
    spec = cluster["spec"]
    groups = {"head": {"params": spec["headGroupSpec"]["rayStartParams"], "pod": spec["headGroupSpec"]["template"]["spec"]}}
    for g in spec["workerGroupSpecs"]:
        groups[g["groupName"]] = {"params": g["rayStartParams"], "pod": g["template"]["spec"]}
    return groups


def ray_container(pod: dict) -> dict:
    ray = [c for c in pod["containers"] if c["name"].startswith("ray-")]
    assert len(ray) == 1, [c["name"] for c in pod["containers"]]
    return ray[0]


def test_kuberay_results_live_on_a_persistent_volume_claim_mounted_at_out(kuberay):
    pvc, cluster = kuberay["PersistentVolumeClaim"], kuberay["RayCluster"]
    claim = pvc["metadata"]["name"]
    assert pvc["spec"]["accessModes"] == ["ReadWriteOnce"] and pvc["spec"]["resources"]["requests"]["storage"]
    # the folder the documented job writes to (`lstm-bench run ... --out DIR` in the file's usage lines)
    outs = set(re.findall(r"lstm-bench run \S+ .*--out (\S+)", KUBERAY.read_text()))
    assert len(outs) == 1, outs
    out = outs.pop()
    head = pod_groups(cluster)["head"]["pod"]
    vols = {v["name"]: v for v in head["volumes"]}
    mounts = {m["mountPath"]: m for m in ray_container(head)["volumeMounts"]}
    assert out in mounts, f"--out {out} is not a mount of the head: {sorted(mounts)}"
    assert vols[mounts[out]["name"]].get("persistentVolumeClaim", {}).get("claimName") == claim
    assert not mounts[out].get("readOnly")
    assert head["securityContext"]["fsGroup"] == 100  # the image's user ray (1000:100) can write the claim
    print(f"\nresults: claim {claim} ({pvc['spec']['resources']['requests']['storage']}) at {out} on the head")


def test_kuberay_network_policy_admits_only_the_clusters_own_pods(kuberay):
    policy, cluster = kuberay["NetworkPolicy"], kuberay["RayCluster"]
    own = {"ray.io/cluster": cluster["metadata"]["name"]}  # KubeRay labels every pod of the cluster so
    assert policy["apiVersion"] == "networking.k8s.io/v1"
    assert policy["spec"]["podSelector"] == {"matchLabels": own}
    assert "Ingress" in policy["spec"]["policyTypes"]
    rules = policy["spec"]["ingress"]
    assert rules
    for rule in rules:
        # a rule without `from` (or with an empty one) admits every source; ipBlock/namespaceSelector admit outsiders
        assert rule.get("from"), f"rule admits everyone: {rule}"
        for peer in rule["from"]:
            assert set(peer) == {"podSelector"} and peer["podSelector"] == {"matchLabels": own}, peer
    assert cluster["spec"]["headGroupSpec"]["serviceType"] == "ClusterIP"


def test_kuberay_token_is_a_secret_file_never_an_environment_variable(kuberay):
    groups = pod_groups(kuberay["RayCluster"])
    assert set(groups) == {"head", "cpu", "gpu"}
    for name, g in groups.items():
        pod = g["pod"]
        c = ray_container(pod)
        env = {e["name"]: e for e in c.get("env", [])}
        assert "RAY_AUTH_TOKEN" not in env, f"{name}: token in the environment"
        assert not [e for e in c.get("env", []) if "valueFrom" in e and "secretKeyRef" in e["valueFrom"]], name
        assert not [e for e in c.get("envFrom", []) if "secretRef" in e], name
        assert env["RAY_AUTH_MODE"]["value"] == "token"
        path = Path(env["RAY_AUTH_TOKEN_PATH"]["value"])
        mount = next(m for m in c["volumeMounts"] if path.parent == Path(m["mountPath"]))
        assert mount.get("readOnly") is True, f"{name}: token mount not read-only"
        vol = next(v for v in pod["volumes"] if v["name"] == mount["name"])
        secret = vol["secret"]
        assert secret["secretName"] == "lstm-bench-ray-auth"
        assert {"key": "auth_token", "path": path.name} in secret["items"]
        assert secret["defaultMode"] & 0o007 == 0, f"{name}: token file readable by others ({oct(secret['defaultMode'])})"
    print(f"\ntoken: RAY_AUTH_TOKEN_PATH={path} from Secret lstm-bench-ray-auth in {', '.join(groups)}; "
          "no RAY_AUTH_TOKEN")


def _dashboard_hosts(obj, path="") -> list[tuple[str, str]]:
    """Every dashboard-host value anywhere in a parsed YAML: keys `dashboard-host`/`dashboard_host` and
    `--dashboard-host=X` / `--dashboard-host X` inside strings."""
    found = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            if str(k).replace("_", "-") == "dashboard-host":
                found.append((f"{path}/{k}", str(v)))
            found += _dashboard_hosts(v, f"{path}/{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            found += _dashboard_hosts(v, f"{path}[{i}]")
    elif isinstance(obj, str):
        found += [(path, m) for m in re.findall(r"--dashboard-host[= ]\s*['\"]?([^\s'\"]*)", obj)]
    return found


def test_no_recipe_binds_the_dashboard_to_every_interface(kuberay):
    head_params = pod_groups(kuberay["RayCluster"])["head"]["params"]
    assert head_params["dashboard-host"] in ("127.0.0.1", "localhost")
    hosts = _dashboard_hosts(list(kuberay.values())) + _dashboard_hosts(yaml.safe_load(LAUNCHER.read_text()))
    print("\ndashboard hosts:", hosts)
    assert len(hosts) >= 2 and not [h for h in hosts if h[1] in EVERYWHERE], hosts
    for path in (KUBERAY, LAUNCHER):  # and not in the text (comments, usage lines) either
        assert "0.0.0.0" not in path.read_text(), path


def test_kuberay_workers_offer_a_timing_slot(kuberay):
    for name, g in pod_groups(kuberay["RayCluster"]).items():
        if name != "head":  # no trials on the head (num-cpus 0)
            res = json.loads(json.loads(g["params"]["resources"]))  # KubeRay wants a quoted JSON string
            assert res == {"timing_slot": 1}, (name, res)
    assert pod_groups(kuberay["RayCluster"])["head"]["params"]["num-cpus"] == "0"


def test_launcher_config_passes_rays_validation():
    ray_util = pytest.importorskip("ray.autoscaler._private.util")
    config = ray_util.prepare_config(yaml.safe_load(LAUNCHER.read_text()))
    ray_util.validate_config(config)
    for t in ("ray.worker.cpu", "ray.worker.gpu"):
        assert config["available_node_types"][t]["resources"].get("timing_slot") == 1


# ---------------------------------------------------------------------------------------------- TLS certificates

needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")


def _openssl(*args: str) -> str:
    return subprocess.run(["openssl", *args], capture_output=True, text=True, check=True, timeout=60).stdout


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Path:
    if shutil.which("openssl") is None:
        pytest.skip("needs openssl")
    out = tmp_path_factory.mktemp("tls") / "certs"
    r = subprocess.run(["bash", str(MAKE_CERTS), str(out), "head=10.0.0.5", "worker1=10.0.0.6,w1.internal"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return out


@needs_openssl
def test_make_tls_certs_makes_a_ca_and_per_node_certificates_with_ip_sans(certs):
    assert {p.name for p in certs.iterdir()} == {"ca.crt", "ca.key", "head", "worker1"}
    for node, sans in (("head", ["IP Address:10.0.0.5"]), ("worker1", ["IP Address:10.0.0.6", "DNS:w1.internal"])):
        d = certs / node
        assert {p.name for p in d.iterdir()} == {"ca.crt", "node.crt", "node.key"}  # never the CA's key
        assert "OK" in _openssl("verify", "-CAfile", str(certs / "ca.crt"), str(d / "node.crt"))
        text = _openssl("x509", "-in", str(d / "node.crt"), "-noout", "-text")
        san = re.search(r"Subject Alternative Name:.*?\n\s*(.+)", text).group(1)
        for want in (*sans, "IP Address:127.0.0.1", "DNS:localhost"):
            assert want in san, (node, san)
        assert "TLS Web Server Authentication" in text and "TLS Web Client Authentication" in text
        assert "CA:FALSE" in text
        # the node's certificate matches its key
        assert _openssl("x509", "-in", str(d / "node.crt"), "-noout", "-pubkey") == \
            _openssl("pkey", "-in", str(d / "node.key"), "-pubout")
    for key in (certs / "ca.key", certs / "head" / "node.key", certs / "worker1" / "node.key"):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key
    assert "CA:TRUE" in _openssl("x509", "-in", str(certs / "ca.crt"), "-noout", "-text")


@needs_openssl
def test_make_tls_certs_reuses_the_ca_and_refuses_bad_arguments(tmp_path):
    out = tmp_path / "c"
    assert subprocess.run(["bash", str(MAKE_CERTS), str(out), "a=10.1.1.1"], capture_output=True).returncode == 0
    ca = (out / "ca.crt").read_bytes()
    assert subprocess.run(["bash", str(MAKE_CERTS), str(out), "b=10.1.1.2"], capture_output=True).returncode == 0
    assert (out / "ca.crt").read_bytes() == ca  # a node added later is signed by the same CA
    assert "OK" in _openssl("verify", "-CAfile", str(out / "a" / "ca.crt"), str(out / "b" / "node.crt"))
    for bad in ([], ["x"], ["=10.0.0.1"], ["n="], ["n=bad addr"], ["ca=10.0.0.1"], ["../n=10.0.0.1"]):
        r = subprocess.run(["bash", str(MAKE_CERTS), str(tmp_path / "bad"), *bad], capture_output=True, text=True,
                           timeout=60)
        assert r.returncode != 0 and len(r.stderr.strip().splitlines()) == 1, (bad, r.stderr)
        assert not (tmp_path / "bad").exists(), bad  # checked before anything is written


# ---------------------------------------------------------------------------------------------- ray-head.sh / ray-worker.sh

FAKE_RAY = """#!/usr/bin/env bash
# Stands in for `ray`: records its arguments and the TLS/auth environment as JSON lines.
"$FAKE_RAY_PYTHON" - "$@" >>"$FAKE_RAY_LOG" <<'EOF'
import json, os, sys
keys = ("RAY_USE_TLS", "RAY_TLS_SERVER_CERT", "RAY_TLS_SERVER_KEY", "RAY_TLS_CA_CERT", "RAY_AUTH_MODE")
print(json.dumps({"args": sys.argv[1:], "env": {k: os.environ[k] for k in keys if k in os.environ}}))
EOF
"""


@pytest.fixture
def fake_ray(tmp_path):
    ray = tmp_path / "bin" / "ray"
    ray.parent.mkdir()
    ray.write_text(FAKE_RAY)
    ray.chmod(0o755)
    token = tmp_path / "token"
    token.write_text("t" * 64)
    log = tmp_path / "ray.log"

    def run(script: Path, *args: str, **env: str):
        base = {k: v for k, v in os.environ.items()
                if k not in (*TLS_VARS, "TLS_DIR", "RAY_AUTH_TOKEN", "DASHBOARD", "DASHBOARD_HOST", "TIMING_SLOT")}
        base.update(RAY=str(ray), RAY_AUTH_TOKEN_PATH=str(token), FAKE_RAY_LOG=str(log), FAKE_RAY_PYTHON=sys.executable,
                    HOME=str(tmp_path), **env)
        log.write_text("")
        r = subprocess.run(["bash", str(script), *args], env=base, capture_output=True, text=True, timeout=60)
        calls = [json.loads(line) for line in log.read_text().splitlines()]
        return r, calls
    return run


def _flag(args: list[str], name: str) -> str | None:
    for i, a in enumerate(args):
        if a.startswith(name + "="):
            return a.split("=", 1)[1]
        if a == name and i + 1 < len(args):
            return args[i + 1]
    return None


@needs_openssl
def test_ray_scripts_turn_on_tls_from_tls_dir(fake_ray, certs):
    head_dir, worker_dir = certs / "head", certs / "worker1"
    r, calls = fake_ray(HEAD_SH, "10.0.0.5", TLS_DIR=str(head_dir))
    assert r.returncode == 0, r.stderr
    (start,) = calls
    assert start["args"][0] == "start" and "--head" in start["args"]
    assert start["env"] == {"RAY_USE_TLS": "1", "RAY_TLS_SERVER_CERT": str(head_dir / "node.crt"),
                            "RAY_TLS_SERVER_KEY": str(head_dir / "node.key"),
                            "RAY_TLS_CA_CERT": str(head_dir / "ca.crt"), "RAY_AUTH_MODE": "token"}
    # the dashboard's HTTP is outside Ray's TLS: loopback by default then
    assert _flag(start["args"], "--dashboard-host") == "127.0.0.1"
    assert "RAY_USE_TLS=1" in r.stdout and "TLS" in r.stdout

    r, calls = fake_ray(WORKER_SH, "10.0.0.5", "10.0.0.6", "--num-gpus", "1", TLS_DIR=str(worker_dir))
    assert r.returncode == 0, r.stderr
    assert calls[0]["env"]["RAY_USE_TLS"] == "1"
    assert calls[0]["env"]["RAY_TLS_SERVER_CERT"] == str(worker_dir / "node.crt")
    assert "with TLS" in r.stdout

    # without TLS_DIR: no TLS variables, dashboard on the node's own address
    r, calls = fake_ray(HEAD_SH, "10.0.0.5")
    assert r.returncode == 0, r.stderr
    assert not set(calls[0]["env"]) & set(TLS_VARS)
    assert _flag(calls[0]["args"], "--dashboard-host") == "10.0.0.5"


@needs_openssl
def test_ray_scripts_refuse_bad_tls_folders(fake_ray, certs, tmp_path):
    partial = tmp_path / "partial"
    partial.mkdir()
    shutil.copy(certs / "head" / "ca.crt", partial / "ca.crt")
    open_key = tmp_path / "open"
    shutil.copytree(certs / "head", open_key)
    (open_key / "node.key").chmod(0o644)
    cases = {"missing": (str(tmp_path / "nope"), "is not a folder"), "partial": (str(partial), "no "),
             "open key": (str(open_key), "chmod 600")}
    for what, (tls_dir, why) in cases.items():
        for script, args in ((HEAD_SH, ["10.0.0.5"]), (WORKER_SH, ["10.0.0.5", "10.0.0.6"])):
            r, calls = fake_ray(script, *args, TLS_DIR=tls_dir)
            assert r.returncode != 0 and not calls, (what, script.name, r.stderr)
            assert why in r.stderr and len(r.stderr.strip().splitlines()) == 1, (what, r.stderr)
    # RAY_USE_TLS set by hand without its files: refused before Ray starts
    r, calls = fake_ray(WORKER_SH, "10.0.0.5", "10.0.0.6", RAY_USE_TLS="1")
    assert r.returncode != 0 and not calls and "RAY_TLS_SERVER_CERT" in r.stderr


def test_ray_head_refuses_a_dashboard_on_every_interface(fake_ray):
    for host in ("0.0.0.0", "::"):
        r, calls = fake_ray(HEAD_SH, "10.0.0.5", DASHBOARD_HOST=host)
        assert r.returncode == 2 and not calls and "every interface" in r.stderr, r.stderr
    r, calls = fake_ray(HEAD_SH, "10.0.0.5", DASHBOARD="0")
    assert r.returncode == 0 and _flag(calls[0]["args"], "--include-dashboard") == "false"
    assert _flag(calls[0]["args"], "--dashboard-host") is None


def test_ray_scripts_give_every_node_a_timing_slot(fake_ray):
    cases = [([], {"timing_slot": 1}), (["--resources", "{}"], {"timing_slot": 1}),
             (["--resources", '{"bigmem": 2}'], {"timing_slot": 1, "bigmem": 2}),
             (['--resources={"bigmem": 2}'], {"timing_slot": 1, "bigmem": 2}),
             (["--resources", '{"timing_slot": 3}'], {"timing_slot": 3})]
    for extra, want in cases:
        for script, args in ((HEAD_SH, ["10.0.0.5"]), (WORKER_SH, ["10.0.0.5", "10.0.0.6"])):
            r, calls = fake_ray(script, *args, *extra)
            assert r.returncode == 0, r.stderr
            assert json.loads(_flag(calls[0]["args"], "--resources")) == want, (script.name, extra, calls[0]["args"])
    r, calls = fake_ray(WORKER_SH, "10.0.0.5", "10.0.0.6", TIMING_SLOT="0")
    assert _flag(calls[0]["args"], "--resources") is None


def test_netns_state_folder_must_be_ours_alone(tmp_path):
    """netns-cluster.sh runs as root and keeps the cluster's token in its state folder: no predictable /tmp
    default, and a symlink, a group/other-accessible folder or one owned by someone else is refused."""
    script = ROOT / "scripts" / "netns-cluster.sh"
    assert "/tmp/lb-netns" not in script.read_text()

    def state(path: Path):  # "bogus": the state check runs first, then the usage line (exit 2)
        r = subprocess.run(["bash", str(script), "bogus"], env={**os.environ, "LB_NETNS_STATE": str(path)},
                           capture_output=True, text=True, timeout=20)
        return r.returncode, r.stderr

    assert state(tmp_path / "new")[0] == 2 and not (tmp_path / "new").exists()  # absent: fine, `up` makes it
    ours = tmp_path / "ours"
    ours.mkdir(mode=0o700)
    assert state(ours)[0] == 2
    (tmp_path / "link").symlink_to(ours)
    assert state(tmp_path / "link") == (1, f"netns-cluster: {tmp_path / 'link'} is a symlink: refusing "
                                           f"(LB_NETNS_STATE must be a real directory)\n")
    ours.chmod(0o755)
    code, err = state(ours)
    assert code == 1 and "mode 755" in err
    if os.geteuid() == 0:
        ours.chmod(0o700)
        os.chown(ours, 65534, 65534)
        code, err = state(ours)
        assert code == 1 and "owned by uid 65534" in err


def test_kuberay_token_never_goes_on_a_command_line():
    """The header's recipe makes the Secret from a mode-600 file (--from-file), never --from-literal: a token in
    argv is visible to every local user through ps and lands in shell history."""
    header = [ln for ln in (ROOT / "scripts" / "cluster" / "kuberay-raycluster.yaml").read_text().splitlines()
              if ln.startswith("#")]
    text = "\n".join(header)
    assert "--from-literal" not in text
    make = next(ln for ln in header if "secrets.token_hex" in ln)
    assert "umask 077" in make and "> ~/.ray/lstm-bench-token" in make
    assert any("kubectl create secret generic lstm-bench-ray-auth --from-file=auth_token=" in ln for ln in header)


def test_benchmark_gate_never_runs_a_forks_code():
    """The gate runs on a persistent self-hosted runner: only by hand or for labelled same-repo pull requests;
    never pull_request_target (which would run with the base's secrets on a fork's request)."""
    wf = yaml.safe_load((ROOT / "scripts" / "ci" / "benchmark-gate.yml").read_text())
    triggers = wf.get("on", wf.get(True))  # YAML 1.1 reads the key `on` as True
    assert set(triggers) <= {"pull_request", "workflow_dispatch"}
    cond = " ".join(wf["jobs"]["gate"]["if"].split())
    assert "github.event.pull_request.head.repo.full_name == github.repository" in cond
    assert "contains(github.event.pull_request.labels.*.name, 'benchmark')" in cond
    assert "self-hosted" in wf["jobs"]["gate"]["runs-on"] and wf["permissions"] == {"contents": "read"}
