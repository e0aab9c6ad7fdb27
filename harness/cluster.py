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
from dataclasses import dataclass, field
from pathlib import Path

from .errors import HarnessError
from .schema import TrialResult
from .spec import TrialSpec
from .store import RunStore, latest_by_trial, new_run_id, read_jsonl
from .suites import Suite, trial_resources

MAX_RETRIES = 3  # for tasks lost with a worker process or node (system failures), not for trial errors
HANG_GRACE_S = 120.0
WAIT_BATCH = 64  # results collected per ray.wait


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


class TrialClock:
    """A tiny actor the trials tell when they start, so the driver can time them out: Ray itself does not say
    when a queued task begins to run. It keeps a deadline per running trial (a retried task starts its clock
    again, so a retry gets a fresh deadline), forgets finished trials, and answers only with the overdue ones:
    the driver's work per poll does not grow with the suite."""

    def __init__(self):
        self.deadlines: dict[str, tuple[float, float]] = {}  # trial_id -> (started, deadline)

    def start(self, trial_id: str, limit_s: float) -> None:
        now = time.time()
        self.deadlines[trial_id] = (now, now + limit_s)

    def forget(self, trial_ids: list[str]) -> None:
        for tid in trial_ids:
            self.deadlines.pop(tid, None)

    def overdue(self) -> list[tuple[str, float]]:
        now = time.time()
        return [(tid, now - started) for tid, (started, deadline) in self.deadlines.items() if now > deadline]


def hang_limit_s(spec: TrialSpec, grace_s: float) -> float:
    """How long a trial may run before it is cancelled as hung: set-up, data and backend detection happen
    outside the budget, hence the grace; an accuracy trial without a budget is never cancelled."""
    return grace_s + 2 * spec.budget_s


def _trial_task(spec_flat: dict, arrays, clock=None, limit_s: float = float("inf"),
                hang: bool = False) -> TrialResult:
    """Runs on a Ray worker. Never raises for a trial's own problems: they come back as a failed record.
    `hang` is a test hook (passed by tests through run_suite, never read from the environment)."""
    import ray

    from .env import node_ip_of_this_worker
    from .trial import run_trial
    if clock is not None:
        clock.start.remote(spec_flat["trial_id"], limit_s)
    if hang:
        time.sleep(10**6)
    ctx = ray.get_runtime_context()
    where = {"node_id": ctx.get_node_id(), "node_ip": node_ip_of_this_worker(), "worker_pid": os.getpid()}
    spec = TrialSpec.from_flat(spec_flat)
    try:
        return run_trial(spec, arrays=arrays, extra=where)
    except HarnessError as exc:  # e.g. a node without the device the trial asked for
        return TrialResult(record=_spec_record(spec, "failed", str(exc), **where, duration_s=0.0,
                                               started_at=dt.datetime.now(dt.timezone.utc).isoformat()))


def _spec_record(spec: TrialSpec, status: str, error: str, **fields) -> dict:
    """The record of a trial that produced no measurements: its spec, a status and why."""
    rec = spec.flat()
    rec.update(status=status, error=error, **fields)
    return rec


@dataclass
class RunOutcome:
    run_dir: Path
    planned: int
    ok: int
    failed: int
    skipped: int  # already ok in an earlier attempt of this run (--resume)
    interrupted: bool = False


@dataclass
class Plan:
    """What a run will do, decided before Ray starts: the run directory, its metadata, what is already done."""
    suite: Suite
    run_dir: Path
    store: RunStore
    meta: dict
    done_before: set[str]
    todo: list[TrialSpec]
    runnable: list[TrialSpec] = field(default_factory=list)
    infeasible: list[TrialSpec] = field(default_factory=list)
    requests: dict[str, dict] = field(default_factory=dict)


def plan(suite: Suite, out_dir: str | Path, resume: str | None) -> Plan:
    """The run directory (new, or the one --resume names, which must come from the same suite and overrides)
    and the trials not already ok in it."""
    run_id = resume or new_run_id()
    run_dir = Path(out_dir) / suite.name / run_id
    store = RunStore(run_dir)
    meta = store.read_meta() if resume else {}
    overrides = getattr(suite, "overrides", {}) or {}
    if resume:
        if not run_dir.is_dir():
            raise HarnessError(f"--resume {resume}: no run directory {run_dir}")
        if meta.get("suite_sha256") and meta["suite_sha256"] != suite.sha256:
            raise HarnessError(f"--resume {resume}: that run was made from a different suite file "
                               f"({meta.get('suite_path')}, sha256 {meta['suite_sha256'][:12]}) than {suite.path} "
                               f"(sha256 {suite.sha256[:12]}); start a new run instead")
        if meta and (meta.get("overrides") or {}) != overrides:
            raise HarnessError(f"--resume {resume}: that run was made with --set {_show_overrides(meta.get('overrides'))}"
                               f", this one has --set {_show_overrides(overrides)}; give the same overrides")
    done_before = {tid for tid, r in latest_by_trial(read_jsonl(store.trials_path)[0]).items()
                   if r.get("status") == "ok"}
    todo = [s for s in suite.trials if s.trial_id not in done_before]
    return Plan(suite, run_dir, store, meta, done_before, todo)


def _show_overrides(overrides) -> str:
    return " ".join(f"{k}={v}" for k, v in (overrides or {}).items()) or "(none)"


def place(p: Plan, nodes: list[dict], skip_infeasible: bool) -> None:
    """Split the trials to do into runnable and infeasible (no node has what they ask for)."""
    p.requests = {s.trial_id: trial_resources(s, p.suite.cpus_per_trial) for s in p.todo}
    p.infeasible = [s for s in p.todo if not fits(p.requests[s.trial_id], nodes)]
    if p.infeasible and not skip_infeasible:
        need = sorted({str(p.requests[s.trial_id]) for s in p.infeasible})
        raise HarnessError(f"{len(p.infeasible)} trial(s) need resources no node has ({', '.join(need)}); "
                           f"cluster: {describe_resources(nodes)} (--skip-infeasible runs the rest)")
    p.runnable = [s for s in p.todo if s not in p.infeasible]


def start(p: Plan, nodes: list[dict], address: str | None) -> None:
    """Open the store, write run.json, record the infeasible trials."""
    p.store.open()
    now = dt.datetime.now(dt.timezone.utc).isoformat()
    p.meta.update({"run_id": p.run_dir.name, "suite": p.suite.name, "suite_path": str(p.suite.path),
                   "suite_sha256": p.suite.sha256, "overrides": getattr(p.suite, "overrides", {}) or {},
                   "nodes": nodes, "address": address or "embedded", "started_at": p.meta.get("started_at", now),
                   "attempt_started_at": now, "status": "running", "planned": len(p.suite.trials)})
    p.store.write_meta(p.meta)
    for s in p.infeasible:
        p.store.append(_spec_record(s, "infeasible",
                                    f"needs {p.requests[s.trial_id]}; cluster: {describe_resources(nodes)}"))


class Submitter:
    """Submits trials as Ray tasks, keeping at most `window` in flight so the driver's work per result stays
    flat however large the suite. GPU and profile trials get a fresh worker process each (max_calls=1): a CUDA
    context, caching allocator or profiler state left by the previous trial must not colour this one. CPU timing
    trials reuse workers (a new process costs ~2 s of torch import per trial)."""

    def __init__(self, p: Plan, arrays_ref, window: int, max_retries: int, hang_grace_s: float, hang_ids=()):
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
        self.p, self.arrays_ref, self.window, self.max_retries = p, arrays_ref, window, max_retries
        self.hang_grace_s, self.hang_ids = hang_grace_s, set(hang_ids)
        self.queue = list(p.runnable)
        self.pending: dict = {}  # ObjectRef -> TrialSpec
        self.reused, self.fresh = ray.remote(_trial_task), ray.remote(max_calls=1)(_trial_task)
        # The clock lives on the driver's node, so a worker node that dies or drops off the network takes
        # neither the clock nor the driver's loop with it; restarted if its process dies.
        self.clock = ray.remote(num_cpus=0, max_restarts=-1)(TrialClock).options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        ).remote()

    def fill(self) -> None:
        while self.queue and len(self.pending) < self.window:
            s = self.queue.pop(0)
            req = self.p.requests[s.trial_id]
            task = self.fresh if s.device.startswith("cuda") or s.mode == "profile" else self.reused
            ref = task.options(num_cpus=req.get("CPU", 1), num_gpus=req.get("GPU", 0),
                               resources={k: v for k, v in req.items() if k not in ("CPU", "GPU")} or None,
                               max_retries=self.max_retries, retry_exceptions=False,
                               name=f"trial {s.trial_id} {s.variant.label} {s.mode}").remote(
                s.flat(), self.arrays_ref, self.clock, hang_limit_s(s, self.hang_grace_s),
                s.trial_id in self.hang_ids)
            self.pending[ref] = s

    def overdue(self) -> list[tuple[object, TrialSpec, float]]:
        """Pending trials past their hang deadline: (ref, spec, seconds running). A slow or restarting clock
        answers nothing this time; the next poll asks again."""
        import ray
        try:
            late = dict(ray.get(self.clock.overdue.remote(), timeout=2))
        except Exception:
            return []
        return [(ref, s, late[s.trial_id]) for ref, s in self.pending.items() if s.trial_id in late]

    def cancel_all(self) -> None:
        import ray
        for ref in self.pending:
            ray.cancel(ref, force=True)


class _Lines:
    """tqdm redraws its bar with carriage returns; off a terminal each redraw becomes one clean line."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text: str) -> None:
        text = text.replace("\r", "").strip()
        if text:
            self.stream.write(text + "\n")

    def flush(self) -> None:
        self.stream.flush()


def progress_bar(total: int, enabled: bool):
    from tqdm import tqdm
    tty = sys.stderr.isatty()
    return tqdm(total=total, disable=not enabled, unit="trial", file=sys.stderr if tty else _Lines(sys.stderr),
                mininterval=0.5 if tty else 10.0, dynamic_ncols=tty, ascii=not tty)


def collect(sub: Submitter, store: RunStore, bar, counts: dict) -> None:
    """Run the event loop until every trial has a record: batches of finished results are stored as they come,
    overdue trials cancelled and recorded as timeouts. `counts` (ok, failed) is kept current, so an interrupt
    loses no tally."""
    import ray

    def record(result: TrialResult) -> None:
        rec = store.add(result)
        counts["ok" if rec.get("status") == "ok" else "failed"] += 1
        bar.update(1)
        bar.set_postfix(failed=counts["failed"], running=len(sub.pending), queued=len(sub.queue), refresh=False)

    sub.fill()
    while sub.pending:
        ready, _ = ray.wait(list(sub.pending), num_returns=min(WAIT_BATCH, len(sub.pending)), timeout=1.0)
        finished = []
        for ref in ready:
            spec = sub.pending.pop(ref)
            record(_result(ref, spec))
            finished.append(spec.trial_id)
        for ref, spec, ran in sub.overdue():
            sub.pending.pop(ref)
            finished.append(spec.trial_id)
            if ray.wait([ref], timeout=0)[0]:  # it finished after all: keep its result
                record(_result(ref, spec))
                continue
            ray.cancel(ref, force=True)  # kills the worker process; a cancelled task is not retried
            record(TrialResult(record=_spec_record(
                spec, "timeout", f"still running {ran:.0f} s after it started (time budget "
                f"{spec.budget_s:g} s + grace): cancelled", duration_s=ran)))
        if finished:
            sub.clock.forget.remote(finished)  # the clock keeps only running trials
        sub.fill()


def _result(ref, spec: TrialSpec) -> TrialResult:
    import ray
    try:
        return ray.get(ref)
    except Exception as exc:  # lost beyond its retries, or cancelled: recorded, never dropped
        return TrialResult(record=_spec_record(spec, "failed", f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}",
                                               started_at=None, duration_s=None))


def finalize(p: Plan, ok: int, failed: int, interrupted: bool) -> RunOutcome:
    """Close the store, write the final run.json, consolidate Parquet (not after an interrupt: --resume adds)."""
    import ray
    p.store.close()
    p.meta.update({"ended_at": dt.datetime.now(dt.timezone.utc).isoformat(),
                   "status": "interrupted" if interrupted else "finished",
                   "ok": len(p.done_before) + ok, "failed": failed, "infeasible": len(p.infeasible),
                   "skipped_already_ok": len(p.done_before),
                   "resources": {k: v for k, v in ray.cluster_resources().items() if not k.startswith("node:")}})
    try:
        p.store.write_meta(p.meta)
        if not interrupted:
            p.store.consolidate()
    except (OSError, HarnessError) as exc:
        print(f"lstm-bench: could not finish {p.run_dir}: {exc}; trials.jsonl holds every record written",
              file=sys.stderr)
    return RunOutcome(run_dir=p.run_dir, planned=len(p.suite.trials), ok=len(p.done_before) + ok,
                      failed=failed + len(p.infeasible), skipped=len(p.done_before), interrupted=interrupted)


def run_suite(suite: Suite, *, out_dir: str | Path = "results", address: str | None = None,
              resume: str | None = None, data_root: str | None = None, allow_unofficial: bool = False,
              download: bool = False, skip_infeasible: bool = False, progress: bool = True,
              num_cpus: int | None = None, max_retries: int = MAX_RETRIES,
              hang_grace_s: float = HANG_GRACE_S, hang_ids=()) -> RunOutcome:
    """Run every trial of `suite` not already ok in this run: plan, connect, place, start, submit and collect,
    finalize. A trial still running `hang_grace_s` + 2 x its time budget after it started is cancelled and
    recorded as status=timeout. `hang_ids` (tests only) makes those trials hang on their worker."""
    p = plan(suite, out_dir, resume)
    connect(address, num_cpus=num_cpus)  # first: it sets up the environment Ray reads on import
    import ray
    nodes = cluster_nodes()
    place(p, nodes, skip_infeasible)
    start(p, nodes, address)
    arrays_ref = None
    if any(s.data == "cifar10" for s in p.runnable):  # read once here, shared through the object store
        from .cifar import load_cifar10
        arrays_ref = ray.put(load_cifar10(data_root, allow_unofficial=allow_unofficial, download=download))
    slots = sum(int(n["resources"].get("CPU", 0) // max(suite.cpus_per_trial, 1)) for n in nodes) or 1
    sub = Submitter(p, arrays_ref, window=max(2 * slots, 4), max_retries=max_retries, hang_grace_s=hang_grace_s,
                    hang_ids=hang_ids)
    bar = progress_bar(len(p.runnable), progress)
    counts = {"ok": 0, "failed": 0}
    interrupted = False
    try:
        collect(sub, p.store, bar, counts)
    except KeyboardInterrupt:
        interrupted = True
        sub.cancel_all()
    except BaseException:
        sub.cancel_all()  # e.g. the results file became unwritable: stop the sweep, keep what is written
        raise
    finally:
        bar.close()
        outcome = finalize(p, counts["ok"], counts["failed"], interrupted)
    return outcome
