"""Step primitives shared by every mode (throughput, accuracy, profile) and by parity: the device, the optimizer,
one training or inference step, the precision context, device sync, peak memory and which backend ran.

Nothing here knows about modes, records or Ray: trial.py, train.py and profile.py build on these, never the
other way round.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import math
from pathlib import Path

import torch
import torch.nn as nn

from .errors import DeviceError


class NonFiniteLoss(RuntimeError):
    """The training loss became NaN or infinite: the trial fails (a record says so), the sweep goes on."""


def resolve_device(name: str) -> torch.device:
    """`cpu`, `cuda` or `cuda:N` as a torch.device that exists here; DeviceError (one line) otherwise."""
    if name == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise DeviceError(f"--device {name}: CUDA is not available on this machine "
                          f"(torch {torch.__version__}, {'CPU-only build' if torch.version.cuda is None else 'no GPU visible'})")
    dev = torch.device(name)
    if dev.index is not None and dev.index >= torch.cuda.device_count():
        raise DeviceError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) here")
    return dev


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on CPU, where every op is synchronous)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_optimizer(model: nn.Module, spec) -> torch.optim.Optimizer:
    t = spec.train
    if t.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)
    if t.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=t.lr, momentum=0.9, nesterov=True, weight_decay=t.weight_decay)


def set_precision(dtype: str) -> dict:
    """Set the TF32 switches for the trial's dtype and return them as record fields. PyTorch's defaults differ
    between the two (cuDNN may use TF32, matmul may not), so a float32 cuDNN run would otherwise race TF32 tensor
    cores against the strict-float32 GEMMs of the loops. tf32: both on. float32 and bfloat16: both off (strict
    float32 wherever bf16 autocast leaves float32 math)."""
    on = dtype == "tf32"
    torch.backends.cudnn.allow_tf32 = on
    torch.backends.cuda.matmul.allow_tf32 = on
    return {"tf32_cudnn": torch.backends.cudnn.allow_tf32, "tf32_matmul": torch.backends.cuda.matmul.allow_tf32}


@functools.cache  # the probe's answer, once per process
def cpu_bf16_lstm_error() -> str | None:
    """Why this CPU cannot run nn.LSTM under bfloat16 autocast, or None. oneDNN builds its bf16 LSTM primitive
    only where the CPU has the instructions for it; elsewhere the first forward raises "could not create a
    primitive descriptor" (seen on an AMD EPYC VM with AVX2 and no AVX-512). Only nn.LSTM (impl cudnn) uses that
    primitive; the loops' matmuls run in bf16 anywhere. A two-step LSTM answers it."""
    try:
        with torch.autocast("cpu", torch.bfloat16):
            nn.LSTM(4, 4)(torch.zeros(2, 1, 4))
        return None
    except RuntimeError as exc:
        return (f"bfloat16 on this CPU: oneDNN has no bf16 LSTM primitive for it "
                f"({str(exc).splitlines()[0][:120]}); use dtype float32 here")


def autocast(spec, device: torch.device):
    """The precision context, decided once per trial: bfloat16 autocast, or nothing (float32 weights and math)."""
    if spec.variant.dtype == "bfloat16":
        if device.type == "cpu" and spec.variant.impl == "cudnn" and (why := cpu_bf16_lstm_error()):
            raise DeviceError(why)
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def train_step_fn(model, opt, batches, spec, device: torch.device, check_finite: bool = False):
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


def infer_step_fn(model, batches, spec, device: torch.device):
    def step():
        x, _ = next(batches)
        with torch.inference_mode(), autocast(spec, device):
            return model(x)
    return step


BACKEND_OPS = (("aten::_cudnn_rnn", "cudnn"), ("aten::miopen_rnn", "miopen"),
               ("aten::mkldnn_rnn_layer", "onednn-rnn"), ("aten::lstm", "aten-lstm-cpu"),
               ("aten::_thnn_fused_lstm_cell", "python-loop:fused-lstm-cell"),
               ("aten::lstm_cell", "python-loop:lstm-cell"))


def detect_backend(model: nn.Module, x: torch.Tensor, spec, device: torch.device) -> str:
    """Which recurrent kernel actually ran, read off the operators of one profiled forward pass."""
    from torch.profiler import ProfilerActivity, profile
    ctx = torch.inference_mode() if spec.mode == "infer" else torch.no_grad()
    with profile(activities=[ProfilerActivity.CPU]) as prof, ctx, autocast(spec, device):
        model(x)
    names = {e.key for e in prof.key_averages()}
    for op, backend in BACKEND_OPS:
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
            sync(device)
            torch.cuda.reset_peak_memory_stats(device)
            self.base = torch.cuda.memory_allocated(device)
        else:
            self.base = None if not self._reset_cpu_peak() else _proc_status_kb("VmRSS")

    @staticmethod
    def _reset_cpu_peak() -> bool:
        """Memory freed by an earlier trial in this (reused) worker stays in malloc's heap and would be reused
        without raising RSS: hand it back to the OS first, then reset the peak-RSS mark. False when the mark
        cannot be reset (then the peak would be the process's lifetime peak: reported as null instead)."""
        _malloc_trim()
        try:
            Path("/proc/self/clear_refs").write_text("5")
            return True
        except OSError:
            return False

    def reset(self) -> None:
        """Start a new peak from here, above the same base (accuracy mode: training and evaluation apart)."""
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        elif self.base is not None and not self._reset_cpu_peak():
            self.base = None

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


def gemm_fields(variant, mode: str, img_per_s: float | None) -> dict:
    """The LSTM GEMMs' analytic cost per batch and the rate achieved at `img_per_s` (see lstm_gemm_flops)."""
    from .variants import lstm_gemm_flops
    gflop = lstm_gemm_flops(variant, mode) / 1e9
    return {"lstm_gflop_per_batch": gflop,
            "gflop_per_s": None if img_per_s is None else gflop * img_per_s / variant.batch_size}
