"""Sweeping a suite on Ray: every trial a Ray task, every result written once as it arrives.

run_suite = plan (plan.py: the run directory, what is left to do, resources, what fits) -> connect -> start
(run.json, every node's GEMM ceiling probed in place) -> submit and collect (a bounded window of tasks in flight,
results in batches, hung trials cancelled) -> finalize (end probes: a node whose ceiling fell flags its trials;
run.json; Parquet).

Scheduling is Ray's: cuda trials ask for one GPU, cpu trials for `cpus_per_trial` CPUs (their torch threads),
exclusive timing trials also for their node's timing slot. The driver reads the dataset once and shares it
through Ray's object store, so worker nodes need no shared filesystem and no internet. A task lost with its
worker or node is retried elsewhere (max_retries), its hang deadline counted from when the retry starts; when a
node dies, the trials no alive node can run any more end infeasible at the next poll; a trial that raises comes
back as status=failed.
"""

from __future__ import annotations

import datetime as dt
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .ceiling import flag_drifted_nodes
from .clock import Deadlines, TrialClock
from .env import code_version
from .errors import HarnessError
from .nodes import OOM_RETRIES, cluster_nodes, connect, describe_resources, fits, probe_nodes
from .plan import Plan, code_identity, place, placement_of, plan
from .progress import progress_bar
from .schema import TrialResult
from .spec import TrialSpec
from .store import RunStore
from .suites import Suite

MAX_RETRIES = 3  # for tasks lost with a worker process or node (system failures), not for trial errors
HANG_GRACE_S = 120.0
WAIT_BATCH = 64  # results collected per ray.wait
# OOM_RETRIES (nodes.py): a trial killed for memory is retried once (Ray's default is forever), on any cluster
POLL_S = 1.0     # how often the driver asks the clock for start events (and looks for hung trials)
PROBE_S = 1.0    # seconds of each node's GEMM probe, per precision, at the start and end of a run
# A timing trial that comes back contaminated by something outside it (other processes on its cores, cgroup
# throttling, a warm-up that never settled) is run again, at most this often; its record is kept as status
# "contaminated" (the latest record of a trial wins) and the last attempt's record stands, flagged if still so.
CONTAMINATED_RERUNS = 2
RERUN_REASONS = ("other processes used", "quota throttled", "warm-up unsettled")


@dataclass
class Hooks:
    """Test-only hooks, passed by tests as an argument of the sweep (never read from the environment, so
    nothing a production environment carries can turn them on). trial_fn replaces run_trial (the driver-scale
    benchmark's instant trials); hang makes those trial ids hang; end_probe(node_id, probes) -> probes alters
    the end-of-run probes."""
    trial_fn: Callable | None = None
    hang: set = field(default_factory=set)
    end_probe: Callable | None = None
    probe_s: float = PROBE_S


def hang_limit_s(spec: TrialSpec, grace_s: float) -> float:
    """How long a trial may run before it is cancelled as hung: set-up, data and backend detection happen
    outside the budget, hence the grace; each of the two passes (end to end, then the model alone) may stretch
    to max_budget to finish its sample plan, and its warm-up cap does not depend on the budget. The pair plan: one
    pass, its warm-up capped at 0.6 s (factor 2 kept as headroom). Accuracy with no budget: never cancelled."""
    from .measure import WARMUP_CAP_S
    from .trial import PAIR_WARMUP_CAP_S
    cap = PAIR_WARMUP_CAP_S if spec.sample_plan == "pair" else max(WARMUP_CAP_S.values())
    return grace_s + 2 * (spec.max_budget + cap)


def _trial_task(spec_flat: dict, arrays, clock, limit_s: float, ceilings: dict, placement: str,
                hooks: Hooks | None = None) -> TrialResult:
    """Runs on a Ray worker. Never raises for a trial's own problems: they come back as a failed record."""
    import ray

    from .env import node_ip_of_this_worker
    from .trial import run_trial
    hooks = hooks or Hooks()
    tid = spec_flat["trial_id"]
    node = ray.get_runtime_context().get_node_id()
    attempt_ref = clock.start.remote(tid, limit_s, node)  # answered later: the trial does not wait for the clock
    try:  # whatever ends this attempt in this process, its interval on the node is closed (finally)
        if tid in hooks.hang:
            time.sleep(10**6)
        where = {"node_id": node, "node_ip": node_ip_of_this_worker(), "worker_pid": os.getpid(),
                 "placement": placement}
        spec = TrialSpec.from_flat(spec_flat)
        try:
            result = (hooks.trial_fn or run_trial)(spec, arrays=arrays, extra=where, ceilings=ceilings.get(node))
        except HarnessError as exc:  # e.g. a node without the device the trial asked for
            result = TrialResult(record=_spec_record(spec, "failed", str(exc), **where, duration_s=0.0,
                                                     started_at=dt.datetime.now(dt.timezone.utc).isoformat()))
        rec = result.record
        try:
            rec["attempt"] = ray.get(attempt_ref, timeout=60)
        except Exception:  # a clock that cannot answer costs this record its attempt number, not the trial
            rec["attempt"] = None
        if rec.get("timed_start") is not None:
            try:
                rec["co_tenants"] = ray.get(clock.co_tenants.remote(node, tid, rec["timed_start"],
                                                                    rec["timed_end"]), timeout=30)
            except Exception:
                rec["co_tenants"] = None
        return result
    finally:  # awaited: the node's slot is freed only once the interval is closed (else the next trial counts it)
        try:
            ray.get(clock.done.remote(tid, node), timeout=10)
        except Exception:  # a clock that cannot answer costs co-tenant counts, not the trial
            pass


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


def start(p: Plan, nodes: list[dict], address: str | None, ceilings: dict) -> None:
    """Open the store, write run.json, record the infeasible trials."""
    p.store.open()
    now = dt.datetime.now(dt.timezone.utc).isoformat()
    p.meta.update({"run_id": p.run_dir.name, "suite": p.suite.name, "suite_path": str(p.suite.path),
                   "suite_sha256": p.suite.sha256, "overrides": p.suite.overrides, "placement": p.suite.placement,
                   "nodes": nodes, "address": address or "embedded", "started_at": p.meta.get("started_at", now),
                   "attempt_started_at": now, "status": "running", "planned": len(p.suite.trials),
                   "ceilings": {nid: {"start": c} for nid, c in ceilings.items()}, **code_identity(),
                   "code_version": code_version()})
    p.store.write_meta(p.meta)
    for s in p.infeasible:
        p.store.append(_spec_record(s, "infeasible",
                                    f"needs {p.requests[s.trial_id]}; cluster: {describe_resources(nodes)}"))


class Submitter:
    """Submits trials as Ray tasks, keeping at most `window` in flight so the driver's work per result stays
    flat however large the suite. GPU and profile trials get a fresh worker process each (max_calls=1): a CUDA
    context, caching allocator or profiler state left by the previous trial must not colour this one. CPU timing
    trials reuse workers (a new process costs ~2 s of torch import per trial)."""

    def __init__(self, p: Plan, arrays_ref, ceilings: dict, window: int, max_retries: int, hang_grace_s: float,
                 hooks: Hooks | None, nodes: list[dict] = ()):
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
        self.p, self.arrays_ref, self.ceilings, self.window = p, arrays_ref, ceilings, window
        self.max_retries, self.hang_grace_s, self.hooks = max_retries, hang_grace_s, hooks
        self.queue = list(p.runnable)
        self.pending: dict = {}  # ObjectRef -> TrialSpec
        self.deadlines = Deadlines()
        self.reruns: dict[str, int] = {}  # trial_id -> reruns after a contaminated result
        self.max_reruns = CONTAMINATED_RERUNS if p.suite.reruns is None else p.suite.reruns
        self.first_submit_at = self.last_record_at = None  # epoch seconds, for run.json (driver overhead)
        self.polled_at = self.nodes_polled_at = 0.0
        self.alive = {n["node_id"]: n["node_ip"] for n in nodes}  # node_id -> ip, as of the last poll
        self.reused, self.fresh = ray.remote(_trial_task), ray.remote(max_calls=1)(_trial_task)
        # The clock lives on the driver's node, so a worker node that dies or drops off the network takes
        # neither the clock nor the driver's loop with it; restarted if its process dies, calls retried.
        self.clock = ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)(TrialClock).options(
            name=f"lstm-bench-clock-{p.run_dir.name}",
            scheduling_strategy=NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        ).remote()

    def fill(self) -> None:
        if self.first_submit_at is None and self.queue:
            self.first_submit_at = time.time()
        while self.queue and len(self.pending) < self.window:
            s = self.queue.pop(0)
            req = self.p.requests[s.trial_id]
            task = self.fresh if s.device.startswith("cuda") or s.mode == "profile" else self.reused
            ref = task.options(num_cpus=req.get("CPU", 1), num_gpus=req.get("GPU", 0), memory=req.get("memory"),
                               resources={k: v for k, v in req.items() if k not in ("CPU", "GPU", "memory")} or None,
                               max_retries=self.max_retries, retry_exceptions=False,
                               name=f"trial {s.trial_id} {s.variant.label} {s.mode}").remote(
                s.flat(), self.arrays_ref, self.clock, hang_limit_s(s, self.hang_grace_s), self.ceilings,
                placement_of(s, self.p.suite.placement), self.hooks)
            self.pending[ref] = s

    def overdue(self) -> list[tuple[object, TrialSpec, float]]:
        """Pending trials past their hang deadline: (ref, spec, seconds running). The deadlines are the driver's
        own; the clock is asked only for start events since the last poll (a slow clock delays them, never
        loses those already known)."""
        import ray
        if time.time() - self.polled_at < POLL_S:
            return []
        self.polled_at = time.time()
        try:
            since = self.clock.events_since.remote(self.deadlines.seen, self.deadlines.epoch)
            self.deadlines.absorb(*ray.get(since, timeout=2))
        except Exception:
            pass
        late = self.deadlines.overdue()
        return [(ref, s, late[s.trial_id]) for ref, s in self.pending.items() if s.trial_id in late]

    def rerun_if_contaminated(self, spec: TrialSpec, rec: dict) -> bool:
        """Queue `spec` again (first) when `rec` is an ok timing result contaminated from outside and reruns are
        left; returns whether it did."""
        reasons = rec.get("noise_reasons") or ""
        # the pair plan caps its warm-up at 0.6 s by design (it is for pairs, or a quick check): not a rerun
        rerun_for = [r for r in RERUN_REASONS if spec.sample_plan != "pair" or not r.startswith("warm-up")]
        if rec.get("status") != "ok" or rec.get("mode") not in ("train", "infer") or not rec.get("noisy") \
                or not any(r in reasons for r in rerun_for) \
                or self.reruns.get(spec.trial_id, 0) >= self.max_reruns:
            return False
        self.reruns[spec.trial_id] = self.reruns.get(spec.trial_id, 0) + 1
        self.queue.insert(0, spec)
        return True

    def stranded(self) -> list[tuple[object | None, TrialSpec, str]]:
        """After a node dies (looked for every POLL_S): the deadlines of attempts that ran there are dropped
        (their retries may queue behind other trials; each gets a fresh deadline when it starts), and the trials,
        queued (ref None) or pending, that no alive node can run any more are returned with why: Ray would hold
        them, without a word, until such a node joined."""
        if time.time() - self.nodes_polled_at < POLL_S:
            return []
        self.nodes_polled_at = time.time()
        try:
            nodes = cluster_nodes()
        except Exception:  # the GCS did not answer this time: look again at the next poll
            return []
        dead = set(self.alive) - {n["node_id"] for n in nodes}
        gone = ", ".join(f"{self.alive[n]} ({n[:8]})" for n in sorted(dead))
        self.alive = {n["node_id"]: n["node_ip"] for n in nodes}
        if not dead:
            return []
        self.deadlines.nodes_lost(dead)
        seen = dt.datetime.now(dt.timezone.utc).strftime("%H:%M:%S UTC")
        return [(ref, s, f"needs {self.p.requests[s.trial_id]}: no alive node has it since node {gone} died "
                         f"(seen dead at {seen}); cluster: {describe_resources(nodes)}")
                for ref, s in [*self.pending.items(), *((None, s) for s in self.queue)]
                if not fits(self.p.requests[s.trial_id], nodes)]

    def ended(self, trial_id: str) -> None:
        """Tell the clock a trial ended without its worker saying so (see TrialClock.ended); not awaited."""
        try:
            self.clock.ended.remote(trial_id)
        except Exception:  # a clock that cannot be reached costs co-tenant counts, not the sweep
            pass

    def cancel_all(self) -> None:
        import ray
        for ref in self.pending:
            ray.cancel(ref, force=True)


def collect(sub: Submitter, store: RunStore, bar, counts: dict) -> None:
    """Run the event loop until every trial has a record: batches of finished results are stored as they come,
    overdue trials cancelled and recorded as timeouts. `counts` (ok, failed) is kept current, so an interrupt
    loses no tally."""
    import ray

    def record(result: TrialResult, spec: TrialSpec) -> None:
        sub.deadlines.forget(spec.trial_id)
        if sub.rerun_if_contaminated(spec, result.record):
            n = sub.reruns[spec.trial_id]
            store.add(TrialResult(record={**result.record, "status": "contaminated", "error":
                                          f"rerun {n} of at most {sub.max_reruns}: {result.record['noise_reasons']}"}),
                      sync=False)
            return
        if spec.trial_id in sub.reruns:
            result.record["reruns"] = sub.reruns[spec.trial_id]
        rec = store.add(result, sync=False)  # one fsync per batch, below, before the loop moves on
        sub.last_record_at = time.time()
        counts["ok" if rec.get("status") == "ok" else "failed"] += 1
        bar.update(1)
        bar.set_postfix(failed=counts["failed"], running=len(sub.pending), queued=len(sub.queue), refresh=False)

    sub.fill()
    while sub.pending:
        refs = list(sub.pending)
        ready, _ = ray.wait(refs, num_returns=min(WAIT_BATCH, len(refs)), timeout=0)  # what is done now
        if not ready:  # nothing yet: block for the first one (or a second, to look for hung trials)
            ready, _ = ray.wait(refs, num_returns=1, timeout=1.0)
        for ref in ready:
            spec = sub.pending.pop(ref)
            record(_result(ref, spec, sub.ended), spec)
        store.sync()
        for ref, spec, ran in sub.overdue():
            sub.pending.pop(ref)
            # it finished after all: keep its result (fetch_local=False: a profile's trace may still be on its
            # way to this node; done is done, the copy is not what is asked)
            if ray.wait([ref], timeout=0, fetch_local=False)[0]:
                record(_result(ref, spec, sub.ended), spec)
                continue
            sub.ended(spec.trial_id)  # before the cancel frees its node for the next trial
            ray.cancel(ref, force=True)  # kills the worker process; a cancelled task is not retried
            record(TrialResult(record=_spec_record(
                spec, "timeout", f"still running {ran:.0f} s after it started (time budget {spec.budget_s:g} s, "
                f"at most {spec.max_budget:g} s, + grace): cancelled", duration_s=ran)), spec)
            store.sync()
        stranded = sub.stranded()
        for ref, spec, why in stranded:  # a node died and with it the only place these trials could run
            if ref is None:
                sub.queue.remove(spec)
            else:
                sub.pending.pop(ref)
                sub.ended(spec.trial_id)
                ray.cancel(ref, force=True)  # a task still waiting for a node: nothing runs, nothing is retried
            sub.deadlines.forget(spec.trial_id)
            sub.p.infeasible.append(spec)  # counted as infeasible in run.json, as those known at the start
            store.append(_spec_record(spec, "infeasible", why), sync=False)
            bar.update(1)
        if stranded:  # one fsync for them (the loop's own sync above covers the batch of results)
            store.sync()
        sub.fill()


def _result(ref, spec: TrialSpec, ended: Callable[[str], None]) -> TrialResult:
    """The trial's result, or a failed record when its task raised (then `ended`, Submitter.ended, is told:
    no worker of it may have closed its interval on the node)."""
    import ray
    try:
        return ray.get(ref)
    except ray.exceptions.OutOfMemoryError as exc:  # killed by Ray's memory monitor, retried at most once
        ended(spec.trial_id)
        return TrialResult(record=_spec_record(
            spec, "failed", f"out of memory: killed by Ray's memory monitor on every attempt (the first and "
            f"{OOM_RETRIES} retry); raise memory_mb or give it a bigger node ({str(exc).splitlines()[0][:200]})",
            attempt=1 + OOM_RETRIES, started_at=None, duration_s=None))
    except Exception as exc:  # lost beyond its retries, or cancelled: recorded, never dropped
        ended(spec.trial_id)
        return TrialResult(record=_spec_record(spec, "failed", f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}",
                                               started_at=None, duration_s=None))


def finalize(p: Plan, ok: int, failed: int, status: str) -> RunOutcome:
    """Close the store, write the final run.json with how the run ended (finished, interrupted or aborted), and
    consolidate Parquet only for a finished run (--resume adds to the others; a partial run is not a result)."""
    import ray
    p.store.close()
    p.meta.update({"ended_at": dt.datetime.now(dt.timezone.utc).isoformat(), "status": status,
                   "ok": len(p.done_before) + ok, "failed": failed, "infeasible": len(p.infeasible),
                   "skipped_already_ok": len(p.done_before)})
    try:
        try:  # Ray may be what failed: run.json is still written, without the resources
            p.meta["resources"] = {k: v for k, v in ray.cluster_resources().items() if not k.startswith("node:")}
        except Exception:
            p.meta["resources"] = None
        p.store.write_meta(p.meta)
        if status == "finished":
            p.store.consolidate()
    except (OSError, HarnessError) as exc:
        print(f"lstm-bench: could not finish {p.run_dir}: {exc}; trials.jsonl holds every record written",
              file=sys.stderr)
    return RunOutcome(run_dir=p.run_dir, planned=len(p.suite.trials), ok=len(p.done_before) + ok,
                      failed=failed + len(p.infeasible), skipped=len(p.done_before),
                      interrupted=status == "interrupted")


def run_suite(suite: Suite, *, out_dir: str | Path = "results", address: str | None = None,
              resume: str | None = None, data_root: str | None = None, allow_unofficial: bool = False,
              download: bool = False, skip_infeasible: bool = False, progress: bool = True,
              num_cpus: int | None = None, max_retries: int = MAX_RETRIES,
              hang_grace_s: float = HANG_GRACE_S, hooks: Hooks | None = None) -> RunOutcome:
    """Run every trial of `suite` not already ok in this run (see the module doc). A trial still running
    `hang_grace_s` + 2 x its max budget after it started is cancelled and recorded as status=timeout."""
    p = plan(suite, out_dir, resume)  # takes the run directory's driver lock (runlock.py): one driver per run
    try:
        return _sweep(p, suite, address, data_root, allow_unofficial, download, skip_infeasible, progress,
                      num_cpus, max_retries, hang_grace_s, hooks or Hooks())
    finally:
        p.lock.release(remove_if_unused=resume is None)


def _sweep(p: Plan, suite: Suite, address, data_root, allow_unofficial, download, skip_infeasible, progress,
           num_cpus, max_retries, hang_grace_s, hooks: Hooks) -> RunOutcome:
    connect(address, num_cpus=num_cpus)  # first: it sets up the environment Ray reads on import
    import ray
    nodes = cluster_nodes()
    place(p, nodes, skip_infeasible)
    timing = [s for s in p.runnable if s.mode in ("train", "infer")]
    arrays_ref = None
    if any(s.data == "cifar10" for s in p.runnable):  # read once here (before run.json says running), shared
        from .cifar import load_cifar10                 # through the object store
        arrays_ref = ray.put(load_cifar10(data_root, allow_unofficial=allow_unofficial, download=download))
    threads = suite.cpus_per_trial
    ceilings = probe_nodes(nodes, threads, hooks.probe_s) if timing else {}
    start(p, nodes, address, ceilings)
    counts = {"ok": 0, "failed": 0}
    status, sub, bar = "aborted", None, None  # a run ends finished, interrupted or aborted (any other exception)
    try:
        slots = sum(int(n["resources"].get("CPU", 0) // max(suite.cpus_per_trial, 1)) for n in nodes) or 1
        sub = Submitter(p, arrays_ref, ceilings, window=max(2 * slots, 4), max_retries=max_retries,
                        hang_grace_s=hang_grace_s, hooks=hooks, nodes=nodes)
        bar = progress_bar(len(p.runnable), progress)
        collect(sub, p.store, bar, counts)
        p.meta.update(first_submit_at=sub.first_submit_at, last_record_at=sub.last_record_at)
        if timing:
            end = probe_nodes(cluster_nodes(), threads, hooks.probe_s)
            if hooks.end_probe:
                end = {nid: hooks.end_probe(nid, probes) for nid, probes in end.items()}
            flag_drifted_nodes(p, end)
        status = "finished"
    except KeyboardInterrupt:
        status = "interrupted"
    finally:  # an exception other than an interrupt (Ray gone, the disk full, a bug) goes on up: status aborted
        if status != "finished" and sub is not None:
            try:
                sub.cancel_all()
            except Exception:  # Ray may be what failed
                pass
        if bar is not None:
            bar.close()
        outcome = finalize(p, counts["ok"], counts["failed"], status)
    return outcome
