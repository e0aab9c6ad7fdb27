"""The driver's deadlines and its event loop, without a cluster: a retried task gets a fresh deadline, a
restarted clock loses none, a result that arrives by the time a trial is found overdue is kept, not
cancelled, and a node's death drops its attempts' deadlines and strands the trials only it could run."""
import dataclasses
import sys
import types

import pytest

from harness import cluster
from harness.clock import Deadlines, TrialClock
from harness.schema import TrialResult
from harness.spec import TrialSpec, Variant


def test_a_retried_task_gets_a_fresh_deadline():
    d = Deadlines()
    d.absorb("e1", [(1, "t", 100.0, 10.0, 1, "n1")])
    assert d.overdue(now=111.0) == {"t": 11.0}
    d.absorb("e1", [(2, "t", 109.0, 10.0, 2, "n2")])  # lost with its node, started again elsewhere
    assert d.overdue(now=111.0) == {} and d.overdue(now=119.5) == {"t": 10.5}


def test_a_restarted_clock_keeps_every_deadline_the_driver_holds():
    d = Deadlines()
    d.absorb("e1", [(1, "a", 100.0, 10.0, 1, "n"), (2, "b", 101.0, 10.0, 1, "n")])
    assert d.seen == 2
    d.absorb("e2", [(1, "c", 105.0, 10.0, 1, "n")])  # a new clock numbers its events from 1 again
    assert d.seen == 1 and set(d.overdue(now=200.0)) == {"a", "b", "c"}


def test_a_dead_nodes_attempts_lose_their_deadline_until_their_retry_starts():
    """Issue 19 item 2: an attempt lost with its node must not time out while its retry queues elsewhere."""
    d = Deadlines()
    d.absorb("e1", [(1, "lost", 100.0, 10.0, 1, "n1"), (2, "kept", 100.0, 10.0, 1, "n2")])
    assert d.nodes_lost({"n1"}) == ["lost"]
    assert d.overdue(now=500.0) == {"kept": 400.0}  # queued for its retry: not running, so never overdue
    d.absorb("e1", [(3, "lost", 450.0, 10.0, 2, "n2")])  # the retry starts: a fresh deadline
    assert d.overdue(now=455.0) == {"kept": 355.0} and "lost" in d.overdue(now=461.0)


def stranded_submitter(monkeypatch, alive_after: list[dict]):
    """A Submitter (no Ray) with a GPU trial pending, one queued, a CPU trial queued, the GPU trial's attempt
    started on n-gpu; cluster_nodes answers `alive_after`."""
    gpu = [TrialSpec(Variant(hidden_size=h, num_layers=1, batch_size=8), mode="infer", device="cuda") for h in (8, 16)]
    cpu = TrialSpec(Variant(hidden_size=8, num_layers=1, batch_size=8), mode="infer")
    monkeypatch.setattr(cluster, "cluster_nodes", lambda: alive_after)
    sub = object.__new__(cluster.Submitter)
    sub.p = types.SimpleNamespace(requests={gpu[0].trial_id: {"CPU": 1, "GPU": 1}, gpu[1].trial_id: {"CPU": 1, "GPU": 1},
                                            cpu.trial_id: {"CPU": 1}})
    sub.pending, sub.queue, sub.nodes_polled_at = {"ref-gpu": gpu[0]}, [gpu[1], cpu], 0.0
    sub.alive = {"n-cpu": "10.0.0.1", "n-gpu": "10.0.0.2"}
    sub.deadlines = Deadlines()
    sub.deadlines.absorb("e", [(1, gpu[0].trial_id, 100.0, 10.0, 1, "n-gpu")])
    return sub, gpu, cpu


def test_a_dead_gpu_node_strands_its_trials_at_the_next_poll(monkeypatch):
    """Issue 19 item 3: the only GPU node dies: its pending and queued trials are returned, with why, at the
    first poll that sees it gone; the CPU trial is not."""
    head = {"node_id": "n-cpu", "node_ip": "10.0.0.1", "resources": {"CPU": 1.0}}
    sub, gpu, cpu = stranded_submitter(monkeypatch, [head])
    out = sub.stranded()
    assert [(ref, s.trial_id) for ref, s, _ in out] == [("ref-gpu", gpu[0].trial_id), (None, gpu[1].trial_id)]
    assert all("10.0.0.2" in why and "died" in why and "'GPU': 1" in why for *_, why in out)
    assert sub.deadlines.by_trial == {} and sub.alive == {"n-cpu": "10.0.0.1"}
    assert sub.stranded() == []  # within POLL_S: not asked again
    sub.nodes_polled_at = 0.0
    assert sub.stranded() == []  # nobody died since


def test_a_dead_node_strands_nothing_another_alive_node_can_run(monkeypatch):
    alive = [{"node_id": "n-cpu", "node_ip": "10.0.0.1", "resources": {"CPU": 1.0}},
             {"node_id": "n-gpu2", "node_ip": "10.0.0.3", "resources": {"CPU": 1.0, "GPU": 1.0}}]
    sub, gpu, cpu = stranded_submitter(monkeypatch, alive)
    assert sub.stranded() == [] and sub.deadlines.by_trial == {}  # its deadline dropped all the same
    assert set(sub.alive) == {"n-cpu", "n-gpu2"}  # a node that joined is counted from now on


def test_a_trial_contaminated_from_outside_is_queued_again_at_most_twice():
    spec = TrialSpec(Variant(hidden_size=8, num_layers=1, batch_size=8), mode="infer")
    sub = object.__new__(cluster.Submitter)
    sub.queue, sub.reruns, sub.max_reruns = [], {}, cluster.CONTAMINATED_RERUNS
    busy = {**spec.flat(), "status": "ok", "noisy": True, "noise_reasons": "other processes used 1.6 cores; 1 were free"}
    assert sub.rerun_if_contaminated(spec, busy) and sub.rerun_if_contaminated(spec, busy)
    assert not sub.rerun_if_contaminated(spec, busy)  # CONTAMINATED_RERUNS spent: the third result stands
    assert sub.queue == [spec, spec] and sub.reruns == {spec.trial_id: 2}
    other = TrialSpec(Variant(hidden_size=16, num_layers=1, batch_size=8), mode="infer")
    for rec in ({**busy, "status": "failed"}, {**busy, "noisy": False, "noise_reasons": ""},
                {**busy, "noise_reasons": "insufficient samples: 9 steps in 9 blocks"},   # a rerun would not help
                {**busy, "noise_reasons": "profiled", "mode": "profile"}):
        assert not sub.rerun_if_contaminated(other, rec)
    assert sub.rerun_if_contaminated(other, {**busy, "noise_reasons": "warm-up unsettled: block throughput ..."})
    quick = TrialSpec(Variant(hidden_size=24, num_layers=1, batch_size=8), mode="infer", sample_plan="pair")
    assert not sub.rerun_if_contaminated(quick, {**busy, "noise_reasons": "warm-up unsettled: ..."})  # capped so
    assert sub.rerun_if_contaminated(quick, busy)
    sub.max_reruns = 0  # the suite's `reruns: 0`: a contaminated result stands at once, flagged
    fresh = TrialSpec(Variant(hidden_size=32, num_layers=1, batch_size=8), mode="infer")
    assert not sub.rerun_if_contaminated(fresh, busy) and fresh.trial_id not in sub.reruns


def test_a_pair_plan_trial_is_called_hung_sooner_than_a_standard_one():
    """Both plans: grace + 2 x (max budget + warm-up cap); the pair plan's cap is 0.6 s, the standard's 10 s."""
    standard = TrialSpec(Variant(hidden_size=8, num_layers=1, batch_size=8), mode="infer", time_budget_s=0.5)
    pair = dataclasses.replace(standard, sample_plan="pair")
    assert cluster.hang_limit_s(standard, 8) == pytest.approx(8 + 2 * (2 + 10))
    assert cluster.hang_limit_s(pair, 8) == pytest.approx(8 + 2 * (2 + 0.6))


def test_clock_counts_attempts_and_co_tenants():
    c = TrialClock()
    assert c.start("a", 5.0, "n1") == 1 and c.start("a", 5.0, "n1") == 2
    c.start("b", 5.0, "n1")
    c.start("x", 5.0, "n2")  # another node: not a co-tenant
    epoch, events = c.events_since(1)
    assert epoch == c.epoch and [e[1] for e in events] == ["a", "b", "x"]
    assert c.co_tenants("n1", "b", 0.0, 1e12) == 2  # both of a's runs overlapped b's window
    c.done("a", "n1")
    c.done("a", "n1")
    import time
    assert c.co_tenants("n1", "b", time.time() + 1, time.time() + 2) == 0  # a ended before b's window


def run_collect(monkeypatch, finished_by_cancel: bool):
    """cluster.collect over one pending trial that the clock reports overdue, with a stand-in for Ray whose
    result is (or is not) there when the driver checks just before cancelling. Returns (cancelled, stored)."""
    spec = TrialSpec(Variant(hidden_size=8, num_layers=1, batch_size=8), mode="infer")
    ref, cancelled, stored, ended = object(), [], [], []

    def wait(refs, num_returns=1, timeout=None, fetch_local=True):
        # the last-chance check must not wait for a local copy (a profile's trace still in transfer)
        ready = finished_by_cancel and len(refs) == 1 and timeout == 0 and sub.polled and not fetch_local
        return ([ref], []) if ready else ([], list(refs))

    monkeypatch.setitem(sys.modules, "ray", types.SimpleNamespace(
        wait=wait, cancel=lambda r, force=False: cancelled.append(r),
        get=lambda r, timeout=None: TrialResult(dict(spec.flat(), status="ok")),
        exceptions=types.SimpleNamespace(OutOfMemoryError=MemoryError)))

    class Sub:
        pending, queue, deadlines, polled, reruns = {ref: spec}, [], Deadlines(), False, {}

        def fill(self):
            pass

        def rerun_if_contaminated(self, spec, rec):
            return False

        def ended(self, trial_id):
            ended.append(trial_id)

        def stranded(self):
            return []

        def overdue(self):
            self.polled = True
            return [(ref, spec, 999.0)] if ref in self.pending else []

    class Store:
        def add(self, result, sync=True):
            stored.append(result.record)
            return result.record

        def sync(self):
            pass

    sub = Sub()
    bar = types.SimpleNamespace(update=lambda n: None, set_postfix=lambda **k: None)
    cluster.collect(sub, Store(), bar, {"ok": 0, "failed": 0})
    assert ended == ([] if finished_by_cancel else [spec.trial_id])  # a cancelled trial's interval is closed
    return cancelled, stored


def test_a_result_that_arrived_by_the_deadline_is_kept_even_before_its_copy_is_local(monkeypatch):
    cancelled, stored = run_collect(monkeypatch, finished_by_cancel=True)
    assert cancelled == [] and [r["status"] for r in stored] == ["ok"]


def test_an_overdue_trial_with_no_result_is_cancelled_and_recorded_timeout(monkeypatch):
    cancelled, stored = run_collect(monkeypatch, finished_by_cancel=False)
    assert len(cancelled) == 1 and stored[0]["status"] == "timeout" and "cancelled" in stored[0]["error"]


def test_a_restarted_clock_answers_its_first_events_to_a_driver_of_the_old_epoch(monkeypatch):
    """3 events, the clock restarts (a new actor: a new epoch, events from 1 again), 4 starts: the driver's poll
    (Submitter.overdue, through a stand-in for Ray) tracks all 4, not only the 4th."""
    clocks = [TrialClock()]

    class Remote:  # clock.events_since.remote(...) -> the answer of whichever clock is alive now
        def remote(self, *args):
            return clocks[-1].events_since(*args)

    monkeypatch.setitem(sys.modules, "ray", types.SimpleNamespace(get=lambda answer, timeout=None: answer))
    sub = object.__new__(cluster.Submitter)
    sub.deadlines, sub.pending, sub.polled_at = Deadlines(), {}, 0.0
    sub.clock = types.SimpleNamespace(events_since=Remote())
    for tid in "abc":
        clocks[-1].start(tid, 10.0, "n")
    sub.overdue()
    assert set(sub.deadlines.by_trial) == set("abc") and sub.deadlines.seen == 3
    sub.deadlines.forget("a"), sub.deadlines.forget("b"), sub.deadlines.forget("c")
    clocks.append(TrialClock())  # restarted
    for tid in "defg":
        clocks[-1].start(tid, 10.0, "n")
    sub.polled_at = 0.0
    sub.overdue()
    assert set(sub.deadlines.by_trial) == set("defg") and sub.deadlines.seen == 4


def test_every_ending_closes_a_trials_interval_on_its_node():
    """A retry's start closes the lost attempt's interval; `ended` (the driver, for a timeout, an OOM kill or a
    task that raised) closes it on every node: no later trial there counts it as a co-tenant."""
    import time
    c = TrialClock()
    c.start("lost", 5.0, "n1")
    c.start("lost", 5.0, "n2")  # its worker died on n1: retried on n2
    c.start("cancelled", 5.0, "n1")
    c.ended("lost")
    c.ended("cancelled")
    later = time.time() + 1
    assert c.co_tenants("n1", "next", later, later + 1) == 0 and c.co_tenants("n2", "next", later, later + 1) == 0
