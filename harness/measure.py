"""Timing one step function until the numbers are stable -- and saying so when they are not.

Method (after torch.utils.benchmark's blocked_autorange):
  1. warm-up, excluded from every figure (allocator, cuDNN autotuning, lazy init, caches, clocks): at least
     `warmup_min_s` (1 s), and on until the throughput of two consecutive warm-up blocks agrees within `settle`
     (2%); capped at a quarter of `max_budget_s`, after which the trial is flagged "warm-up unsettled";
  2. timed blocks of n steps, n chosen so a block lasts about `block_s`; each step is timed on its own
     (CUDA events on GPU, recorded without syncing between steps; time.perf_counter on CPU, where steps are
     synchronous);
  3. blocks repeat until there are at least `min_blocks` blocks and `min_steps` steps (the sample floor: 5 and
     50) and the interquartile range of per-block images/s is within `rel_iqr` of the median, or the time
     budget ends. The budget stretches up to `max_budget_s` to meet the floor (never for the spread); a trial
     that still misses it is flagged "insufficient samples". Latency p90 needs 20 timed steps, p99 100: below
     that they are null (p99 of five samples is their maximum).

A fixed plan (`fixed_blocks`, the pair plan of `lstm-bench ab`): the warm-up as above with its own cap
(`warmup_cap_s`), then exactly that many blocks, whatever their spread or the budget: a pair's two sides are
sampled alike, and the spread is left to show (no stop-when-quiet).

Noise: a measurement is `noisy` when the spread stayed wide, the floor was missed, the warm-up never settled,
or other processes used CPU time that the trial needed. On the 2-core machines here a second busy process made
a row/128 training step 30x slower (shared/anchors.md). The 1-minute load average lags and counts this
process's own threads, so instead we read what the whole machine spent (/proc/stat) minus what this process
spent during the timed window: that is the CPU time other processes took, in cores. If it exceeds the cores
the trial left free (available cores - threads used), the trial competed for its cores and the result is
flagged.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable

import psutil
import torch

from .steps import sync


MIN_STEPS, MIN_BLOCKS = 50, 5     # the sample floor of every timing trial (tests may lower it)
PCT_MIN_STEPS = {90: 20, 99: 100}  # fewer timed steps than this: that percentile is null


@dataclass(frozen=True)
class Measurement:
    """What came out of timing one step function (images per step = batch_size)."""
    batch_size: int
    block_steps: int
    block_times_s: tuple[float, ...]   # wall time of each timed block
    step_times_s: tuple[float, ...]    # every timed step, in order
    warmup_steps: int
    warmup_s: float
    external_cores: float              # CPU cores other processes kept busy during the timed window
    free_cores: float                  # cores this trial did not ask for (available - threads)
    budget_exhausted: bool
    rel_iqr_target: float = 0.05
    warmup_settled: bool = True
    min_steps: int = MIN_STEPS
    min_blocks: int = MIN_BLOCKS
    timed_start: float = 0.0           # epoch seconds: the timed window
    timed_end: float = 0.0
    throttled_ms: float | None = None  # cgroup CPU throttling during the timed window (containers with a quota)

    @property
    def block_img_per_s(self) -> list[float]:
        return [self.batch_size * self.block_steps / t for t in self.block_times_s]

    @property
    def img_per_s(self) -> float:
        return statistics.median(self.block_img_per_s)

    @property
    def img_per_s_iqr(self) -> float:
        q1, q3 = quartiles(self.block_img_per_s)
        return q3 - q1

    @property
    def rel_iqr(self) -> float:
        return self.img_per_s_iqr / self.img_per_s if self.img_per_s else float("inf")

    def latency_ms(self, pct: float) -> float | None:
        if len(self.step_times_s) < PCT_MIN_STEPS.get(pct, 1):
            return None
        return 1000.0 * percentile(self.step_times_s, pct)

    @property
    def noise_reasons(self) -> list[str]:
        reasons = []
        blocks, steps = len(self.block_times_s), len(self.step_times_s)
        if blocks < self.min_blocks or steps < self.min_steps:
            reasons.append(f"insufficient samples: {steps} steps in {blocks} blocks "
                           f"(the floor is {self.min_steps} in {self.min_blocks})")
        if not self.warmup_settled:
            reasons.append("warm-up unsettled: block throughput still drifting when the warm-up cap was reached")
        if self.rel_iqr > self.rel_iqr_target:
            reasons.append(f"IQR {100 * self.rel_iqr:.1f}% of median > {100 * self.rel_iqr_target:.0f}%")
        contention = contention_reason(self.external_cores, self.free_cores)
        if contention:
            reasons.append(contention)
        if self.throttled_ms and self.throttled_ms > 0.01 * 1000 * (self.timed_end - self.timed_start):
            reasons.append(f"the container's CPU quota throttled the trial for {self.throttled_ms:.0f} ms")
        return reasons

    @property
    def noisy(self) -> bool:
        return bool(self.noise_reasons)


def contention_reason(external_cores: float, free_cores: float) -> str | None:
    """The noise rule for CPU contention, in one place: other processes took more cores than the trial left free
    (half a core of slack for the kernel and Ray's own daemons)."""
    if external_cores > free_cores + 0.5:
        return f"other processes used {external_cores:.1f} cores; {free_cores:.0f} were free"
    return None


def quartiles(xs: list[float]) -> tuple[float, float]:
    if len(xs) < 2:
        return xs[0], xs[0]
    q = statistics.quantiles(xs, n=4, method="inclusive")
    return q[0], q[2]


def percentile(xs, pct: float) -> float:
    """Linear-interpolated percentile (numpy's default), pct in [0, 100]."""
    s = sorted(xs)
    if not s:
        return float("nan")
    k = (len(s) - 1) * pct / 100.0
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def available_cores() -> float:
    """The cores this process may use: its affinity set, capped by its container's cgroup CPU quota."""
    from .env import available_cpu_cores
    return available_cpu_cores()


class CpuAccount:
    """CPU seconds spent by the whole machine and by this process, to tell how much others took."""

    def __init__(self):
        from .env import cgroup_cpu
        self.proc = psutil.Process()
        self.start = self._read()
        self._cgroup = cgroup_cpu
        self.throttled0 = cgroup_cpu()["throttled_usec"]

    def throttled_ms(self) -> float | None:
        """Time the container's CPU quota held this cgroup back since the start (None outside a quota)."""
        now = self._cgroup()["throttled_usec"]
        return None if now is None or self.throttled0 is None else (now - self.throttled0) / 1000.0

    def _read(self):
        t = psutil.cpu_times()
        busy = t.user + t.nice + t.system + getattr(t, "irq", 0) + getattr(t, "softirq", 0) + getattr(t, "steal", 0)
        own = self.proc.cpu_times()
        return time.perf_counter(), busy, own.user + own.system

    def external_cores(self) -> float:
        wall0, busy0, own0 = self.start
        wall1, busy1, own1 = self._read()
        return max(0.0, ((busy1 - busy0) - (own1 - own0)) / max(wall1 - wall0, 1e-9))


def _block(step, n: int, device: torch.device) -> tuple[float, list[float]]:
    """Run n steps; (block wall time, each step's time). CUDA: events between steps, one sync at the end."""
    if device.type == "cuda":
        with torch.cuda.device(device):
            events = [torch.cuda.Event(enable_timing=True) for _ in range(n + 1)]
            events[0].record()
            for i in range(n):
                step()
                events[i + 1].record()
            events[-1].synchronize()
        return (events[0].elapsed_time(events[-1]) / 1000.0,
                [events[i].elapsed_time(events[i + 1]) / 1000.0 for i in range(n)])
    per_step = []
    start = prev = time.perf_counter()
    for _ in range(n):
        step()
        now = time.perf_counter()
        per_step.append(now - prev)
        prev = now
    return prev - start, per_step


def measure(step: Callable[[], object], *, batch_size: int, device: torch.device, threads: int,
            budget_s: float = 30.0, max_budget_s: float | None = None, warmup_min_s: float = 1.0,
            settle: float = 0.02, block_s: float | None = None, min_blocks: int = MIN_BLOCKS,
            min_steps: int = MIN_STEPS, rel_iqr: float = 0.05, fixed_blocks: int | None = None,
            warmup_cap_s: float | None = None) -> Measurement:
    """Time `step` (one batch of `batch_size` images) until stable or out of budget (see the module doc)."""
    max_budget_s = max(budget_s, max_budget_s if max_budget_s is not None else 4 * budget_s)
    block_s = block_s or (0.1 if device.type == "cuda" else 0.25)
    t0 = time.perf_counter()

    # Warm-up: three single steps to size a block, then blocks until two in a row agree; excluded from all figures.
    warm_steps, last = 0, 0.0
    while warm_steps < 3:
        s = time.perf_counter()
        step()
        sync(device)
        last, warm_steps = time.perf_counter() - s, warm_steps + 1
    cap, prev_rate, settled = t0 + (warmup_cap_s if warmup_cap_s is not None else max_budget_s / 4), None, False
    while time.perf_counter() < cap:
        n = max(1, round(block_s / max(last, 1e-6)))
        took, _ = _block(step, n, device)
        warm_steps, last, rate = warm_steps + n, took / n, n / took
        settled = prev_rate is not None and abs(rate - prev_rate) <= settle * prev_rate
        if settled and time.perf_counter() - t0 >= warmup_min_s:
            break
        prev_rate = rate
    warm_time = time.perf_counter() - t0
    n = max(1, round(block_s / max(last, 1e-6)))

    account = CpuAccount()
    blocks, steps = [], []
    timed_start = time.time()
    t1 = time.perf_counter()
    soft, hard = t0 + budget_s, t0 + max_budget_s
    exhausted = False
    while True:
        took, per_step = _block(step, n, device)
        blocks.append(took)
        steps.extend(per_step)
        if fixed_blocks is not None:
            if len(blocks) >= fixed_blocks:
                break
            continue
        floor_met = len(blocks) >= min_blocks and len(steps) >= min_steps
        if floor_met:
            ips = [batch_size * n / t for t in blocks]
            q1, q3 = quartiles(ips)
            if (q3 - q1) <= rel_iqr * statistics.median(ips):
                break
        # Stop before a block that would overrun the budget (stretched to `hard` only to meet the floor).
        if time.perf_counter() + blocks[-1] > (soft if floor_met else hard):
            exhausted = True
            break
    timed_end = timed_start + (time.perf_counter() - t1)
    external = account.external_cores()
    return Measurement(batch_size=batch_size, block_steps=n, block_times_s=tuple(blocks),
                       step_times_s=tuple(steps), warmup_steps=warm_steps, warmup_s=warm_time,
                       external_cores=external, free_cores=max(0, available_cores() - threads),
                       budget_exhausted=exhausted, rel_iqr_target=rel_iqr, warmup_settled=settled,
                       min_steps=min_steps, min_blocks=min_blocks, timed_start=timed_start, timed_end=timed_end,
                       throttled_ms=account.throttled_ms())
