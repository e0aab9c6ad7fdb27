"""Profile mode: torch.profiler over a few real training steps of one trial, returned as data.

A profile trial runs the same train step as a timed `train` trial (next batch, forward, loss, backward,
optimizer step: trial.train_step_fn) under torch.profiler with schedule wait=1, warmup=2, active=3 (one cycle):
step 0 runs unprofiled (lazy init, cuDNN plan selection, allocator growth), steps 1-2 run the profiler
without keeping events, steps 3-5 are recorded. Activities: CPU always, plus CUDA on a cuda device.

What comes back is plain data (run_profile returns record fields, artifacts, kernel rows; run_trial packs them
into a schema.TrialResult), because the trial may run on a Ray worker that shares no filesystem with the
driver:

  artifacts   {file name: bytes}: the TensorBoard trace(s) that torch.profiler.tensorboard_trace_handler
              wrote into a temporary directory, under the handler's own names
              (`<host>_<pid>.<ts>.pt.trace.json.gz`), so that torch-tb-profiler recognises them once the driver
              writes them to RUN_DIR/profiles/<trial_id>/ (store.write_artifacts) -- `tensorboard --logdir
              RUN_DIR/profiles` then shows one run per trial.
  kernels     one dict per row (KERNEL_COLUMNS): on GPU a row is a device kernel (or memcpy/memset) name, on CPU
              an ATen operator (`aten::...`). Times are *self* times, so nothing is counted twice: an
              operator's self CPU time excludes the operators it called, and a kernel's device time is its own.
              The driver collects every trial's rows into RUN_DIR/kernels.parquet (store.kernels_frame).
  record fields: see run_profile.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import tempfile
import time
import warnings
from pathlib import Path

import torch

from .errors import HarnessError
from .spec import TrialSpec
from .steps import PeakMemory, detect_backend, make_optimizer, sync, train_step_fn
from .variants import build_model

CATEGORIES = ("gemm", "elementwise", "reduction", "memcpy", "cudnn-rnn", "other")
NOISE_REASON = "profiled run: timings include profiler overhead"
MAX_TRACE_MB = 256.0  # traces beyond this are not shipped back through Ray (the record says so)

# Category of a kernel or operator, by name. ATen operators (`aten::NAME`) are matched on the words of NAME
# (split at `_`: aten::_log_softmax_backward_data -> log softmax backward data), device kernels on substrings
# of their lower-cased (C++) names; the first rule that matches wins.
_ATEN_GEMM = frozenset("addmm mm bmm matmul baddbmm addbmm linear dot vdot mv addmv _addmm_activation einsum "
                       "_mkldnn_matmul mkldnn_linear".split())
_ATEN_MEMCPY = frozenset("to _to_copy copy_ _copy_from _copy_from_and_resize cat _cat stack clone contiguous index "
                         "index_select gather index_put_ _index_put_impl_ flip constant_pad_nd reflection_pad2d "
                         "masked_select take".split())
_ATEN_WORDS: tuple[tuple[str, frozenset], ...] = (
    # one step of a cell (aten::lstm_cell, ATen's fused aten::_thnn_fused_lstm_cell): pointwise work inside a
    # Python loop, not a fused RNN
    ("elementwise", frozenset({"thnn", "cell"})),
    ("other", frozenset({"convolution", "conv1d", "conv2d", "im2col", "col2im", "pool2d", "pool1d"})),
    ("cudnn-rnn", frozenset({"rnn", "lstm", "gru", "cudnn", "miopen"})),
)
_ATEN_WORDS_LATE: tuple[tuple[str, frozenset], ...] = (
    ("reduction", frozenset("softmax nll sum mean norm amax amin max min argmax argmin std var cumsum all any prod "
                            "logsumexp cross entropy".split())),
    ("elementwise", frozenset("sigmoid tanh mul add sub div addcmul addcdiv fill zero zeros ones full sqrt rsqrt exp "
                              "log neg lerp where relu gelu silu threshold foreach adam adamw sgd pow clamp abs sign "
                              "reciprocal dropout bernoulli rsub maximum minimum mish hardtanh".split())),
)
_KERNEL_RULES: tuple[tuple[str, re.Pattern], ...] = tuple((cat, re.compile(rx)) for cat, rx in (
    ("elementwise", r"lstm_cell|_thnn_fused|gru_cell"),  # ATen's fused LSTMCell kernels
    # the conv stem of seq=cnn (cuDNN conv kernels have `cudnn`/`gemm` in their names, hence before both)
    ("other", r"conv|fprop|dgrad|wgrad|im2col|col2im|pool"),
    ("reduction", r"batch_norm|batchnorm|\bbn_|layer_norm"),
    # cuDNN's RNN kernels: elemWiseRNNcell, LSTM_elementWise_fp, RNN_blockPersist_fp_LSTM, rnn_*, cudnn::...
    ("cudnn-rnn", r"cudnn|rnn|lstm|\bgru\b|miopen"),
    ("gemm", r"gemm|gemv|splitkreduce|cublas|cutlass|xmma|nvjet|wgmma|hmma|^(void )?(volta|turing|ampere|hopper|blackwell)_|"
             r"\bsm\d+_"),
    ("memcpy", r"^memcpy|^memset|copy|catarray|index_elementwise|indexselect|index_select|gather|scatter"),
    ("reduction", r"softmax|nll|cross_entropy|sum|mean|norm|reduce|amax|amin|argmax|argmin|cumsum"),
    ("elementwise", r"elementwise|vectorized|unrolled|sigmoid|tanh|mul|add|sub|div|fill|zero|sqrt|exp|log|neg|"
                    r"lerp|where|relu|gelu|silu|threshold|multi_tensor_apply|foreach|adam|sgd|pow|clamp|abs|"
                    r"reciprocal|dropout|bernoulli|pointwise|functor"),
))


def classify(name: str) -> str:
    """gemm, elementwise, reduction, memcpy, cudnn-rnn or other, from a kernel's or operator's name."""
    n = name.lower()
    if n.startswith("aten::"):
        op = n[len("aten::"):]
        words = set(w for w in op.split("_") if w)
        if {"batch", "layer", "group", "instance"} & words and "norm" in words:
            return "reduction"
        for category, vocab in _ATEN_WORDS:
            if words & vocab:
                return category
        if op in _ATEN_GEMM:
            return "gemm"
        if op in _ATEN_MEMCPY:
            return "memcpy"
        for category, vocab in _ATEN_WORDS_LATE:
            if words & vocab:
                return category
        return "other"
    for category, rx in _KERNEL_RULES:
        if rx.search(n):
            return category
    return "other"


def run_profile(spec: TrialSpec, data, device: torch.device, *, record_shapes: bool = False,
                profile_memory: bool = False, with_stack: bool = False, wait: int = 1, warmup: int = 2,
                active: int = 3, max_trace_mb: float = MAX_TRACE_MB) -> tuple[dict, dict[str, bytes], list[dict]]:
    """Profile `active` training steps of `spec`: (record fields, trace files by name, kernel rows).

    Record fields:
      launches_per_step       GPU: device activities (kernels, memcpys, memsets) per step; CPU: ATen operator
                              calls per step, every call counted once, nested ones included (aten::linear,
                              the aten::t and aten::addmm it calls are three): the sum of the rows' calls / steps
      aten_ops_per_step       ATen operator calls per step, nested ones included (on CPU = launches_per_step)
      top_level_ops_per_step  ATen operator calls per step made from outside ATen (Python, the autograd engine,
                              the optimizer): how often the framework was entered
      gemm_share              fraction of the rows' self time in the gemm category (device time on GPU)
      top_kernel              the row with the most self time
      op_time_ms_per_step     the rows' total self time per step (the denominator of every share_of_step)
      profiled_steps, profile_activities ("cpu" or "cpu+cuda"), backend, peak_mem_mb, img_per_s,
      noisy (always True) and noise_reasons, profile_trace_files, profile_trace_bytes (and, only when the trace
      exceeded max_trace_mb and was not shipped, profile_trace_omitted)

    The trial's time budget does not apply: a profile is always wait + warmup + active steps. peak_mem_mb
    includes the profiler's own event buffers (on CPU they are part of the process's RSS).
    """
    from torch.profiler import ProfilerActivity, profile, schedule, tensorboard_trace_handler

    if min(wait, warmup) < 0 or active < 1:
        raise HarnessError(f"profile schedule needs wait, warmup >= 0 and active >= 1 "
                           f"(got wait={wait}, warmup={warmup}, active={active})")
    v = spec.variant
    cuda = device.type == "cuda"
    gen = torch.Generator().manual_seed(spec.seed)
    batches = data.endless(v.batch_size, augment=spec.train.augment, generator=gen)
    mem = PeakMemory(device)
    model = build_model(v).to(device)
    model.train()
    step = train_step_fn(model, make_optimizer(model, spec), batches, spec, device)

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    first_active, total = wait + warmup, wait + warmup + active
    tmp = tempfile.mkdtemp(prefix="lstm-bench-profile-")
    try:
        # The default worker name <host>_<pid> names the Ray worker; the handler adds .<ts>.pt.trace.json.gz.
        handler = tensorboard_trace_handler(tmp, worker_name=f"{socket.gethostname()}_{os.getpid()}",
                                            use_gzip=True)
        prof = profile(activities=activities, schedule=schedule(wait=wait, warmup=warmup, active=active, repeat=1),
                       on_trace_ready=handler, record_shapes=record_shapes, profile_memory=profile_memory,
                       with_stack=with_stack)
        with warnings.catch_warnings(), prof:
            # "Profiler clears events at the end of each cycle": there is one cycle here
            warnings.filterwarnings("ignore", message=".*clears events at the end of each cycle")
            if first_active == 0:
                sync(device)
                t_start = time.perf_counter()
            for i in range(total):
                step()
                if i in (first_active - 1, total - 1):
                    sync(device)
                if i == total - 1:
                    t_end = time.perf_counter()  # before prof.step(), which writes the trace
                prof.step()
                if i == first_active - 1:
                    t_start = time.perf_counter()
        peak_mb = mem.peak_mb()
        events = prof.events()
        artifacts = {p.name: p.read_bytes() for p in sorted(Path(tmp).iterdir()) if p.is_file()}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    rows = kernel_rows(events, active, cuda)
    aten = [e for e in events if _is_aten_op(e)]
    record = summarize_rows(rows, active)
    trace_bytes = sum(len(b) for b in artifacts.values())
    record.update({
        "aten_ops_per_step": len(aten) / active,
        "top_level_ops_per_step": sum(1 for e in aten if _is_top_level(e)) / active,
        "profiled_steps": active,
        "profile_activities": "cpu+cuda" if cuda else "cpu",
        "backend": detect_backend(model, next(batches)[0], spec, device),
        "peak_mem_mb": peak_mb,
        # The profiler records every operator (and on GPU every kernel), which slows the steps down -- most
        # for the loop impls with thousands of small ops per step -- so this is lower than a `train` trial's
        # img_per_s of the same variant: use it to compare profiles, not as the throughput.
        "img_per_s": v.batch_size * active / (t_end - t_start),
        "noisy": True,
        "noise_reasons": NOISE_REASON,
        "profile_trace_files": sorted(artifacts),
        "profile_trace_bytes": trace_bytes,
    })
    if trace_bytes > max_trace_mb * 2**20:
        record["profile_trace_omitted"] = (f"trace of {trace_bytes / 2**20:.0f} MB exceeds {max_trace_mb:g} MB; "
                                           f"profile fewer steps or a smaller variant")
        artifacts = {}
    return record, artifacts, rows


def _is_aten_op(e) -> bool:
    return e.device_type == torch.autograd.DeviceType.CPU and e.name.startswith("aten::")


def _is_top_level(e) -> bool:
    p = e.cpu_parent
    while p is not None:
        if p.name.startswith("aten::"):
            return False
        p = p.cpu_parent
    return True


def _self_device_us(e) -> float:
    value = getattr(e, "self_device_time_total", None)
    if value is None:  # older torch
        value = getattr(e, "self_cuda_time_total", 0.0)
    return float(value or 0.0)


def _is_annotation(e) -> bool:
    """record_function ranges (ProfilerStep#N, Optimizer.step#Adam.step, ...), which Kineto also draws on the GPU
    timeline as `gpu_user_annotation` spans covering the kernels inside them: counting those would count every
    kernel twice."""
    return bool(getattr(e, "is_user_annotation", False)) or e.name.startswith(("ProfilerStep#", "Optimizer."))


def kernel_rows(events, steps: int, cuda: bool) -> list[dict]:
    """Rows of a profile (prof.events() of the active steps), grouped by name, most self time first.

    GPU: the activities that ran on the device (kernels, memcpys, memsets), timed by their device time; the
    GPU-side spans of profiler annotations are left out. CPU: the ATen operators, timed by their self CPU time.
    Profiler annotations (ProfilerStep#N, Optimizer.step#...), autograd-engine wrappers
    (autograd::engine::evaluate_function: ..., AddmmBackward0) and runtime calls are not rows: their self time is
    bookkeeping, and the ATen operators they wrap are rows of their own."""
    from torch.autograd import DeviceType
    groups: dict[str, dict] = {}
    for e in events:
        if cuda:
            if e.device_type != DeviceType.CUDA or _is_annotation(e):
                continue
            t = _self_device_us(e)
        elif e.device_type == DeviceType.CPU and e.name.startswith("aten::"):
            t = float(e.self_cpu_time_total)
        else:
            continue
        g = groups.setdefault(e.name, {"calls": 0, "dev": 0.0, "cpu": 0.0, "t": 0.0})
        g["calls"] += 1
        g["dev"] += _self_device_us(e) if cuda else 0.0
        g["cpu"] += float(e.self_cpu_time_total)
        g["t"] += t
    total = sum(g["t"] for g in groups.values())
    return [{"name": name, "category": classify(name), "calls": g["calls"],
             "self_device_time_us": g["dev"] if cuda else None, "self_cpu_time_us": g["cpu"],
             "share_of_step": g["t"] / total if total > 0 else 0.0, "launches_per_step": g["calls"] / steps}
            for name, g in sorted(groups.items(), key=lambda kv: (-kv[1]["t"], kv[0]))]


def summarize_rows(rows: list[dict], steps: int) -> dict:
    """The record fields that come straight from the rows."""
    times = [(r["self_device_time_us"] if r["self_device_time_us"] is not None else r["self_cpu_time_us"]) or 0.0
             for r in rows]
    return {
        "launches_per_step": sum(r["calls"] for r in rows) / steps,
        "gemm_share": sum(r["share_of_step"] for r in rows if r["category"] == "gemm"),
        "top_kernel": rows[0]["name"] if rows else None,
        "op_time_ms_per_step": sum(times) / 1000.0 / steps,
    }
