"""The environment a result was measured in, recorded on every result record.

Everything here runs on the worker that runs the trial, so a record names the hardware and code that
measured it: `hw_fingerprint` hashes the hardware parts (HW_PARTS), `code_version` the harness source
this process imported. What cannot change inside a process is computed once and cached.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import socket
import sys
import subprocess
from collections.abc import Mapping
from pathlib import Path

import torch

PROJECT_ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DIR = Path(__file__).resolve().parent

# What hw_fingerprint covers, in this order; the GPU parts are null on CPU trials.
HW_PARTS = ("cpu_model", "cpu_physical_cores", "smt", "mem_gb", "gpu_name", "gpu_uuid", "gpu_driver",
            "cuda_version", "cudnn_version", "torch_version")
GPU_PARTS = ("gpu_name", "gpu_uuid", "gpu_driver")
SMI_FIELDS = ("index", "uuid", "name", "driver_version", "memory.total")


@functools.lru_cache(maxsize=1)
def git_commit() -> str:
    """The project's commit; LSTM_BENCH_COMMIT (set by the Ray driver for its workers) wins, since a worker
    node may run an installed copy without a .git folder."""
    if os.environ.get("LSTM_BENCH_COMMIT"):
        return os.environ["LSTM_BENCH_COMMIT"]
    try:
        out = subprocess.run(["git", "-C", str(PROJECT_ROOT), "rev-parse", "--short=12", "HEAD"],
                             check=False, capture_output=True, text=True, timeout=5)
        commit = out.stdout.strip() or "unknown"
        dirty = subprocess.run(["git", "-C", str(PROJECT_ROOT), "status", "--porcelain", "--untracked-files=no"],
                               check=False, capture_output=True, text=True, timeout=5).stdout.strip()
        return commit + ("-dirty" if dirty and commit != "unknown" else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def tree_hash(package_dir: str | Path) -> str:
    """12 hex chars of sha256 over every .py file below package_dir (subpackages included): each file's
    relative path and bytes, in sorted path order."""
    root = Path(package_dir)
    h = hashlib.sha256()
    for rel in sorted(p.relative_to(root).as_posix() for p in root.rglob("*.py") if p.is_file()):
        data = (root / rel).read_bytes()
        h.update(f"{rel}\0{len(data)}\0".encode())
        h.update(data)
    return h.hexdigest()[:12]


@functools.lru_cache(maxsize=1)
def _own_code_version() -> str:
    return code_version(PACKAGE_DIR)


def code_version(package_dir: str | Path | None = None) -> str:
    """The harness code this process imported: tree_hash of the package, plus "+git:<commit>" when the commit
    is known. The default (this package) is computed once per process; a given folder is hashed on every call."""
    if package_dir is None:
        return _own_code_version()
    commit = git_commit()
    return tree_hash(package_dir) + ("" if commit == "unknown" else f"+git:{commit}")


def _read(path: str | Path) -> str | None:
    try:
        return Path(path).read_text()
    except OSError:
        return None


@functools.lru_cache(maxsize=1)
def cpu_model() -> str:
    for line in (_read("/proc/cpuinfo") or "").splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def physical_cores_of(cpuinfo: str) -> int | None:
    """Distinct (physical id, core id) pairs in /proc/cpuinfo text; None when it names none."""
    pairs, block = set(), {}
    for line in cpuinfo.splitlines() + [""]:
        if not line.strip():
            if "core id" in block:
                pairs.add((block.get("physical id", "0"), block["core id"]))
            block = {}
        elif ":" in line:
            key, value = line.split(":", 1)
            block[key.strip()] = value.strip()
    return len(pairs) or None


@functools.lru_cache(maxsize=1)
def cpu_physical_cores() -> int | None:
    cores = physical_cores_of(_read("/proc/cpuinfo") or "")
    if cores is None:
        try:
            import psutil
            cores = psutil.cpu_count(logical=False)
        except ImportError:
            pass
    return cores or os.cpu_count()


@functools.lru_cache(maxsize=1)
def mem_gb() -> float | None:
    """Total RAM in GiB, 1 decimal."""
    for line in (_read("/proc/meminfo") or "").splitlines():
        if line.startswith("MemTotal:"):
            return round(int(line.split()[1]) / 2**20, 1)  # kB
    try:
        import psutil
        return round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        return None


def _cgroup_dir(root: Path, controllers: tuple[str, ...], self_cgroup: str | None) -> Path:
    """This process's own cgroup folder below root when it is mounted there, else root itself (inside a
    container's cgroup namespace the two are the same)."""
    for line in (_read(self_cgroup) or "").splitlines() if self_cgroup else ():
        _, names, path = (line.split(":", 2) + ["", ""])[:3]
        if set(names.split(",")) & set(controllers) or (not names and not controllers):
            own = root.joinpath(path.lstrip("/"))
            if path.strip("/") and own.is_dir():
                return own
    return root


def _stat(text: str | None) -> dict[str, int]:
    out = {}
    for line in (text or "").splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("-").isdigit():
            out[parts[0]] = int(parts[1])
    return out


def _quota(quota: str, period: str) -> float | None:
    """Cores from a CFS quota and period (both µs); None for "max", -1 or anything unreadable."""
    quota, period = quota.strip(), period.strip()
    return int(quota) / int(period) if quota.isdigit() and period.isdigit() and int(period) > 0 else None


def cgroup_cpu(root: str = "/sys/fs/cgroup", self_cgroup: str | None = "/proc/self/cgroup") -> dict:
    """The CPU limit and throttling of this process's cgroup: quota_cores (None: no quota), throttled_usec and
    nr_throttled (None: not reported). cgroup v2 (cpu.max, cpu.stat) first, then v1 (cpu/cpu.cfs_quota_us,
    cpu/cpu.cfs_period_us, cpu/cpu.stat whose throttled_time is in ns)."""
    base = Path(root)
    out = {"quota_cores": None, "throttled_usec": None, "nr_throttled": None}
    v2 = _cgroup_dir(base, (), self_cgroup)
    if (v2 / "cpu.max").exists() or (v2 / "cpu.stat").exists():
        quota, _, period = (_read(v2 / "cpu.max") or "max").strip().partition(" ")
        stat = _stat(_read(v2 / "cpu.stat"))
        out.update(quota_cores=_quota(quota, period), throttled_usec=stat.get("throttled_usec"),
                   nr_throttled=stat.get("nr_throttled"))
        return out
    for name in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):
        v1 = _cgroup_dir(base / name, ("cpu",), self_cgroup)
        if not v1.is_dir():
            continue
        stat = _stat(_read(v1 / "cpu.stat"))
        throttled_ns = stat.get("throttled_time")
        out.update(quota_cores=_quota(_read(v1 / "cpu.cfs_quota_us") or "", _read(v1 / "cpu.cfs_period_us") or ""),
                   throttled_usec=None if throttled_ns is None else throttled_ns // 1000,
                   nr_throttled=stat.get("nr_throttled"))
        break
    return out


def available_cpu_cores() -> float:
    """The CPUs this process may use: its affinity set, capped by the cgroup quota when there is one."""
    try:
        cores = float(len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        cores = float(os.cpu_count() or 1)
    quota = cgroup_cpu()["quota_cores"]
    return min(cores, quota) if quota else cores


def node_ip_of_this_worker() -> str:
    """The address the node registered with (127.0.0.1 on loopback clusters), not a re-guessed interface IP."""
    import ray
    try:
        return ray._private.worker.global_worker.node_ip_address
    except Exception:
        return ray.util.get_node_ip_address()


def node_ip() -> str:
    """Ray's idea of this node's address inside a Ray worker; otherwise the hostname's (no packets sent)."""
    try:
        ray = sys.modules.get("ray")  # not imported here: outside Ray it costs a second of a fresh process
        if ray is not None and ray.is_initialized():
            return node_ip_of_this_worker()
    except Exception:
        pass
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"


def parse_smi(text: str) -> list[dict]:
    """Rows of `nvidia-smi --query-gpu=index,uuid,name,driver_version,memory.total --format=csv,noheader`."""
    rows = []
    for line in text.splitlines():
        cells = [c.strip() for c in line.split(",")]
        if len(cells) == len(SMI_FIELDS) and cells[0].isdigit():
            rows.append(dict(zip(SMI_FIELDS, cells)) | {"index": int(cells[0])})
    return rows


def visible_devices(visible: str | None, n_rows: int) -> list[str]:
    """CUDA_VISIBLE_DEVICES as CUDA reads it: entries up to the first invalid one; unset = every GPU."""
    if visible is None:
        return [str(i) for i in range(n_rows)]
    out = []
    for entry in (e.strip() for e in visible.split(",")):
        if not (entry.startswith(("GPU-", "MIG-")) or entry.isdigit()):
            break
        out.append(entry)
    return out


def physical_gpu(cuda_index: int, visible: str | None, smi_rows: list[dict]) -> dict | None:
    """The nvidia-smi row of torch's cuda:<cuda_index>: CUDA numbers only the GPUs CUDA_VISIBLE_DEVICES names
    (physical indices or GPU-/MIG- UUIDs, prefixes allowed), in that order. A MIG entry matches the row whose
    "mig_uuids" hold it (or whose uuid a legacy MIG-GPU-<uuid>/gi/ci names) and takes the MIG's uuid."""
    entries = visible_devices(visible, len(smi_rows))
    if not 0 <= cuda_index < len(entries):
        return None
    entry = entries[cuda_index]
    if entry.isdigit():
        return next((r for r in smi_rows if int(r["index"]) == int(entry)), None)
    if entry.startswith("GPU-"):
        hits = [r for r in smi_rows if r["uuid"].startswith(entry)]
        return hits[0] if len(hits) == 1 else None
    legacy = entry[len("MIG-"):].split("/")[0] if entry.startswith("MIG-GPU-") else None
    for r in smi_rows:
        if entry in r.get("mig_uuids", ()) or (legacy and r["uuid"] == legacy):
            return {**r, "uuid": entry}
    return None


def parse_smi_list(text: str) -> dict[str, list[str]]:
    """`nvidia-smi -L`: GPU uuid -> the UUIDs of its MIG devices."""
    out, gpu = {}, None
    for line in text.splitlines():
        uuid = line.rpartition("(UUID: ")[2].rstrip(")").strip() if "(UUID: " in line else None
        if uuid and uuid.startswith("GPU-") and line.startswith("GPU "):
            gpu = uuid
            out[gpu] = []
        elif uuid and uuid.startswith("MIG-") and gpu:
            out[gpu].append(uuid)
    return out


def _smi(*args: str) -> str:
    try:
        return subprocess.run(["nvidia-smi", *args], check=False, capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


@functools.lru_cache(maxsize=1)
def smi_rows() -> tuple[dict, ...]:
    """This node's GPUs as nvidia-smi lists them (with their MIG devices); empty without nvidia-smi."""
    rows = parse_smi(_smi(f"--query-gpu={','.join(SMI_FIELDS)}", "--format=csv,noheader"))
    if rows and "MIG-" in (os.environ.get("CUDA_VISIBLE_DEVICES") or ""):
        migs = parse_smi_list(_smi("-L"))
        rows = [r | {"mig_uuids": migs.get(r["uuid"], [])} for r in rows]
    return tuple(rows)


@functools.lru_cache(maxsize=8)
def gpu_info(device_index: int) -> dict:
    """Name, UUID, driver and memory of the GPU behind torch's cuda:<device_index>."""
    props = torch.cuda.get_device_properties(device_index)
    torch_uuid = str(getattr(props, "uuid", "") or "") or None
    if torch_uuid and not torch_uuid.startswith(("GPU-", "MIG-")):
        torch_uuid = f"GPU-{torch_uuid}"
    rows = list(smi_rows())
    row = (next((r for r in rows if r["uuid"] == torch_uuid), None)
           or physical_gpu(device_index, os.environ.get("CUDA_VISIBLE_DEVICES"), rows))
    return {"gpu_name": props.name,
            "gpu_uuid": row["uuid"] if row else torch_uuid,
            "gpu_driver": (row or (rows[0] if rows else {})).get("driver_version"),
            "gpu_memory_gb": round(props.total_memory / 2**30, 1)}


def hw_fingerprint(parts: Mapping, device_type: str = "cuda") -> str:
    """12 hex chars of sha256 over the canonical JSON of the HW_PARTS of `parts`, in HW_PARTS order; the GPU
    parts count as null unless device_type is "cuda" (a CPU trial's identity ignores the node's GPUs)."""
    keep = {k: (None if k in GPU_PARTS and device_type != "cuda" else parts.get(k)) for k in HW_PARTS}
    return hashlib.sha256(json.dumps(keep, separators=(",", ":")).encode()).hexdigest()[:12]


def torchvision_local_version() -> str | None:
    """torchvision.__version__ with its local part (0.29.1+cu130: the build matters), read from its version.py
    without importing it (the metadata drops the local part)."""
    import importlib.util
    import re
    try:
        spec = importlib.util.find_spec("torchvision")
        text = (Path(spec.submodule_search_locations[0]) / "version.py").read_text()
    except (AttributeError, ImportError, OSError, TypeError, IndexError):
        return None
    found = re.search(r"^__version__\s*=\s*['\"]([^'\"]+)['\"]", text, re.M)
    return found.group(1) if found else None


@functools.lru_cache(maxsize=1)
def _static() -> dict:
    """What the process cannot change: versions, host, CPU, memory, code. Versions come from the installed
    packages' metadata: importing torchvision and ray only to read __version__ cost a fresh trial process ~1.5 s
    here, and `lstm-bench ab` starts two per pair."""
    from importlib import metadata

    def version(package):
        try:
            return metadata.version(package)
        except metadata.PackageNotFoundError:
            return None
    torchvision_version, ray_version = torchvision_local_version() or version("torchvision"), version("ray")
    logical, physical = os.cpu_count(), cpu_physical_cores()
    return {
        "hostname": socket.gethostname(),
        "cpu_model": cpu_model(),
        "cpu_count": logical,
        "cpu_physical_cores": physical,
        "smt": bool(logical and physical and logical > physical),
        "mem_gb": mem_gb(),
        "cuda_version": torch.version.cuda,
        "cudnn_version": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "torch_version": str(torch.__version__),  # a str subclass otherwise
        "torchvision_version": torchvision_version,
        "ray_version": ray_version,
        "python_version": platform.python_version(),
        "git_commit": git_commit(),
        "code_version": code_version(),
    }


def environment(device: torch.device) -> dict:
    env = {**_static(), "node_ip": node_ip(), "threads": torch.get_num_threads(),
           "gpu_name": None, "gpu_uuid": None, "gpu_driver": None, "gpu_memory_gb": None}
    if device.type == "cuda":
        env.update(gpu_info(device.index if device.index is not None else torch.cuda.current_device()))
    env["hw_fingerprint"] = hw_fingerprint(env, device.type)
    return env
