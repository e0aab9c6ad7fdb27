"""Running one trial: TrialSpec in, one flat result record (a dict of JSON values) out.

A record keeps these field names forever (later code and users build on them): trial_id seq patch_size
hidden_size num_layers impl batch_size dtype bidirectional mode device status img_per_s img_per_s_iqr
latency_ms_p50 latency_ms_p90 latency_ms_p99 peak_mem_mb gflop_per_s noisy dataset backend started_at
duration_s, plus the environment fields (harness/env.py).
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime as dt
import math
import time
import traceback
from pathlib import Path

import torch
import torch.nn as nn

from . import env as envmod
from .data import DeviceData, synthetic_arrays
from .errors import DeviceError, HarnessError
from .measure import Measurement, measure
from .spec import TrialSpec
from .variants import build_model, lstm_gemm_flops

SYNTHETIC_TRAIN_IMAGES = 8192  # enough distinct batches that no step reuses the previous one's input


def resolve_device(name: str) -> torch.device:
    if name == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise DeviceError(f"--device {name}: CUDA is not available on this machine "
                          f"(torch {torch.__version__}, {'CPU-only build' if torch.version.cuda is None else 'no GPU visible'})")
    dev = torch.device(name)
    if dev.index is not None and dev.index >= torch.cuda.device_count():
        raise DeviceError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) here")
    return dev


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


def make_optimizer(model: nn.Module, spec: TrialSpec) -> torch.optim.Optimizer:
    t = spec.train
    if t.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)
    if t.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=t.lr, momentum=0.9, nesterov=True, weight_decay=t.weight_decay)


def autocast(spec: TrialSpec, device: torch.device):
    if spec.variant.dtype == "bfloat16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


class NonFiniteLoss(RuntimeError):
    pass


def train_step_fn(model, opt, batches, spec: TrialSpec, device: torch.device, check_finite: bool = False):
    """One full optimizer step: next batch, forward, loss, backward, (clip), step."""
    loss_fn = nn.CrossEntropyLoss(label_smoothing=spec.train.label_smoothing)
    clip = spec.train.grad_clip

    def step():
        x, y = next(batches)
        with autocast(spec, device):
            loss = loss_fn(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        if check_finite and not math.isfinite(loss.item()):
            raise NonFiniteLoss(f"loss became {loss.item()}")
        return loss
    return step


def infer_step_fn(model, batches, spec: TrialSpec, device: torch.device):
    def step():
        x, _ = next(batches)
        with torch.inference_mode(), autocast(spec, device):
            return model(x)
    return step


def detect_backend(model: nn.Module, x: torch.Tensor, spec: TrialSpec, device: torch.device) -> str:
    """Which recurrent kernel actually ran, read off the operators of one profiled forward pass."""
    from torch.profiler import ProfilerActivity, profile
    ctx = torch.inference_mode() if spec.mode == "infer" else torch.no_grad()
    with profile(activities=[ProfilerActivity.CPU]) as prof, ctx, autocast(spec, device):
        model(x)
    names = {e.key for e in prof.key_averages()}
    for op, backend in (("aten::_cudnn_rnn", "cudnn"), ("aten::miopen_rnn", "miopen"),
                        ("aten::mkldnn_rnn_layer", "onednn-rnn"), ("aten::lstm", "aten-lstm-cpu"),
                        ("aten::_thnn_fused_lstm_cell", "python-loop:fused-lstm-cell"),
                        ("aten::lstm_cell", "python-loop:lstm-cell")):
        if op in names:
            return backend
    return "python-loop:aten-ops"


class PeakMemory:
    """Peak memory above what was in use when the model was about to be built (the resident dataset
    excluded): CUDA max allocated on GPU; on CPU the growth of the process's peak RSS (VmHWM), whose peak we
    reset through /proc/self/clear_refs so an earlier trial in the same Ray worker does not count."""

    def __init__(self, device: torch.device):
        self.device = device
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            self.base = torch.cuda.memory_allocated(device)
        else:
            # Memory freed by an earlier trial in this (reused) worker stays in malloc's heap and would be
            # reused without raising RSS: hand it back to the OS first, then reset the peak-RSS mark.
            _malloc_trim()
            with contextlib.suppress(OSError):
                Path("/proc/self/clear_refs").write_text("5")
            self.base = _proc_status_kb("VmRSS")

    def peak_mb(self) -> float | None:
        if self.device.type == "cuda":
            return (torch.cuda.max_memory_allocated(self.device) - self.base) / 2**20
        hwm = _proc_status_kb("VmHWM")
        return None if hwm is None or self.base is None else max(0, hwm - self.base) / 1024


def _malloc_trim() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def _proc_status_kb(key: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def measured_fields(m: Measurement, spec: TrialSpec) -> dict:
    flops = lstm_gemm_flops(spec.variant, spec.mode)
    ips = m.img_per_s
    return {
        "img_per_s": ips,
        "img_per_s_iqr": m.img_per_s_iqr,
        "rel_iqr": m.rel_iqr,
        "latency_ms_p50": m.latency_ms(50), "latency_ms_p90": m.latency_ms(90), "latency_ms_p99": m.latency_ms(99),
        "lstm_gflop_per_batch": flops / 1e9,
        "gflop_per_s": flops / 1e9 * ips / spec.variant.batch_size,
        "noisy": m.noisy,
        "noise_reasons": "; ".join(m.noise_reasons),
        "external_cpu_cores": round(m.external_cores, 2),
        "timed_blocks": len(m.block_times_s),
        "timed_steps": len(m.step_times_s),
        "warmup_steps": m.warmup_steps,
        "block_img_per_s": [round(x, 3) for x in m.block_img_per_s],
    }


def run_trial(spec: TrialSpec, *, arrays=None, data_root: str | None = None, allow_unofficial: bool = False,
              download: bool = False, extra: dict | None = None) -> dict:
    """Run one trial and return its record. Bad input (HarnessError) propagates; anything that goes wrong
    while running (CUDA out of memory, a NaN loss, ...) becomes a record with status=failed and the error."""
    started = time.time()
    device = resolve_device(spec.device)
    if spec.threads:
        torch.set_num_threads(spec.threads)
    record = spec.flat()
    record.update(status="running", started_at=dt.datetime.fromtimestamp(started, dt.timezone.utc).isoformat())
    data = load_data(spec, device, arrays, data_root, allow_unofficial, download)
    record["dataset"] = data.source
    record.update(envmod.environment(device))
    record.update(extra or {})
    try:
        torch.manual_seed(spec.seed)
        if spec.mode == "accuracy":
            from .train import run_accuracy
            record.update(run_accuracy(spec, data, device))
        elif spec.mode == "profile":
            from .profile import run_profile
            record.update(run_profile(spec, data, device))
        else:
            record.update(run_throughput(spec, data, device))
        record["status"] = "ok"
    except HarnessError:
        raise
    except Exception as exc:  # the trial failed; the sweep goes on and the record says why
        record.update(status="failed", error=f"{type(exc).__name__}: {exc}".splitlines()[0][:500],
                      error_detail=traceback.format_exc(limit=4)[-2000:])
        if device.type == "cuda":
            torch.cuda.empty_cache()
    record["duration_s"] = time.time() - started
    return record


def run_throughput(spec: TrialSpec, data: DeviceData, device: torch.device) -> dict:
    v = spec.variant
    gen = torch.Generator().manual_seed(spec.seed)
    batches = data.endless(v.batch_size, augment=spec.train.augment if spec.mode == "train" else "none",
                           generator=gen)
    mem = PeakMemory(device)
    model = build_model(v).to(device)
    if spec.mode == "train":
        model.train()
        step = train_step_fn(model, make_optimizer(model, spec), batches, spec, device)
    else:
        model.eval()
        step = infer_step_fn(model, batches, spec, device)
    m = measure(step, batch_size=v.batch_size, device=device, threads=torch.get_num_threads(),
                budget_s=spec.time_budget_s)
    fields = measured_fields(m, spec)
    fields["peak_mem_mb"] = mem.peak_mb()
    fields["backend"] = detect_backend(model, next(batches)[0], spec, device)
    return fields
