"""Each node's ceiling: a fixed square-GEMM probe of what the hardware can do, per precision.

Every LSTM timing record can then say what fraction of its node's ceiling it reached (`ceiling_frac`), and a run
that probes at its start and end can tell when the node itself slowed down in between (`drifted`).

The probe: C = A @ B on n x n matrices (CPU: n=1024 up to 4 threads, 2048 above, so one call is ~10-100 ms; CUDA:
n=8192), a few warm-up calls excluded, then timed samples for `seconds` (at least MIN_REPEATS). Each sample times
enough back-to-back calls to last ~20 ms; GFLOP/s = 2 n^3 / t per call. Reported: the median over samples and the
spread = (Q3 - Q1) / median. CUDA samples are timed with torch.cuda.Event inside torch.cuda.device(device).
Precisions: "float32" is strict IEEE fp32 (TF32 off for matmul and cuDNN during the probe, flags restored after);
"tf32" (CUDA only) is fp32 storage with TF32 tensor cores; "bfloat16" (CUDA only) is bf16 inputs.

Evidence for the drift threshold: `.venv/bin/python scripts/probe_spread.py` (10 windows of 1 s, each in a fresh
process, ~13 s apart, 126 s in all; this 2-core VM, 2 threads, n=1024, while other engineers ran test suites on it,
1-min load 1.0-1.3):
    per window 160.3 56.7 53.7 142.2 57.2 53.7 180.1 60.1 59.4 53.4 GFLOP/s; median 58.3 GFLOP/s;
    max drop between any two windows 70.4% (1 - min/max); within-window spread 0.1-185%.
The busy machine shows: the ceiling is bimodal, ~140-180 GFLOP/s when both cores are free and ~53-60 when another
process holds one (two threads then wait on each other). Within that steady (contended) mode the windows stay within
11.2% of each other; two earlier runs of the script gave 12.9% and 21.8% (the latter with this module's tests also
running once alongside). DRIFT_THRESHOLD is therefore 25% in log terms, both ways: |ln(end/start)| > ln(1.25),
an end probe below 0.8x or above 1.25x its start (the next 5% step above the largest steady wander, 21.8%; the 15%
used until 2026-12-07 sat below it, and only falls were flagged, so a run that started contended and ended free
was not). The probe's own noise under one condition is not flagged, while a change of condition between a run's
start and end probes (a core taken: -65%, ln 0.35 = -1.05; a core freed: +180%) is, which is the point. A 10%
one-sided threshold flagged 18 of the 45 start/end pairs of the run above, 15% flagged 15 (the mode switches
only). On a quiet node a smaller threshold can be passed. On a shared node the probe measures the share of the hardware the run got, which is what a timing is
comparable to.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch

from .errors import DeviceError

PRECISIONS = ("float32", "tf32", "bfloat16")
CPU_PRECISIONS = ("float32",)
CUDA_PRECISIONS = ("float32", "tf32", "bfloat16")
CUDA_N = 8192
MIN_REPEATS = 5
WARMUP_CALLS = 3
SAMPLE_TARGET_S = 0.02
DRIFT_THRESHOLD = 0.25  # |ln(end/start)| > ln(1 + DRIFT_THRESHOLD): see the module doc
_DTYPES = {"float32": torch.float32, "tf32": torch.float32, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class Probe:
    precision: str
    device: str  # device kind: "cpu" or "cuda"
    n: int
    gflop_per_s: float  # median over repeats
    spread: float  # (Q3 - Q1) / median over repeats
    repeats: int
    threads: int  # torch intra-op threads during the probe

    def as_dict(self) -> dict:
        return {"gflop_per_s": self.gflop_per_s, "spread": self.spread, "n": self.n}


def precisions_for(device_kind: str) -> tuple[str, ...]:
    if device_kind == "cpu":
        return CPU_PRECISIONS
    if device_kind == "cuda":
        return CUDA_PRECISIONS
    raise ValueError(f"no ceiling probe for device kind {device_kind!r} (cpu or cuda)")


def cpu_n(threads: int) -> int:
    """Big enough to be compute-bound, small enough that one call stays around 10-100 ms."""
    return 1024 if threads <= 4 else 2048


def _check(device: torch.device, precision: str, seconds: float) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; one of {', '.join(PRECISIONS)}")
    if seconds <= 0:
        raise ValueError(f"probe seconds must be > 0, got {seconds}")
    if device.type == "cpu" and precision not in CPU_PRECISIONS:
        raise ValueError(f"the CPU ceiling is probed in float32 only, not {precision} "
                         f"({precision} GEMMs on CPU are not a hardware ceiling worth comparing against)")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"cannot probe {device}: CUDA is not available here")
    precisions_for(device.type)


class _Precision:
    """Sets the TF32 flags a precision needs for the probe's duration and restores them exactly."""

    def __init__(self, precision: str):
        self.tf32 = precision == "tf32"

    def __enter__(self):
        m, c = torch.backends.cuda.matmul, torch.backends.cudnn
        self.saved = (m.allow_tf32, c.allow_tf32, torch.get_float32_matmul_precision(),
                      getattr(m, "fp32_precision", None))
        m.allow_tf32 = c.allow_tf32 = self.tf32
        return self

    def __exit__(self, *exc):
        m, c = torch.backends.cuda.matmul, torch.backends.cudnn
        m.allow_tf32, c.allow_tf32 = self.saved[0], self.saved[1]
        torch.set_float32_matmul_precision(self.saved[2])
        if self.saved[3] is not None and getattr(m, "fp32_precision", None) != self.saved[3]:
            try:
                m.fp32_precision = self.saved[3]
            except (RuntimeError, ValueError):
                pass
        return False


def _timer(device: torch.device):
    """A function that times `calls` back-to-back runs of fn, in seconds."""
    if device.type == "cuda":
        def timed(fn, calls: int) -> float:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(calls):
                fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1000.0
    else:
        def timed(fn, calls: int) -> float:
            t0 = time.perf_counter()
            for _ in range(calls):
                fn()
            return time.perf_counter() - t0
    return timed


def _run(device: torch.device, precision: str, n: int, seconds: float) -> list[float]:
    """GFLOP/s per timed sample."""
    gen = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, generator=gen).to(_DTYPES[precision])
    b = torch.randn(n, n, device=device, generator=gen).to(_DTYPES[precision])
    out = torch.empty(n, n, device=device, dtype=_DTYPES[precision])

    def fn():
        torch.mm(a, b, out=out)

    timed = _timer(device)
    warm = min(timed(fn, 1) for _ in range(WARMUP_CALLS))
    calls = max(1, round(SAMPLE_TARGET_S / max(warm, 1e-9)))
    flop = 2.0 * n ** 3 * calls
    rates, deadline = [], time.perf_counter() + seconds
    while len(rates) < MIN_REPEATS or time.perf_counter() < deadline:
        rates.append(flop / timed(fn, calls) / 1e9)
    return rates


def probe(device: torch.device, precision: str, *, threads: int | None = None, seconds: float = 1.0) -> Probe:
    """Measure the GEMM ceiling of `device` in `precision` (see the module docstring)."""
    device = torch.device(device)
    _check(device, precision, seconds)
    saved_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        used = torch.get_num_threads()
        n = cpu_n(used) if device.type == "cpu" else CUDA_N
        with _Precision(precision):
            if device.type == "cuda":
                with torch.cuda.device(device):
                    rates = _run(device, precision, n, seconds)
                    torch.cuda.empty_cache()
            else:
                rates = _run(device, precision, n, seconds)
    finally:
        torch.set_num_threads(saved_threads)
    median = statistics.median(rates)
    q = statistics.quantiles(rates, n=4, method="inclusive")
    return Probe(precision=precision, device=device.type, n=n, gflop_per_s=median,
                 spread=(q[2] - q[0]) / median if median else float("inf"), repeats=len(rates), threads=used)


def probe_node(device_kind: str, threads: int | None, *, seconds: float = 1.0) -> dict:
    """Every precision that applies to this device kind -> {"gflop_per_s", "spread", "n"}."""
    device = torch.device(device_kind)
    return {p: probe(device, p, threads=threads, seconds=seconds).as_dict() for p in precisions_for(device.type)}


def _gflops(entry) -> float | None:
    if entry is None:
        return None
    if isinstance(entry, Probe):
        return entry.gflop_per_s
    if isinstance(entry, dict):
        return entry.get("gflop_per_s")
    return float(entry)


def drifted(start: dict, end: dict, threshold: float = DRIFT_THRESHOLD) -> list[str]:
    """Reasons, one per precision whose end-of-run ceiling moved either way beyond `threshold` in log terms:
    |ln(end/start)| > ln(1 + threshold) (a fall to below 1/(1 + threshold) of the start, or a rise above 1 +
    threshold: a run that started contended and ended free drifted as much as the reverse)."""
    import math
    reasons = []
    for precision in start:
        before, after = _gflops(start.get(precision)), _gflops(end.get(precision))
        if not before or not after:
            continue
        if abs(math.log(after / before)) > math.log1p(threshold):
            how = "fell" if after < before else "rose"
            reasons.append(f"{precision} ceiling {how} {100 * abs(after / before - 1):.0f}% between the run's start "
                           f"and end probes (threshold: x{1 + threshold:.2f} either way): {before:.1f} -> "
                           f"{after:.1f} GFLOP/s")
    return reasons


def ceiling_frac(gflop_per_s: float | None, ceiling) -> float | None:
    """Achieved / ceiling (ceiling: GFLOP/s, a Probe or a probe_node entry); None when either is missing."""
    ceil = _gflops(ceiling)
    if gflop_per_s is None or not ceil:
        return None
    return gflop_per_s / ceil


def flag_drifted_nodes(p, end: dict) -> int:  # p: a plan.Plan (its meta and store)
    """Compare each node's end-of-run probes with its start; a node whose ceiling fell by more than the probe's
    own wander (ceiling.DRIFT_THRESHOLD) gets this run's ok timing records appended again, flagged noisy with
    the reason (the latest record of a trial wins). Returns how many records were flagged."""
    from .store import latest_by_trial, read_jsonl
    ceilings = p.meta.setdefault("ceilings", {})
    reasons = {}
    for node_id, probes in end.items():
        ceilings.setdefault(node_id, {})["end"] = probes
        start = ceilings[node_id].get("start", {})
        why = [r for kind in probes for r in drifted(start.get(kind, {}), probes[kind])]
        if why:
            ceilings[node_id]["drifted"] = why
            reasons[node_id] = "; ".join(why)
    flagged = 0
    attempt = p.meta.get("attempt_started_at", "")
    for rec in latest_by_trial(read_jsonl(p.store.trials_path)[0]).values():
        why = reasons.get(rec.get("node_id"))
        if why and rec.get("status") == "ok" and rec.get("mode") in ("train", "infer") \
                and (rec.get("started_at") or "") >= attempt:
            note = "; ".join(x for x in (rec.get("noise_reasons"), f"node drifted: {why}") if x)
            p.store.append({**rec, "noisy": True, "noise_reasons": note})
            flagged += 1
    return flagged
