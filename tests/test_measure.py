import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from harness.measure import available_cores, measure, percentile, quartiles

CPU = torch.device("cpu")


def test_percentile_and_quartiles_match_numpy():
    rng = np.random.default_rng(0)
    xs = list(rng.random(37))
    for p in (0, 10, 50, 90, 99, 100):
        assert percentile(xs, p) == pytest.approx(np.percentile(xs, p))
    q1, q3 = quartiles(xs)
    assert (q1, q3) == pytest.approx((np.percentile(xs, 25), np.percentile(xs, 75)))


def test_steady_step_is_measured_and_warmup_excluded():
    calls = {"n": 0}

    def step():  # first three calls are slow (warm-up), then a steady 4 ms
        calls["n"] += 1
        time.sleep(0.05 if calls["n"] <= 3 else 0.004)

    m = measure(step, batch_size=32, device=CPU, threads=1, budget_s=5, warmup_min_s=0.0, block_s=0.05)
    assert m.warmup_steps >= 3 and m.warmup_settled
    assert len(m.step_times_s) >= 50 and max(m.step_times_s) < 0.02  # the 50 ms warm-up steps are not timed
    assert m.latency_ms(50) == pytest.approx(4.1, abs=1.5)
    assert m.img_per_s == pytest.approx(32 / 0.0041, rel=0.3)
    assert len(m.block_times_s) >= 5 and len(m.step_times_s) == len(m.block_times_s) * m.block_steps


def test_wide_spread_is_flagged_noisy():
    calls = {"n": 0}

    def step():  # blocks alternate between fast and 4x slower
        calls["n"] += 1
        time.sleep(0.002 if (calls["n"] // 10) % 2 else 0.008)

    m = measure(step, batch_size=8, device=CPU, threads=1, budget_s=2, warmup_min_s=0.0, block_s=0.02)
    assert m.rel_iqr > 0.05 and m.noisy
    assert any("IQR" in r for r in m.noise_reasons)


def test_competing_process_is_flagged_noisy():
    """A busy process on every core while a CPU-bound trial uses all of them: flagged, not reported clean."""
    cores = int(available_cores())
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(cores)]
    try:
        time.sleep(0.3)
        a = torch.randn(256, 256)

        def step():
            for _ in range(20):
                a @ a

        m = measure(step, batch_size=1, device=CPU, threads=cores, budget_s=2, warmup_min_s=0.1, block_s=0.05)
    finally:
        for h in hogs:
            h.kill()
    assert m.external_cores > 0.6  # the hogs got at least part of a core away from the trial
    assert m.noisy and any("other processes" in r for r in m.noise_reasons)


def test_short_budget_stretches_to_the_sample_floor():
    """A 0.3 s budget cannot hold 50 steps of 20 ms: the budget stretches (up to max_budget_s) to meet the floor."""
    m = measure(lambda: time.sleep(0.02), batch_size=4, device=CPU, threads=1, budget_s=0.3, max_budget_s=6,
                warmup_min_s=0.0, block_s=0.05)
    assert len(m.step_times_s) >= 50 and len(m.block_times_s) >= 5
    assert not any("insufficient" in r for r in m.noise_reasons)
    assert m.timed_end - m.timed_start >= 50 * 0.02 > 0.3


def test_missed_floor_is_flagged_and_thin_percentiles_are_null():
    m = measure(lambda: time.sleep(0.02), batch_size=4, device=CPU, threads=1, budget_s=0.2, max_budget_s=0.4,
                warmup_min_s=0.0, block_s=0.02)
    assert len(m.step_times_s) < 20
    assert m.noisy and any(r.startswith("insufficient samples") for r in m.noise_reasons)
    assert m.latency_ms(50) is not None and m.latency_ms(90) is None and m.latency_ms(99) is None


def test_drifting_warmup_is_flagged_unsettled():
    calls = {"n": 0}

    def step():  # every step slower than the last: block throughput never settles
        calls["n"] += 1
        time.sleep(0.001 * calls["n"] ** 0.5)

    m = measure(step, batch_size=4, device=CPU, threads=1, budget_s=0.4, max_budget_s=0.8, warmup_min_s=0.0,
                block_s=0.02, settle=0.0001)
    assert not m.warmup_settled and any("warm-up unsettled" in r for r in m.noise_reasons)
