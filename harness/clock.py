"""The trial clock: when each trial started, on which node, which attempt it is, and who shared its node.

Ray does not say when a queued task begins to run, so each trial tells a small actor pinned to the driver's
node (`TrialClock.start`, which answers the attempt number). The driver keeps the deadlines itself
(`Deadlines`), fed by the clock's start events since the last poll: a poll costs what is new, not the suite;
a retried task starts again and gets a fresh deadline, and a trial whose node died has none until it does (it
may queue behind others for its retry: Ray says nothing while it waits); a restarted clock (a new `epoch`) loses no deadline the
driver already holds, and a worker's start call waits for the restarted actor (max_task_retries=-1). The driver
names the epoch it has seen: a clock of another epoch answers all its events, since the driver's `seen` counts
another clock's events (asking a new clock for events after the old count would skip its first ones).
"""

from __future__ import annotations

import secrets
import time

HISTORY_S = 3600.0  # finished trials' node intervals kept this long, for co-tenant counts


class TrialClock:
    def __init__(self):
        self.epoch = secrets.token_hex(4)
        self.events: list[tuple] = []               # (seq, trial_id, started, limit_s, attempt, node_id)
        self.attempts: dict[str, int] = {}
        self.intervals: dict[str, list[list]] = {}  # node_id -> [[trial_id, start, end or None], ...]

    def start(self, trial_id: str, limit_s: float, node_id: str) -> int:
        now = time.time()
        self.ended(trial_id, now)  # a new attempt: the last one ended (its worker or node lost, or OOM-killed)
        attempt = self.attempts[trial_id] = self.attempts.get(trial_id, 0) + 1
        self.events.append((len(self.events) + 1, trial_id, now, limit_s, attempt, node_id))
        self.intervals.setdefault(node_id, []).append([trial_id, now, None])
        return attempt

    def events_since(self, seq: int, epoch: str | None = None) -> tuple[str, list[tuple]]:
        """(this clock's epoch, its events after `seq`); every event when `epoch` (the driver's) is another's."""
        return self.epoch, self.events[0 if epoch not in (None, self.epoch) else seq:]

    def done(self, trial_id: str, node_id: str) -> None:
        """The worker's own report of its ending (start keeps one open interval per trial, so ended closes it)."""
        now = time.time()
        self.ended(trial_id, now)
        self.intervals[node_id] = [iv for iv in self.intervals.get(node_id, [])
                                   if iv[2] is None or iv[2] > now - HISTORY_S]

    def ended(self, trial_id: str, now: float | None = None) -> None:
        """Close every open interval of `trial_id`, on any node: the driver calls it for an ending the trial's
        worker could not report (cancelled as a timeout, lost or OOM-killed beyond its retries, raised), so that
        no later trial on that node counts it as a co-tenant."""
        now = time.time() if now is None else now
        for ivs in self.intervals.values():
            for iv in ivs:
                if iv[0] == trial_id and iv[2] is None:
                    iv[2] = now

    def co_tenants(self, node_id: str, trial_id: str, t0: float, t1: float) -> int:
        """Other trials whose run on `node_id` overlapped the window [t0, t1]."""
        return sum(1 for tid, start, end in self.intervals.get(node_id, [])
                   if tid != trial_id and start < t1 and (end is None or end > t0))


class Deadlines:
    """The driver's side: trial_id -> (started, deadline, attempt, node_id), fed from the clock's start events."""

    def __init__(self):
        self.by_trial: dict[str, tuple[float, float, int, str]] = {}
        self.epoch, self.seen = None, 0

    def absorb(self, epoch: str, events: list[tuple]) -> None:
        if epoch != self.epoch:  # a restarted clock numbers its events from 1 again; known deadlines stay
            self.epoch, self.seen = epoch, 0
        for seq, trial_id, started, limit_s, attempt, node_id in events:
            self.by_trial[trial_id] = (started, started + limit_s, attempt, node_id)
            self.seen = max(self.seen, seq)

    def forget(self, trial_id: str) -> None:
        self.by_trial.pop(trial_id, None)

    def nodes_lost(self, node_ids: set[str]) -> list[str]:
        """Drop the deadlines of attempts that ran on `node_ids` (dead): Ray retries such a task elsewhere, and
        its queueing there is not running. The retry's start brings a fresh deadline. Returns the trial ids."""
        lost = [tid for tid, (*_, node_id) in self.by_trial.items() if node_id in node_ids]
        for tid in lost:
            del self.by_trial[tid]
        return lost

    def overdue(self, now: float | None = None) -> dict[str, float]:
        """trial_id -> seconds running, for trials past their deadline."""
        now = time.time() if now is None else now
        return {tid: now - started for tid, (started, deadline, *_) in self.by_trial.items() if now > deadline}
