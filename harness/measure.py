"""Timing one step function to a sample plan fixed in advance -- and saying so when the numbers are not clean.

Method (after torch.utils.benchmark's blocked_autorange, without its stop-when-quiet):
  1. warm-up, excluded from every figure (allocator, cuDNN autotuning, lazy init, caches, clocks): three single
     steps to size a block, then warm-up blocks of about `warmup_block_s` (0.1 s on CPU, 0.05 s on CUDA) until
     at least `warmup_min_s` (1 s) has passed and the last TREND_WINDOW (10) blocks show no trend: the exact
     Mann-Kendall test does not reject at 5% and the Theil-Sen slope is within `settle` (0.5%) per block
     (harness/stats.py, trend_settled; Barrett et al. 2017). The warm-up is capped at `warmup_cap_s` (10 s on
     CPU, 5 s on CUDA, whatever the budget); a trial that reaches the cap is flagged "warm-up unsettled". The
     record says which rule ended it (`warmup_rule`: trend or cap);
  2. then exactly `blocks` timed blocks, a count fixed before the trial starts from its mode and device
     (PLAN_BLOCKS: 150-300; the pair plan of `lstm-bench ab` 10), each of n steps, n chosen once after the
     warm-up so that the plan fills what is left of the time budget (at least MIN_BLOCK_S a block, one step,
     and `min_steps` steps in all). Each step is timed on its own (CUDA events on GPU, recorded without syncing
     between steps; time.perf_counter on CPU, where steps are synchronous). The blocks' spread never ends the
     trial early: the budget stretches up to `max_budget_s` to finish the plan (warm-up included, but a warm-up
     longer than the budget still leaves the plan max_budget_s - budget_s), and a trial that still cannot is
     stopped there and flagged "insufficient samples". Latency p90 needs 20 timed steps, p99 100;
  3. reported: the median of per-block img/s, its IQR, and the relative IQR with a 95% bootstrap interval
     (`rel_iqr_low`, `rel_iqr_high`: the spread with its own uncertainty). Why 150 blocks at least: the
     relative IQR of n blocks scatters by about 1.17 / sqrt(n) of itself (normal blocks), so a cell whose true
     spread is 10% is reported at >= 8% in 98% of trials at 150 blocks, against 70% at 20 (tests/test_measure.py
     simulates it). The old rule (stop as soon as the IQR looked small) passed a 10.8% cell as quiet 38% of
     the time and then reported ~3.5%.

Spread is not noise. A wide spread (relative IQR above `rel_iqr`, 5%) is variance: it is reported (`rel_iqr`
with its interval, `wide_spread`) and the cell stays in plots, tables and verdicts, drawn with its interval. A
measurement is `noisy` -- contaminated: its number is biased or off its plan -- when the plan was not finished,
the warm-up never settled, other processes used CPU time that the trial needed, or the cgroup throttled it (the
sweep reruns a contaminated trial, see cluster.CONTAMINATED_RERUNS). On the 2-core machines here a second busy
process made a row/128 training step 30x slower (shared/anchors.md). The 1-minute load average lags and counts
this process's own threads, so instead we read what the whole machine spent (/proc/stat) minus what this process
spent during the timed window: that is the CPU time other processes took, in cores. If it exceeds the cores the
trial left free (available cores - threads used), the trial competed for its cores and the result is flagged.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass
from typing import Callable

import psutil
import torch

from .steps import sync


MIN_STEPS = 50                     # the fewest timed steps of a trial, whatever its plan (tests may lower it)
PCT_MIN_STEPS = {90: 20, 99: 100}  # fewer timed steps than this: that percentile is null
# The standard plan: timed blocks per trial by device and mode, fixed before the trial starts. Inference steps
# are ~3x shorter than training steps and CUDA's than the CPU's, so more blocks cost the same time; 150 is the
# least that reports a 10% spread at >= 8% in >= 95% of trials (the module doc).
PLAN_BLOCKS = {("cpu", "train"): 150, ("cpu", "infer"): 200, ("cuda", "train"): 200, ("cuda", "infer"): 300}
MIN_BLOCK_S = {"cpu": 0.005, "cuda": 0.002}      # the shortest timed block (a budget too short for the plan)
WARMUP_BLOCK_S = {"cpu": 0.1, "cuda": 0.05}      # warm-up blocks
WARMUP_CAP_S = {"cpu": 10.0, "cuda": 5.0}        # the longest warm-up, whatever the budget


def plan_blocks(mode: str, device_type: str) -> int:
    """The standard plan's timed blocks for a mode on a device type (cpu or cuda)."""
    return PLAN_BLOCKS.get((device_type, mode), PLAN_BLOCKS[(device_type, "train")])


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
    budget_exhausted: bool             # the hard budget ended the plan early
    rel_iqr_target: float = 0.05
    warmup_rule: str = "trend"         # what ended the warm-up: trend (no trend left) or cap (time ran out)
    min_steps: int = MIN_STEPS
    planned_blocks: int = 0            # the plan's timed blocks (0: the blocks taken)
    timed_start: float = 0.0           # epoch seconds: the timed window
    timed_end: float = 0.0
    throttled_ms: float | None = None  # cgroup CPU throttling during the timed window (containers with a quota)
    steal_cores: float | None = None   # hypervisor steal in the timed window, in cores (None: not reported)

    @property
    def warmup_settled(self) -> bool:
        return self.warmup_rule == "trend"

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

    @property
    def rel_iqr_interval(self) -> tuple[float | None, float | None]:
        """95% bootstrap interval of rel_iqr over the blocks (None with fewer than two blocks)."""
        from .stats import rel_iqr_interval
        if len(self.block_times_s) < 2:
            return None, None
        lo, hi = rel_iqr_interval(self.block_img_per_s)
        return float(lo), float(hi)

    def latency_ms(self, pct: float) -> float | None:
        if len(self.step_times_s) < PCT_MIN_STEPS.get(pct, 1):
            return None
        return 1000.0 * percentile(self.step_times_s, pct)

    @property
    def noise_reasons(self) -> list[str]:
        reasons = []
        blocks, steps = len(self.block_times_s), len(self.step_times_s)
        planned = self.planned_blocks or blocks
        if blocks < planned or steps < self.min_steps:
            reasons.append(f"insufficient samples: {steps} steps in {blocks} blocks "
                           f"(the plan is {planned} blocks and at least {self.min_steps} steps)")
        if not self.warmup_settled:
            reasons.append("warm-up unsettled: block throughput still drifting when the warm-up cap was reached")
        contention = contention_reason(self.external_cores, self.free_cores)
        if contention:
            reasons.append(contention)
        if self.throttled_ms and self.throttled_ms > 0.01 * 1000 * (self.timed_end - self.timed_start):
            reasons.append(f"the container's CPU quota throttled the trial for {self.throttled_ms:.0f} ms")
        return reasons

    @property
    def noisy(self) -> bool:
        """Contaminated (see the module doc): biased or off its plan, unlike a wide spread."""
        return bool(self.noise_reasons)

    @property
    def wide_spread(self) -> bool:
        """The blocks' relative IQR is above the target: variance, reported with its interval, not a flag."""
        return self.rel_iqr > self.rel_iqr_target


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
        self.steal0 = getattr(psutil.cpu_times(), "steal", None)  # Linux /proc/stat's 8th column; else None
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

    def steal_cores(self) -> float | None:
        """Cores' worth of time the hypervisor ran other guests instead of this VM since the start (counted in
        external_cores too; None where /proc/stat has no steal column)."""
        steal1 = getattr(psutil.cpu_times(), "steal", None)
        if self.steal0 is None or steal1 is None:
            return None
        return max(0.0, (steal1 - self.steal0) / max(time.perf_counter() - self.start[0], 1e-9))

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
            settle: float | None = None, block_s: float | None = None, blocks: int | None = None,
            mode: str = "train", min_steps: int = MIN_STEPS, rel_iqr: float = 0.05,
            warmup_cap_s: float | None = None, warmup_block_s: float | None = None) -> Measurement:
    """Time `step` (one batch of `batch_size` images) to a fixed plan (see the module doc): `blocks` timed
    blocks (default: the standard plan of `mode` on this device), each of about `block_s` (default: what fills
    the rest of `budget_s`), stretched up to `max_budget_s` (default 4x the budget) to finish the plan."""
    from .stats import TREND_MAX_SLOPE, TREND_WINDOW, trend_settled
    kind = "cuda" if device.type == "cuda" else "cpu"
    max_budget_s = max(budget_s, max_budget_s if max_budget_s is not None else 4 * budget_s)
    blocks = blocks or plan_blocks(mode, kind)
    settle = TREND_MAX_SLOPE if settle is None else settle
    warmup_block_s = warmup_block_s or WARMUP_BLOCK_S[kind]
    t0 = time.perf_counter()

    # Warm-up: three single steps to size a block, then blocks until the recent ones show no trend (or the cap).
    warm_steps, last = 0, 0.0
    while warm_steps < 3:
        s = time.perf_counter()
        step()
        sync(device)
        last, warm_steps = time.perf_counter() - s, warm_steps + 1
    cap = t0 + (warmup_cap_s if warmup_cap_s is not None else WARMUP_CAP_S[kind])
    log_rates, rule = [], "cap"
    while time.perf_counter() < cap:
        n = max(1, round(warmup_block_s / max(last, 1e-6)))
        took, _ = _block(step, n, device)
        warm_steps, last = warm_steps + n, took / n
        log_rates.append(math.log(n / max(took, 1e-12)))
        if (len(log_rates) >= TREND_WINDOW and time.perf_counter() - t0 >= warmup_min_s
                and trend_settled(log_rates[-TREND_WINDOW:], max_slope=settle)):
            rule = "trend"
            break
    warm_time = time.perf_counter() - t0

    # The plan: `blocks` blocks of n steps, n fixed here (never from the timed blocks' spread).
    left = budget_s - warm_time
    target = block_s if block_s is not None else max(MIN_BLOCK_S[kind], left / blocks)
    n = max(1, math.ceil(min_steps / blocks), round(target / max(last, 1e-6)))
    account = CpuAccount()
    times, steps = [], []
    timed_start = time.time()
    t1 = time.perf_counter()
    hard = t1 + max_budget_s - min(warm_time, budget_s)  # a long warm-up (its cap is its own) leaves the plan room
    exhausted = False
    while len(times) < blocks:
        took, per_step = _block(step, n, device)
        times.append(took)
        steps.extend(per_step)
        if len(times) < blocks and time.perf_counter() + took > hard:  # the next block would overrun
            exhausted = True
            break
    timed_end = timed_start + (time.perf_counter() - t1)
    external, steal = account.external_cores(), account.steal_cores()
    return Measurement(batch_size=batch_size, block_steps=n, block_times_s=tuple(times),
                       step_times_s=tuple(steps), warmup_steps=warm_steps, warmup_s=warm_time,
                       external_cores=external, free_cores=max(0, available_cores() - threads),
                       budget_exhausted=exhausted, rel_iqr_target=rel_iqr, warmup_rule=rule,
                       min_steps=min_steps, planned_blocks=blocks, timed_start=timed_start, timed_end=timed_end,
                       throttled_ms=account.throttled_ms(), steal_cores=steal)
