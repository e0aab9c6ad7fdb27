"""Timing one step function until the numbers are stable -- and saying so when they are not.

Method (after torch.utils.benchmark's blocked_autorange):
  1. warm-up: at least 3 steps and at least `warmup_s`, excluded from every figure (allocator, cuDNN
     autotuning, lazy init);
  2. timed blocks of n steps, n chosen so a block lasts about `block_s`; each step is timed on its own
     (CUDA events on GPU, recorded without syncing between steps; time.perf_counter on CPU, where steps are
     synchronous);
  3. blocks repeat until there are at least `min_blocks` and the interquartile range of per-block images/s is
     within `rel_iqr` of the median, or the time budget runs out.

Noise: a measurement is `noisy` when the spread stayed wide, or when other processes used CPU time that
the trial needed. On the 2-core machines here a second busy process made a row/128 training step 30x
slower (shared/anchors.md). The 1-minute load average lags and counts this process's own threads, so
instead we read what the whole machine spent (/proc/stat) minus what this process spent during the timed
window: that is the CPU time other processes took, in cores. If it exceeds the cores the trial left free
(available cores - threads used), the trial competed for its cores and the result is flagged.
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable

import psutil
import torch


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
    notes: tuple[str, ...] = field(default=())

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

    def latency_ms(self, pct: float) -> float:
        return 1000.0 * percentile(self.step_times_s, pct)

    @property
    def noise_reasons(self) -> list[str]:
        reasons = []
        if len(self.block_times_s) < 3:
            reasons.append(f"only {len(self.block_times_s)} timed block(s) fit the time budget")
        if self.rel_iqr > self.rel_iqr_target:
            reasons.append(f"IQR {100 * self.rel_iqr:.1f}% of median > {100 * self.rel_iqr_target:.0f}%")
        if self.external_cores > self.free_cores + 0.5:
            reasons.append(f"other processes used {self.external_cores:.1f} cores; "
                           f"{self.free_cores:.0f} were free")
        return reasons

    @property
    def noisy(self) -> bool:
        return bool(self.noise_reasons)


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


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


class CpuAccount:
    """CPU seconds spent by the whole machine and by this process, to tell how much others took."""

    def __init__(self):
        self.proc = psutil.Process()
        self.start = self._read()

    def _read(self):
        t = psutil.cpu_times()
        busy = t.user + t.nice + t.system + getattr(t, "irq", 0) + getattr(t, "softirq", 0) + getattr(t, "steal", 0)
        own = self.proc.cpu_times()
        return time.perf_counter(), busy, own.user + own.system

    def external_cores(self) -> float:
        wall0, busy0, own0 = self.start
        wall1, busy1, own1 = self._read()
        return max(0.0, ((busy1 - busy0) - (own1 - own0)) / max(wall1 - wall0, 1e-9))


def measure(step: Callable[[], object], *, batch_size: int, device: torch.device, threads: int,
            budget_s: float = 30.0, warmup_s: float = 1.0, block_s: float | None = None,
            min_blocks: int = 5, rel_iqr: float = 0.05) -> Measurement:
    """Time `step` (one batch of `batch_size` images) until stable or out of budget."""
    cuda = device.type == "cuda"
    sync = (lambda: torch.cuda.synchronize(device)) if cuda else (lambda: None)
    block_s = block_s or (0.1 if cuda else 0.25)
    t0 = time.perf_counter()

    # Warm-up: excluded from every figure.
    warm_steps, last = 0, 0.0
    while warm_steps < 3 or (time.perf_counter() - t0 < warmup_s and time.perf_counter() - t0 < 0.2 * budget_s):
        s = time.perf_counter()
        step()
        sync()
        last = time.perf_counter() - s
        warm_steps += 1
    warm_time = time.perf_counter() - t0
    n = max(1, round(block_s / max(last, 1e-6)))

    account = CpuAccount()
    blocks, steps = [], []
    deadline = t0 + budget_s
    exhausted = False
    while True:
        if cuda:
            events = [torch.cuda.Event(enable_timing=True) for _ in range(n + 1)]
            events[0].record()
            for i in range(n):
                step()
                events[i + 1].record()
            events[-1].synchronize()
            per_step = [events[i].elapsed_time(events[i + 1]) / 1000.0 for i in range(n)]
            blocks.append(events[0].elapsed_time(events[-1]) / 1000.0)
        else:
            per_step = []
            start = prev = time.perf_counter()
            for _ in range(n):
                step()
                now = time.perf_counter()
                per_step.append(now - prev)
                prev = now
            blocks.append(prev - start)
        steps.extend(per_step)
        if len(blocks) >= min_blocks:
            ips = [batch_size * n / t for t in blocks]
            q1, q3 = quartiles(ips)
            if (q3 - q1) <= rel_iqr * statistics.median(ips):
                break
        # Stop before a block that would overrun the budget (keep at least one block).
        if time.perf_counter() + blocks[-1] > deadline:
            exhausted = True
            break
    external = account.external_cores()
    return Measurement(batch_size=batch_size, block_steps=n, block_times_s=tuple(blocks),
                       step_times_s=tuple(steps), warmup_steps=warm_steps, warmup_s=warm_time,
                       external_cores=external, free_cores=max(0, available_cores() - threads),
                       budget_exhausted=exhausted, rel_iqr_target=rel_iqr)
