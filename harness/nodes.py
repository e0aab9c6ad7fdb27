"""The Ray cluster as the sweep sees it: connecting (an embedded loopback Ray, or a cluster's address), its
alive nodes and their resources, whether a request fits, and each node's GEMM ceiling probed in place."""

from __future__ import annotations

import os

from .errors import HarnessError

# Exclusive placement: every node offers one timing slot (the embedded Ray sets it; cluster recipes pass
# `ray start --resources='{"timing_slot": 1}'`), and every exclusive timing trial takes it, so at most one timing
# trial runs on a node at a time.
TIMING_SLOT = "timing_slot"
# A trial killed by Ray's memory monitor is retried this often (Ray's default: without end). Ray has no per-task
# option for it: the owner of a task (the driver, for every trial) reads RAY_task_oom_retries when its core worker
# starts, so connect() sets it in the driver's environment for any cluster, and in the job's runtime env for tasks
# a worker would own; the embedded Ray also gets it as system config (its raylet and GCS start here).
OOM_RETRIES = 1


def connect(address: str | None = None, num_cpus: int | None = None, num_gpus: int | None = None):
    """No address: a new embedded Ray on loopback, dashboard off. Otherwise join the cluster at `address`
    (HOST:PORT, 'auto', or ray://HOST:10001 through Ray Client)."""
    if address is None:
        private_local_token()
        # Without this (read when Ray is imported) Ray 2.60 on Linux replaces node IP 127.0.0.1 with the
        # interface address and its servers listen on every interface; with it everything stays on loopback.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray
    if ray.is_initialized():
        return ray.get_runtime_context()
    os.environ["RAY_task_oom_retries"] = str(OOM_RETRIES)  # before ray.init: the driver's core worker reads it
    env = {"KINETO_LOG_LEVEL": os.environ.get("KINETO_LOG_LEVEL", "6"), "RAY_task_oom_retries": str(OOM_RETRIES)}
    from .env import git_commit
    env["LSTM_BENCH_COMMIT"] = git_commit()  # workers may run an installed copy without .git
    try:
        if address is None:
            # address="local": always a new instance, never whatever RAY_ADDRESS or /tmp/ray names.
            ray.init(address="local", include_dashboard=False, _node_ip_address="127.0.0.1",
                     num_cpus=num_cpus, num_gpus=num_gpus, resources={TIMING_SLOT: 1},
                     _system_config={"task_oom_retries": OOM_RETRIES},
                     log_to_driver=False, configure_logging=True,
                     logging_level="warning", runtime_env={"env_vars": env})
        else:
            ray.init(address=address, log_to_driver=False, logging_level="warning",
                     runtime_env={"env_vars": env})
    except (ConnectionError, RuntimeError, ValueError) as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise HarnessError(f"cannot connect to Ray at {address or 'a new local instance'}: {msg}") from None
    return ray.get_runtime_context()


def private_local_token() -> None:
    """A token only this user can read for the embedded Ray. Ray 2.59+ turns token auth on for a new local
    cluster when RAY_AUTH_MODE is unset (ray.init sets it and refreshes its config; setting it here, after
    Ray may have been imported, would leave this process's config without it) and writes ~/.ray/auth_token if
    missing, but with the umask's mode (0644 under umask 022: readable by every local user whose home directory
    lets them in). So, when no RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH names another, that file is made here
    first, or narrowed, to mode 600."""
    import secrets
    from pathlib import Path
    if os.environ.get("RAY_AUTH_MODE", "token").lower() != "token" or os.environ.get("RAY_AUTH_TOKEN") \
            or os.environ.get("RAY_AUTH_TOKEN_PATH"):
        return
    path = Path.home() / ".ray" / "auth_token"
    try:
        path.parent.mkdir(mode=0o700, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        if path.stat().st_uid == os.getuid() and path.stat().st_mode & 0o077:
            path.chmod(0o600)
        return
    except OSError as exc:
        raise HarnessError(f"cannot make the embedded Ray's token {path}: {exc.strerror or exc}") from None
    with os.fdopen(fd, "w") as fh:
        fh.write(secrets.token_hex(32))


def cluster_nodes() -> list[dict]:
    import ray
    return [{"node_id": n["NodeID"], "node_ip": n["NodeManagerAddress"],
             "resources": {k: v for k, v in n["Resources"].items() if not k.startswith("node:")}}
            for n in ray.nodes() if n.get("Alive")]


def fits(request: dict, nodes: list[dict]) -> bool:
    return any(all(node["resources"].get(k, 0) >= v for k, v in request.items()) for node in nodes)


def describe_resources(nodes: list[dict]) -> str:
    def short(res):
        keep = {k: v for k, v in res.items() if k not in ("memory", "object_store_memory")}
        return "{" + ", ".join(f"{k}: {v:g}" for k, v in sorted(keep.items())) + "}"
    return "; ".join(f"{n['node_ip']} {short(n['resources'])}" for n in nodes) or "no alive nodes"


def _probe_task(kinds: list[str], threads: int | None, seconds: float) -> dict:
    from .ceiling import probe_node
    return {kind: probe_node(kind, threads, seconds=seconds) for kind in kinds}


PROBE_TIMEOUT_S = 120.0  # for all of a run's start (or end) probes together, not per node


def probe_requests(nodes: list[dict], threads: int | None) -> dict[str, dict]:
    """node_id -> what its probe task asks for (kinds, num_cpus, num_gpus). A node with less than one CPU (a
    KubeRay or launcher head started with 0 CPUs) gets none: no trial can run there, and a task pinned to it
    could never start (it would hold the run for the whole timeout at its start and at its end)."""
    out = {}
    for n in nodes:
        res = n["resources"]
        if res.get("CPU", 0) < 1:
            continue
        kinds = ["cpu"] + (["cuda"] if res.get("GPU", 0) >= 1 else [])
        out[n["node_id"]] = {"kinds": kinds, "num_cpus": min(threads or 1, res["CPU"]),
                             "num_gpus": 1 if "cuda" in kinds else 0}
    return out


def probe_nodes(nodes: list[dict], threads: int | None, seconds: float = 1.0,
                timeout_s: float = PROBE_TIMEOUT_S) -> dict[str, dict]:
    """node_id -> {device kind: {precision: {"gflop_per_s", "spread", "n"}}}: the fixed GEMM probe run on every
    alive node that can run trials (probe_requests), all at once, each as a Ray task pinned to its node (CPU at
    the trials' thread count; CUDA on one GPU when the node has one). A node whose probe fails or is not done
    within `timeout_s` of the submit is left out (its trials probe their own process), and an unfinished probe is
    cancelled (force: its worker killed), so it cannot run its GEMM later beside a timed trial."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
    refs = {}
    for node_id, req in probe_requests(nodes, threads).items():
        refs[node_id] = ray.remote(_probe_task).options(
            num_cpus=req["num_cpus"], num_gpus=req["num_gpus"], max_retries=0,
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False)).remote(
            req["kinds"], threads, seconds)
    return gather_probes(refs, timeout_s)


def gather_probes(refs: dict, timeout_s: float) -> dict[str, dict]:
    """The results of the probe tasks `refs` (node_id -> ObjectRef) done within one shared `timeout_s`; the
    others cancelled."""
    import ray
    if not refs:
        return {}
    ready, late = ray.wait(list(refs.values()), num_returns=len(refs), timeout=timeout_s)
    for ref in late:
        try:
            ray.cancel(ref, force=True)
        except Exception:  # already gone with its node: nothing left to stop
            pass
    out, done = {}, set(ready)
    for node_id, ref in refs.items():
        if ref not in done:
            continue
        try:
            out[node_id] = ray.get(ref, timeout=10)
        except Exception:  # a node that cannot probe (lost, failed) is not a reason to stop
            pass
    return out
