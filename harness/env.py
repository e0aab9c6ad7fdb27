"""The environment a result was measured in, recorded on every result record."""

from __future__ import annotations

import functools
import os
import platform
import socket
import subprocess
from pathlib import Path

import torch

PROJECT_ROOT = Path(__file__).resolve().parents[1]


@functools.lru_cache(maxsize=1)
def git_commit() -> str:
    """The project's commit; LSTM_BENCH_COMMIT (set by the Ray driver for its workers) wins, since a worker
    node may run an installed copy without a .git folder."""
    if os.environ.get("LSTM_BENCH_COMMIT"):
        return os.environ["LSTM_BENCH_COMMIT"]
    try:
        out = subprocess.run(["git", "-C", str(PROJECT_ROOT), "rev-parse", "--short=12", "HEAD"],
                             capture_output=True, text=True, timeout=5)
        commit = out.stdout.strip() or "unknown"
        dirty = subprocess.run(["git", "-C", str(PROJECT_ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return commit + ("-dirty" if dirty and commit != "unknown" else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


@functools.lru_cache(maxsize=1)
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def node_ip() -> str:
    """Ray's idea of this node's address inside a Ray worker; otherwise the hostname's (no packets sent)."""
    try:
        import ray
        if ray.is_initialized():
            from .cluster import node_ip_of_this_worker
            return node_ip_of_this_worker()
    except Exception:
        pass
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"


@functools.lru_cache(maxsize=8)
def gpu_info(device_index: int) -> dict:
    props = torch.cuda.get_device_properties(device_index)
    driver = "unknown"
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader",
                              f"--id={device_index}"], capture_output=True, text=True, timeout=10)
        driver = out.stdout.strip() or driver
    except (OSError, subprocess.SubprocessError):
        pass
    return {"gpu_name": props.name, "gpu_driver": driver, "gpu_memory_gb": round(props.total_memory / 2**30, 1)}


def environment(device: torch.device) -> dict:
    import torchvision
    try:
        import ray
        ray_version = ray.__version__
    except ImportError:
        ray_version = None
    env = {
        "hostname": socket.gethostname(),
        "node_ip": node_ip(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "gpu_name": None, "gpu_driver": None, "gpu_memory_gb": None,
        "cuda_version": torch.version.cuda,
        "cudnn_version": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "torch_version": torch.__version__,
        "torchvision_version": torchvision.__version__,
        "ray_version": ray_version,
        "python_version": platform.python_version(),
        "git_commit": git_commit(),
    }
    if device.type == "cuda":
        env.update(gpu_info(device.index if device.index is not None else torch.cuda.current_device()))
    return env
