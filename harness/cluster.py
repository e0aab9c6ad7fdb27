"""Sweeping a suite on Ray: every trial a Ray task, every result written once as it arrives.

Scheduling is Ray's: cuda trials ask for one GPU (so no two timings share a GPU), cpu trials for
`cpus_per_trial` CPUs (and set torch's threads to it). The driver reads the dataset once and shares it
through Ray's object store, so worker nodes need no shared filesystem and no internet. A task lost with its
worker or node is retried elsewhere (max_retries); a trial that raises comes back as status=failed and the
sweep goes on.
"""

from __future__ import annotations

import datetime as dt
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import HarnessError
from .results import RunStore, latest_by_trial, new_run_id, read_jsonl
from .spec import TrialSpec
from .suites import Suite, trial_resources

MAX_RETRIES = 3  # for tasks lost with a worker process or node (system failures), not for trial errors
HANG_GRACE_S = 120.0


def connect(address: str | None = None, num_cpus: int | None = None, num_gpus: int | None = None):
    """No address: a new embedded Ray on loopback, dashboard off. Otherwise join the cluster at `address`
    (HOST:PORT, 'auto', or ray://HOST:10001 through Ray Client)."""
    if address is None:
        # Without this (read when Ray is imported) Ray 2.60 on Linux replaces node IP 127.0.0.1 with the
        # interface address and its servers listen on every interface; with it everything stays on loopback.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray
    if ray.is_initialized():
        return ray.get_runtime_context()
    env = {"KINETO_LOG_LEVEL": os.environ.get("KINETO_LOG_LEVEL", "6")}
    from .env import git_commit
    env["LSTM_BENCH_COMMIT"] = git_commit()  # workers may run an installed copy without .git
    if "LSTM_BENCH_FAULT" in os.environ:  # fault-injection hook for the tests
        env["LSTM_BENCH_FAULT"] = os.environ["LSTM_BENCH_FAULT"]
    try:
        if address is None:
            # address="local": always a new instance, never whatever RAY_ADDRESS or /tmp/ray names.
            ray.init(address="local", include_dashboard=False, _node_ip_address="127.0.0.1",
                     num_cpus=num_cpus, num_gpus=num_gpus, log_to_driver=False, configure_logging=True,
                     logging_level="warning", runtime_env={"env_vars": env})
        else:
            ray.init(address=address, log_to_driver=False, logging_level="warning",
                     runtime_env={"env_vars": env})
    except (ConnectionError, RuntimeError, ValueError) as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise HarnessError(f"cannot connect to Ray at {address or 'a new local instance'}: {msg}") from None
    return ray.get_runtime_context()


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


def node_ip_of_this_worker() -> str:
    """The address the node registered with (127.0.0.1 on loopback clusters), not a re-guessed interface IP."""
    import ray
    try:
        return ray._private.worker.global_worker.node_ip_address
    except Exception:
        return ray.util.get_node_ip_address()


class TrialClock:
    """A tiny actor the trials tell when they start, so the driver can time them out: Ray itself does not
    say when a queued task begins to run."""

    def __init__(self):
        self.started: dict[str, float] = {}

    def start(self, trial_id: str) -> None:
        self.started[trial_id] = time.time()  # a retried task starts its clock again

    def snapshot(self) -> dict[str, float]:
        return dict(self.started)


def _trial_task(spec_flat: dict, arrays, options: dict, clock=None) -> dict:
    """Runs on a Ray worker. Never raises for a trial's own problems: they come back as a failed record."""
    import ray
    from .errors import HarnessError as _HE
    from .trial import run_trial
    if clock is not None:
        clock.start.remote(spec_flat["trial_id"])
    fault = os.environ.get("LSTM_BENCH_FAULT", "")  # test hook: "hang:<trial_id>" makes that trial hang
    if fault == f"hang:{spec_flat['trial_id']}":
        time.sleep(10**6)
    ctx = ray.get_runtime_context()
    where = {"node_id": ctx.get_node_id(), "node_ip": node_ip_of_this_worker(), "worker_pid": os.getpid()}
    spec = TrialSpec.from_flat(spec_flat)
    try:
        return run_trial(spec, arrays=arrays, extra=where, **options)
    except _HE as exc:  # e.g. a node without the device the trial asked for
        rec = spec.flat()
        rec.update(where, status="failed", error=str(exc), duration_s=0.0,
                   started_at=dt.datetime.now(dt.timezone.utc).isoformat())
        return rec


def overdue(pending: dict, clock, grace_s: float):
    """Pending trials that have run longer than grace_s + 2 x their time budget: (ref, spec, seconds)."""
    import ray
    try:
        started = ray.get(clock.snapshot.remote(), timeout=2)
    except Exception:  # restarting, or busy: a trial is never cancelled on a guess; the next pass asks again
        return []
    now = time.time()
    return [(ref, spec, now - started[spec.trial_id]) for ref, spec in pending.items()
            if spec.trial_id in started and now - started[spec.trial_id] > grace_s + 2 * spec.time_budget_s]


@dataclass
class RunOutcome:
    run_dir: Path
    planned: int
    ok: int
    failed: int
    skipped: int  # already ok in an earlier attempt of this run (--resume)
    interrupted: bool = False


class Progress:
    """One status line: done, failed, running, queued, elapsed, ETA (stderr; a line per change off a TTY)."""

    def __init__(self, total: int, slots: int, enabled: bool = True):
        self.total, self.slots, self.enabled = total, max(1, slots), enabled
        self.start = time.time()
        self.tty = sys.stderr.isatty()

    def update(self, done: int, failed: int, pending: int) -> None:
        if not self.enabled:
            return
        elapsed = time.time() - self.start
        running = min(pending, self.slots)
        eta = elapsed / done * (self.total - done) if done else float("nan")
        bar_w = 24
        filled = int(bar_w * done / max(self.total, 1))
        line = (f"[{'#' * filled}{'.' * (bar_w - filled)}] {done}/{self.total} done, {failed} failed, "
                f"{running} running, {pending - running} queued | {_hms(elapsed)} elapsed, ETA {_hms(eta)}")
        print(("\r" + line + "\033[K") if self.tty else line, end="" if self.tty else "\n", file=sys.stderr,
              flush=True)

    def close(self):
        if self.enabled and self.tty:
            print(file=sys.stderr)


def _hms(s: float) -> str:
    if s != s:  # nan
        return "?"
    s = int(s)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def run_suite(suite: Suite, *, out_dir: str | Path = "results", address: str | None = None,
              resume: str | None = None, data_root: str | None = None, allow_unofficial: bool = False,
              download: bool = False, skip_infeasible: bool = False, progress: bool = True,
              num_cpus: int | None = None, max_retries: int = MAX_RETRIES,
              hang_grace_s: float = HANG_GRACE_S) -> RunOutcome:
    """Run every trial of `suite` not already ok in this run; records are appended as they arrive.
    A trial still running `hang_grace_s` + 2 x its time budget after it started is cancelled and recorded
    as status=timeout (set-up, data and backend detection happen outside the budget, hence the grace)."""
    run_id = resume or new_run_id()
    run_dir = Path(out_dir) / suite.name / run_id
    store = RunStore(run_dir)
    meta = store.read_meta() if resume else {}
    if resume:
        if not run_dir.is_dir():
            raise HarnessError(f"--resume {resume}: no run directory {run_dir}")
        if meta.get("suite_sha256") and meta["suite_sha256"] != suite.sha256:
            raise HarnessError(f"--resume {resume}: that run was made from a different suite file "
                               f"({meta.get('suite_path')}, sha256 {meta['suite_sha256'][:12]}) than {suite.path} "
                               f"(sha256 {suite.sha256[:12]}); start a new run instead")
    done_before = {tid for tid, r in latest_by_trial(read_jsonl(store.trials_path)[0]).items()
                   if r.get("status") == "ok"}
    todo = [s for s in suite.trials if s.trial_id not in done_before]

    connect(address, num_cpus=num_cpus)  # first: it sets up the environment Ray reads on import
    import ray
    nodes = cluster_nodes()
    requests = {s.trial_id: trial_resources(s, suite.cpus_per_trial) for s in todo}
    infeasible = [s for s in todo if not fits(requests[s.trial_id], nodes)]
    if infeasible and not skip_infeasible:
        need = sorted({str(requests[s.trial_id]) for s in infeasible})
        raise HarnessError(f"{len(infeasible)} trial(s) need resources no node has ({', '.join(need)}); "
                           f"cluster: {describe_resources(nodes)} (--skip-infeasible runs the rest)")
    store.open()
    started = dt.datetime.now(dt.timezone.utc).isoformat()
    meta.update({"run_id": run_id, "suite": suite.name, "suite_path": str(suite.path),
                 "suite_sha256": suite.sha256, "nodes": nodes, "address": address or "embedded",
                 "started_at": meta.get("started_at", started), "attempt_started_at": started,
                 "status": "running", "planned": len(suite.trials)})
    store.write_meta(meta)

    for s in infeasible:
        rec = s.flat()
        rec.update(status="infeasible", error=f"needs {requests[s.trial_id]}; cluster: {describe_resources(nodes)}")
        store.append(rec)
    runnable = [s for s in todo if s not in infeasible]

    arrays_ref = None
    if any(s.data == "cifar10" for s in runnable):  # read once here, shared through the object store
        from .cifar import load_cifar10
        arrays_ref = ray.put(load_cifar10(data_root, allow_unofficial=allow_unofficial, download=download))

    # GPU and profile trials get a fresh worker process each (max_calls=1): a CUDA context, caching allocator
    # or profiler state left by the previous trial must not colour this one. CPU timing trials reuse workers
    # (a new process costs ~2 s of torch import per trial).
    reused, fresh = ray.remote(_trial_task), ray.remote(max_calls=1)(_trial_task)
    # The clock lives on the driver's node, so a worker node that dies or drops off the network takes
    # neither the clock nor the driver's loop with it; restarted if its process dies.
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
    clock = ray.remote(num_cpus=0, max_restarts=-1)(TrialClock).options(
        scheduling_strategy=NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    ).remote()
    pending = {}
    for s in runnable:
        req = requests[s.trial_id]
        task = fresh if s.device.startswith("cuda") or s.mode == "profile" else reused
        ref = task.options(num_cpus=req.get("CPU", 1), num_gpus=req.get("GPU", 0),
                           resources={k: v for k, v in req.items() if k not in ("CPU", "GPU")} or None,
                           max_retries=max_retries, retry_exceptions=False,
                           name=f"trial {s.trial_id} {s.variant.label} {s.mode}").remote(
            s.flat(), arrays_ref, {}, clock)
        pending[ref] = s

    slots = sum(int(n["resources"].get("CPU", 0) // max(suite.cpus_per_trial, 1)) for n in nodes) or 1
    bar = Progress(len(runnable), slots, progress)
    ok = failed = 0
    interrupted = False

    def record(rec: dict) -> None:
        nonlocal ok, failed
        if "_artifacts" in rec or "_kernels" in rec:  # profile traces came back as data: write them here
            from .profile import store_profile
            try:
                rec = store_profile(run_dir, rec)
            except HarnessError as exc:
                rec.pop("_artifacts", None)
                rec.pop("_kernels", None)
                rec.update(status="failed", error=str(exc))
        store.append(rec)
        ok += rec.get("status") == "ok"
        failed += rec.get("status") != "ok"

    try:
        bar.update(0, 0, len(pending))
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
            for ref in ready:
                spec = pending.pop(ref)
                try:
                    rec = ray.get(ref)
                except Exception as exc:  # lost beyond its retries, or cancelled: recorded, never dropped
                    rec = spec.flat()
                    rec.update(status="failed", error=f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}",
                               started_at=None, duration_s=None)
                record(rec)
            for ref, spec, ran in overdue(pending, clock, hang_grace_s):
                ray.cancel(ref, force=True)  # kills the worker process; a cancelled task is not retried
                pending.pop(ref)
                rec = spec.flat()
                rec.update(status="timeout", error=f"still running {ran:.0f} s after it started "
                           f"(time budget {spec.time_budget_s:g} s + grace): cancelled", duration_s=ran)
                record(rec)
                ready = True
            if ready:
                bar.update(ok + failed, failed, len(pending))
    except KeyboardInterrupt:
        interrupted = True
    except BaseException:
        for ref in pending:  # e.g. the results file became unwritable: stop the sweep, keep what is written
            ray.cancel(ref, force=True)
        raise
    finally:
        if interrupted:
            for ref in pending:
                ray.cancel(ref, force=True)
        bar.close()
        store.close()
        meta.update({"ended_at": dt.datetime.now(dt.timezone.utc).isoformat(),
                     "status": "interrupted" if interrupted else "finished",
                     "ok": len(done_before) + ok, "failed": failed, "infeasible": len(infeasible),
                     "skipped_already_ok": len(done_before),
                     "resources": {k: v for k, v in ray.cluster_resources().items() if not k.startswith("node:")}})
        try:
            store.write_meta(meta)
            if not interrupted:
                store.consolidate()
                from .profile import consolidate_kernels
                consolidate_kernels(run_dir)
        except (OSError, HarnessError) as exc:
            print(f"lstm-bench: could not finish {run_dir}: {exc}; trials.jsonl holds every record written",
                  file=sys.stderr)
    return RunOutcome(run_dir=run_dir, planned=len(suite.trials), ok=len(done_before) + ok,
                      failed=failed + len(infeasible), skipped=len(done_before), interrupted=interrupted)
