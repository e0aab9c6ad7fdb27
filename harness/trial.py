"""Running one trial: TrialSpec in, a TrialResult out (a flat record of the fields in schema.py, plus a
profile's trace files and kernel rows). Resolves the device, loads the data, dispatches to the mode
(throughput here, accuracy in train.py, profile in profile.py) and turns a trial's own failure into a record.
"""

from __future__ import annotations

import datetime as dt
import itertools
import math
import statistics
import time
import traceback

import torch

from . import env as envmod
from .data import DeviceData, synthetic_arrays
from .errors import HarnessError
from .graphed import prepare
from .measure import Measurement, measure
from .schema import TrialResult
from .spec import TrialSpec
from .steps import PeakMemory, detect_backend, gemm_fields, infer_step_fn, make_optimizer, resolve_device, \
    set_precision, sync, train_step_fn
from .variants import build_model

SYNTHETIC_TRAIN_IMAGES = 8192  # enough distinct batches that no step reuses the previous one's input
# The pair plan (sample_plan "pair", `lstm-bench ab`): a short warm-up (both sides alike: what is left of it
# cancels in the pair; the same trend rule on warm-up blocks of 0.04 s, capped at 0.6 s), then a fixed 10 blocks
# of ~0.1 s (CPU; 0.05 s on CUDA) of the end-to-end step only, whatever the budget. A pair's precision comes
# from many pairs, not long windows.
PAIR_BLOCKS, PAIR_BLOCK_S, PAIR_WARMUP_MIN_S, PAIR_WARMUP_CAP_S = 10, {"cpu": 0.1, "cuda": 0.05}, 0.3, 0.6
PAIR_WARMUP_BLOCK_S = {"cpu": 0.04, "cuda": 0.02}
MODEL_WARMUP_BLOCK_S = {"cpu": 0.025, "cuda": 0.01}  # the model-alone pass: the model is warm already
TRIAL_PROBE_S = 0.3  # each standard-plan trial's own ceiling probe, after its windows (ceiling_fields)
NO_CEILING = {"ceiling_gflop_per_s": None, "ceiling_frac": None, "node_ceiling_gflop_per_s": None}


def load_data(spec: TrialSpec, device: torch.device, arrays=None, data_root: str | None = None,
              allow_unofficial: bool = False, download: bool = False) -> DeviceData:
    """Device-resident data for a trial. `arrays` (a Cifar10Arrays, e.g. shared through Ray's object store)
    avoids reading the files again."""
    t = spec.train
    if spec.data == "synthetic":
        n = max(SYNTHETIC_TRAIN_IMAGES, 4 * spec.variant.batch_size)
        tx, ty, vx, vy = synthetic_arrays(n, 1024, seed=spec.seed)
        return DeviceData(tx, ty, vx, vy, device=device, normalize=t.normalize, source="synthetic")
    if arrays is None:
        from .cifar import load_cifar10
        arrays = load_cifar10(data_root, allow_unofficial=allow_unofficial, download=download)
    return DeviceData(arrays.train_images, arrays.train_labels, arrays.test_images, arrays.test_labels,
                      device=device, normalize=t.normalize, source=arrays.source, train_subset=t.train_subset)


def measured_fields(m: Measurement, spec: TrialSpec) -> dict:
    ips = m.img_per_s
    lo, hi = m.rel_iqr_interval
    return {
        "img_per_s": ips,
        "img_per_s_iqr": m.img_per_s_iqr,
        "rel_iqr": m.rel_iqr,
        "rel_iqr_low": lo,
        "rel_iqr_high": hi,
        "wide_spread": m.wide_spread,
        "latency_ms_p50": m.latency_ms(50), "latency_ms_p90": m.latency_ms(90), "latency_ms_p99": m.latency_ms(99),
        **gemm_fields(spec.variant, spec.mode, ips),
        "noisy": m.noisy,
        "noise_reasons": "; ".join(m.noise_reasons),
        "external_cpu_cores": round(m.external_cores, 2),
        "steal_cpu_cores": None if m.steal_cores is None else round(m.steal_cores, 3),
        "cgroup_throttled_ms": m.throttled_ms,
        "timed_blocks": len(m.block_times_s),
        "planned_blocks": m.planned_blocks,
        "warmup_rule": m.warmup_rule,
        "timed_steps": len(m.step_times_s),
        "warmup_steps": m.warmup_steps,
        "block_img_per_s": [round(x, 3) for x in m.block_img_per_s],
        "step_ms": [round(1000.0 * t, 4) for t in m.step_times_s],
        "timed_start": m.timed_start,
        "timed_end": m.timed_end,
    }


def run_trial(spec: TrialSpec, *, arrays=None, data_root: str | None = None, allow_unofficial: bool = False,
              download: bool = False, extra: dict | None = None, ceilings: dict | None = None) -> TrialResult:
    """Run one trial and return its result. Bad input (HarnessError) propagates; anything that goes wrong
    while running (CUDA out of memory, a NaN loss, ...) becomes a record with status=failed and the error.
    `ceilings`: this node's probes from the sweep ({device kind: {precision: {"gflop_per_s", ...}}}); without
    them a timing trial probes its own machine once per process."""
    from .profile import run_profile
    from .train import run_accuracy
    started = time.time()
    device = resolve_device(spec.device)
    if spec.threads:
        torch.set_num_threads(spec.threads)
    result = TrialResult(record=spec.flat())
    record = result.record
    record.update(status="running", started_at=dt.datetime.fromtimestamp(started, dt.timezone.utc).isoformat())
    data = load_data(spec, device, arrays, data_root, allow_unofficial, download)
    record["dataset"] = data.source
    record.update(set_precision(spec.variant.dtype))
    record.update(envmod.environment(device))
    record.update(extra or {})
    try:
        torch.manual_seed(spec.seed)
        if spec.mode == "profile":
            fields, result.artifacts, result.kernels = run_profile(spec, data, device)
        elif spec.mode == "accuracy":
            fields = run_accuracy(spec, data, device)
        else:
            fields = run_throughput(spec, data, device)
            if spec.sample_plan == "pair":  # no ceiling probe in a pair's process: its fields are null
                fields.update(NO_CEILING)
            else:
                fields.update(ceiling_fields(spec, device, fields["gflop_per_s"], (ceilings or {}).get(device.type)))
        record.update(fields, status="ok")
    except HarnessError:
        raise
    except Exception as exc:  # the trial failed; the sweep goes on and the record says why
        record.update(status="failed", error=f"{type(exc).__name__}: {exc}".splitlines()[0][:500],
                      error_detail=traceback.format_exc(limit=4)[-2000:])
        if device.type == "cuda":
            torch.cuda.empty_cache()
    record["duration_s"] = time.time() - started
    return result


def run_throughput(spec: TrialSpec, data: DeviceData, device: torch.device, **measure_opts) -> dict:
    """End to end (next batch, forward, backward, optimizer step: the headline img_per_s), then the same step on
    one fixed batch already on the device (model_img_per_s), then the batch producer alone (data_ms_per_step).
    `measure_opts` (tests only) shrink the sample plan; the CLI and suites cannot."""
    v = spec.variant
    start = time.perf_counter()
    gen = torch.Generator().manual_seed(spec.seed)
    batches = data.endless(v.batch_size, augment=spec.train.augment if spec.mode == "train" else "none",
                           generator=gen)
    mem = PeakMemory(device)
    model = build_model(v).to(device)
    model.train(spec.mode == "train")
    opt = make_optimizer(model, spec) if spec.mode == "train" else None

    def step_over(source):
        if opt is not None:
            return train_step_fn(model, opt, source, spec, device)
        return infer_step_fn(model, source, spec, device)

    prep = prepare(spec, model, opt, batches, device, step_over)  # compiled: compile; graphed: capture
    step_over = prep.step_over
    timing = dict(batch_size=v.batch_size, device=device, threads=torch.get_num_threads(), **measure_opts)
    if spec.sample_plan == "pair":
        m = measure(step_over(batches), budget_s=spec.budget_s, max_budget_s=math.inf,
                    warmup_min_s=PAIR_WARMUP_MIN_S, warmup_cap_s=PAIR_WARMUP_CAP_S,
                    warmup_block_s=PAIR_WARMUP_BLOCK_S[device.type], block_s=PAIR_BLOCK_S[device.type],
                    **{"blocks": PAIR_BLOCKS, "min_steps": PAIR_BLOCKS, **timing})
        fields = measured_fields(m, spec)
        fields.update(peak_mem_mb=mem.peak_mb(), backend=prep.backend)  # no backend detection: it costs a profile
        prep.fields(fields, m)
        return fields
    m = measure(step_over(batches), budget_s=spec.budget_s, max_budget_s=spec.max_budget, mode=spec.mode, **timing)
    fields = measured_fields(m, spec)
    fields["peak_mem_mb"] = mem.peak_mb()

    # Model alone: a fixed batch, already normalized and on the device; the model is warm, so a short warm-up.
    # Its plan may stretch to half the max budget, or to what the end-to-end pass left of it.
    left = spec.max_budget - (time.perf_counter() - start)
    model_m = measure(step_over(itertools.repeat(next(batches))), budget_s=spec.budget_s / 2,
                      max_budget_s=max(spec.max_budget / 2, left), mode=spec.mode,
                      **{"warmup_min_s": 0.25, "warmup_block_s": MODEL_WARMUP_BLOCK_S[device.type], **timing})
    fields.update(model_img_per_s=model_m.img_per_s, model_rel_iqr=model_m.rel_iqr,
                  model_noise_reasons="; ".join(model_m.noise_reasons),
                  data_ms_per_step=data_ms_per_step(batches, device))
    prep.fields(fields, m, model_m)  # compile_s, capture_s, recompiles (in a timed window: noisy)
    fields["backend"] = prep.backend or detect_backend(model, next(batches)[0], spec, device)
    return fields


def ceiling_fields(spec: TrialSpec, device: torch.device, gflop_per_s: float | None,
                   node_probes: dict | None) -> dict:
    """The GEMM ceiling at the trial's precision (harness/ceiling.py), probed in the trial's own process right
    after its timed windows, with its threads and beside whatever else the node ran then: the load mode the
    trial was timed in; the fraction of it the LSTM GEMMs reached; and the node's ceiling from the sweep's
    start probe, for comparison. A ceiling from one probe per run (before 2026-12-07) could come from the other
    load mode: ~3x off on a 2-core VM (53-60 against 140-180 GFLOP/s: harness/ceiling.py's evidence). Null where no
    ceiling is probed for that precision (bfloat16 on CPU); node_ceiling_gflop_per_s is null outside a sweep."""
    from .ceiling import ceiling_frac, precisions_for, probe
    precision = spec.variant.dtype
    entry = (node_probes or {}).get(precision)
    if precision not in precisions_for(device.type):
        return dict(NO_CEILING)
    here = probe(device, precision, threads=torch.get_num_threads(), seconds=TRIAL_PROBE_S).gflop_per_s
    return {"ceiling_gflop_per_s": here, "ceiling_frac": ceiling_frac(gflop_per_s, here),
            "node_ceiling_gflop_per_s": entry["gflop_per_s"] if entry else None}


def data_ms_per_step(batches, device: torch.device, steps: int = 30) -> float:
    """Median time to produce one batch (gather, normalize, augment on the device), each one synced."""
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        next(batches)
        sync(device)
        times.append(time.perf_counter() - t)
    return 1000.0 * statistics.median(times)
