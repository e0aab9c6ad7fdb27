"""Security properties: embedded Ray listens on loopback only; the CIFAR reader runs no pickled code; results
are JSON/Parquet, never pickles; and nothing in harness/ unpickles except the CIFAR reader's restricted
unpickler. (tests/test_cifar.py covers the CIFAR reader in depth, including that the hostile payloads used
there really do run under plain pickle: test_hostile_payload_is_real.)"""
from __future__ import annotations

import ast
import ipaddress
import os
import pickle
import struct
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # before Ray is imported: nodes stay on 127.0.0.1
ray = pytest.importorskip("ray")
psutil = pytest.importorskip("psutil")

from harness.cifar import restricted_load  # noqa: E402
from harness.cluster import connect, run_suite  # noqa: E402
from harness.errors import DataError  # noqa: E402
from harness.store import read_jsonl  # noqa: E402
from harness.suites import load_suite  # noqa: E402

HARNESS = Path(__file__).resolve().parents[1] / "harness"


@pytest.fixture(scope="module")
def embedded_ray():
    """One embedded Ray for this module (connect() is what `lstm-bench run` uses without --address)."""
    if ray.is_initialized():  # left by another module: start our own, with these settings
        ray.shutdown()
    connect(None, num_cpus=1)
    yield
    ray.shutdown()


def _is_loopback(ip: str) -> bool:
    addr = ipaddress.ip_address(ip.split("%")[0])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:  # ::ffff:127.0.0.1
        addr = addr.ipv4_mapped
    return addr.is_loopback


def ray_processes() -> list[psutil.Process]:
    """This driver, its descendants (gcs_server, raylet, agents, workers) and anything else whose command
    line names this Ray session's directory."""
    session_dir = ray._private.worker._global_node.get_session_dir_path()
    me = psutil.Process()
    procs = {me.pid: me}
    procs.update({p.pid: p for p in me.children(recursive=True)})
    for p in psutil.process_iter(["pid", "cmdline"]):
        if session_dir in " ".join(p.info["cmdline"] or []):
            procs.setdefault(p.pid, p)
    return list(procs.values())


def describe(p: psutil.Process) -> str:
    """gcs_server, raylet, ray::DashboardAgent, ray::IDLE, python monitor.py, ..."""
    if p.pid == os.getpid():
        return "driver (pytest)"
    cmd = p.cmdline()
    if not cmd:
        return p.name()
    if cmd[0].startswith("ray::"):
        return cmd[0].split()[0]
    script = next((Path(a).name for a in cmd[1:4] if a.endswith(".py")), "")
    return f"{Path(cmd[0]).name} {script}".strip()


def listening(procs) -> list[tuple[int, str, str, int]]:
    rows = []
    for p in procs:
        try:
            name = describe(p)
            for c in p.net_connections(kind="tcp"):
                if c.status == psutil.CONN_LISTEN:
                    rows.append((p.pid, name, c.laddr.ip, c.laddr.port))
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
    return sorted(rows, key=lambda r: (r[1], r[3]))


def test_embedded_ray_listens_on_loopback_only(embedded_ray):
    assert ray.get(ray.remote(lambda x: x + 1).remote(41), timeout=120) == 42  # a worker is up and serving
    time.sleep(2)  # the agents open their ports a little after start-up
    rows = listening(ray_processes())
    print("\nlistening TCP sockets of this embedded Ray (pid, process, address, port):")
    for pid, name, ip, port in rows:
        print(f"  {pid:>7} {name:<28} {ip}:{port}")
    names = {r[1] for r in rows}
    assert {"gcs_server", "raylet"} <= names, f"expected Ray's servers among {names}"
    exposed = [r for r in rows if not _is_loopback(r[2])]
    print(f"checked: {len(rows)} listening sockets in {len({r[0] for r in rows})} Ray processes, "
          f"{len(exposed)} beyond loopback")
    assert not exposed, f"listening beyond loopback: {exposed}"


def _global_call(module: str, name: str, arg: str) -> bytes:
    """Protocol-2 pickle of module.name(arg), as in tests/test_cifar.py."""
    a = arg.encode()
    return b"\x80\x02c" + f"{module}\n{name}\n".encode() + b"X" + struct.pack("<I", len(a)) + a + b"\x85R."


class _CheckCall:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import subprocess
        return (subprocess.check_call, (["touch", str(self.marker)],))


class _System:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_cifar_reader_refuses_code_running_pickles(tmp_path):
    marker = tmp_path / "pwned"
    payloads = {
        "os.system": _global_call("os", "system", f"touch {marker}"),
        "builtins.exec": _global_call("builtins", "exec", f"open({str(marker)!r}, 'w').close()"),
        "subprocess.check_call": pickle.dumps({"data": _CheckCall(marker)}, protocol=4),
        # hidden inside an object array, behind the numpy globals the reader does allow: refused even
        # earlier, at the object dtype (only plain integer dtypes are unpickled), before posix.system is named
        "posix.system": pickle.dumps({"data": np.array([_System(marker)], dtype=object)}, protocol=4),
    }
    expected = {"posix.system": "refusing numpy dtype 'O8'"}
    for kind, payload in payloads.items():
        with pytest.raises(DataError) as info:
            restricted_load(payload, "data_batch_1")
        msg = str(info.value)
        assert "\n" not in msg and expected.get(kind, f"refusing pickle global {kind}") in msg, (kind, msg)
        assert not marker.exists(), f"the {kind} payload ran"
    print(f"\nchecked: {len(payloads)} hostile pickles ({', '.join(payloads)}) refused, none ran")
    pickle.loads(payloads["posix.system"])  # not vacuous: plain pickle does run it (harmless: touch)
    assert marker.exists()


@pytest.mark.slow
def test_results_are_json_and_parquet_never_pickles(tmp_path, embedded_ray):
    s = {"name": "formats", "axes": {"impl": ["cudnn", "naive"]},
         "fixed": {"seq": "row", "hidden_size": 8, "num_layers": 1, "batch_size": 8}, "modes": ["infer"],
         "devices": ["cpu"], "cpus_per_trial": 1, "time_budget_s": 0.3, "sample_plan": "pair", "reruns": 0}
    path = tmp_path / "formats.yaml"  # pair plan, no reruns: the files are what is tested, not the timings
    path.write_text(yaml.safe_dump(s))
    suite = load_suite(path)
    out = run_suite(suite, out_dir=tmp_path / "r", progress=False, num_cpus=1)
    recs, _ = read_jsonl(out.run_dir / "trials.jsonl")
    print(f"\n{out.run_dir.name}: planned {out.planned}, ok {out.ok}, failed {out.failed}, "
          f"lost {out.planned - len({r['trial_id'] for r in recs})}")
    assert out.ok == 2 and out.failed == 0
    allowed = (".json", ".jsonl", ".parquet", ".png", ".csv", ".md", ".html", ".gz")
    files = [p for p in out.run_dir.rglob("*") if p.is_file()]
    print("files:", sorted(str(p.relative_to(out.run_dir)) for p in files))
    assert {"run.json", "trials.jsonl", "trials.parquet"} <= {p.name for p in files}
    for p in files:
        assert (p.name.endswith(allowed) or p.name == "driver.lock") and not p.name.endswith((".pkl", ".pickle")), p
        assert not p.read_bytes()[:1] == b"\x80", f"{p} starts with the pickle magic"
    print(f"checked: {len(files)} files, none a pickle")


UNPICKLING = {("pickle", "load"), ("pickle", "loads"), ("pickle", "Unpickler"), ("cloudpickle", "load"),
              ("cloudpickle", "loads"), ("torch", "load"), ("dill", "load"), ("dill", "loads"),
              ("joblib", "load"), ("pd", "read_pickle"), ("pandas", "read_pickle"), ("np", "load"),
              ("numpy", "load"), ("ray.cloudpickle", "loads"), ("ray.cloudpickle", "load")}


def _dotted(node) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return "?"


def test_no_unpickling_in_harness_except_the_restricted_cifar_reader():
    """Read harness/*.py as text: no pickle.load(s)/torch.load/cloudpickle.load/... calls (nor `from pickle
    import load`), in every module and subpackage; harness/unpickle.py may only subclass pickle.Unpickler (its
    RestrictedUnpickler, which the CIFAR-10 reader uses)."""
    found = []
    for path in sorted(HARNESS.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Call, ast.ClassDef)):
                targets = [node.func] if isinstance(node, ast.Call) else node.bases
                for t in targets:
                    name = _dotted(t)
                    mod, _, attr = name.rpartition(".")
                    if name in ("np.load", "numpy.load") and not any(  # np.load is safe unless allow_pickle
                            k.arg == "allow_pickle" and not (isinstance(k.value, ast.Constant) and not k.value.value)
                            for k in getattr(node, "keywords", [])):
                        continue
                    if (mod, attr) in UNPICKLING or attr in ("read_pickle",):
                        if path.name == "unpickle.py" and isinstance(node, ast.ClassDef) and name == "pickle.Unpickler":
                            continue  # RestrictedUnpickler(pickle.Unpickler): find_class allows numpy only
                        found.append(f"{path.name}:{node.lineno}: {name}")
            if isinstance(node, ast.ImportFrom) and node.module in ("pickle", "cloudpickle", "dill", "torch"):
                bad = [a.name for a in node.names if a.name in ("load", "loads", "Unpickler")]
                found += [f"{path.name}:{node.lineno}: from {node.module} import {b}" for b in bad]
        # belt and braces: the plain-text grep the AST check stands for
        text = path.read_text(encoding="utf-8")
        for needle in ("pickle.load(", "pickle.loads(", "torch.load(", "cloudpickle.load"):
            if needle in text:
                found.append(f"{path.name}: text contains {needle!r}")
    print(f"\nchecked: {len(list(HARNESS.rglob('*.py')))} harness files, unpickling calls: {found or 'none'}")
    assert not found, found
    src = (HARNESS / "unpickle.py").read_text()
    assert "class RestrictedUnpickler(pickle.Unpickler)" in src and "def find_class" in src


def test_embedded_ray_gets_token_auth_with_a_private_token(tmp_path, monkeypatch):
    """Ray 2.59+ turns token auth on for a new local cluster but writes ~/.ray/auth_token with the umask's mode
    (0644): connect() makes it 600 first (or narrows an existing one); ray.init is stubbed (no Ray started)."""
    import ray

    from harness import nodes
    from harness.errors import HarnessError
    monkeypatch.setenv("HOME", str(tmp_path))
    for var in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.setenv(var, "")  # recorded, so what connect() sets is undone after the test
        monkeypatch.delenv(var)
    seen = {}

    def fake_init(**kw):
        seen["mode"] = os.environ.get("RAY_AUTH_MODE")
        raise RuntimeError("stubbed")
    monkeypatch.setattr(ray, "init", fake_init)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    with pytest.raises(HarnessError, match="stubbed"):
        nodes.connect(None, num_cpus=1)
    token = tmp_path / ".ray" / "auth_token"
    assert seen["mode"] is None and token.stat().st_mode & 0o777 == 0o600 and len(token.read_text()) == 64
    token.chmod(0o644)  # a token Ray wrote earlier under umask 022
    with pytest.raises(HarnessError, match="stubbed"):
        nodes.connect(None, num_cpus=1)
    assert token.stat().st_mode & 0o777 == 0o600 and len(token.read_text()) == 64
