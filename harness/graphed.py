"""The two impls that are prepared before they are timed, and what their preparation costs.

  compiled  the naive cell's step through torch.compile (variants.CompiledLSTM). CompileWatch records every
            compile (a dynamo frame, or a backward compiled lazily on its first call) with its wall time,
            through torch._dynamo's compile callbacks. The trial warms the step until a step compiles
            nothing, before measure() starts its clock: `compile_s` is what those compiling steps took beyond
            a plain step (dynamo's lazy imports and the compiles), out of every timed figure and out of the
            time budget. A compile inside the timed window (a guard that
            failed: a new shape, dtype or grad mode) counts in `recompiles` and flags the trial noisy.
  graphed   the naive model's whole step -- forward, loss, backward and an optimizer step built with
            capturable=True (infer: the forward) -- captured once in a CUDA graph after warm-up steps on a
            side stream (PyTorch's "whole network capture"), then replayed: each step copies the next batch
            into the graph's static input buffers and replays it. `capture_s` is the capture's wall time.

prepare() is what trial.run_throughput calls for any impl; for the eager impls it changes nothing.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from .errors import DeviceError
from .steps import sync

BACKENDS = {"compiled": "compiled:inductor", "graphed": "graphed:cuda-graph"}
MAX_COMPILE_STEPS = 5   # warm-up steps the compiled impl may take to compile every shape it meets
SIDE_STREAM_STEPS = 3   # eager steps on a side stream before capture (PyTorch's recipe)


def require_compiler() -> str:
    """The C++ compiler inductor will use (torch._inductor.config.cpp.cxx, which follows $CXX, else g++), or
    DeviceError (one line): inductor builds its CPU kernels (and Triton its launchers) with it."""
    from torch._inductor import config
    names = [c for c in (config.cpp.cxx if isinstance(config.cpp.cxx, (list, tuple)) else (config.cpp.cxx,)) if c]
    for name in names:
        if shutil.which(name):
            return name
    raise DeviceError(f"impl compiled needs a C++ compiler for torch.compile's inductor backend "
                      f"(looked for {', '.join(names) or 'none configured'}; install g++ or set CXX)")


class CompileWatch:
    """Every torch.compile compile while open: (start, end) in epoch seconds and what triggered it. Process-wide
    (dynamo's callbacks are): one trial runs at a time in a worker; opening a watch closes any left open."""
    _open: "CompileWatch | None" = None

    def __init__(self):
        self.events: list[tuple[float, float, str]] = []
        self._start: float | None = None

    def open(self) -> "CompileWatch":
        from torch._dynamo.callback import callback_handler
        if CompileWatch._open is not None:
            CompileWatch._open.close()
        callback_handler.register_start_callback(self._on_start)
        callback_handler.register_end_callback(self._on_end)
        CompileWatch._open = self
        return self

    def close(self) -> None:
        from torch._dynamo.callback import callback_handler
        with contextlib.suppress(ValueError):
            callback_handler.remove_start_callback(self._on_start)
            callback_handler.remove_end_callback(self._on_end)
        if CompileWatch._open is self:
            CompileWatch._open = None

    def __enter__(self):
        return self.open()

    def __exit__(self, *exc):
        self.close()

    def _on_start(self, args):
        self._start = time.time()

    def _on_end(self, args):
        self.events.append((self._start or time.time(), time.time(), args.callback_trigger.name))

    @property
    def compile_s(self) -> float:
        return sum(end - start for start, end, _ in self.events)

    def within(self, start: float, end: float) -> int:
        """Compiles that began inside [start, end] (epoch seconds): measure()'s timed window."""
        return sum(1 for s, _, _ in self.events if start <= s <= end)


def recompile_reason(n: int) -> str | None:
    if n:
        return f"{n} recompile(s) of the compiled step inside the timed window (a guard failed)"
    return None


class GraphedStep:
    """One CUDA graph of the whole step, replayed; `over(batches)` gives measure() a step that fills the static
    input buffers from `batches` (copy_) and replays. `first` is one batch: the buffers' shape and warm-up data."""

    def __init__(self, model: nn.Module, opt, spec, device: torch.device, first):
        if device.type != "cuda":
            raise DeviceError(f"impl graphed captures a CUDA graph: it needs a CUDA device, not {device}")
        self.train = opt is not None
        self.static_x, self.static_y = first[0].clone(), first[1].clone()
        loss_fn = nn.CrossEntropyLoss(label_smoothing=spec.train.label_smoothing)
        clip = spec.train.grad_clip
        # autocast's weight cache must be off while capturing (its casts would be captured, then freed)
        amp = (torch.autocast("cuda", torch.bfloat16, cache_enabled=False) if spec.variant.dtype == "bfloat16"
               else contextlib.nullcontext())

        def whole_step():
            if not self.train:
                with torch.inference_mode(), amp:
                    return model(self.static_x)
            with amp:
                out = model(self.static_x)
                loss = loss_fn(out, self.static_y)
            loss.backward()
            if clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            opt.step()
            return out

        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(SIDE_STREAM_STEPS):
                if self.train:
                    opt.zero_grad(set_to_none=True)
                whole_step()
        torch.cuda.current_stream(device).wait_stream(side)
        if self.train:
            opt.zero_grad(set_to_none=True)  # grads are then allocated inside the graph's pool, and overwritten
        sync(device)
        start = time.perf_counter()
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.static_out = whole_step()
        sync(device)
        self.capture_s = time.perf_counter() - start

    def replay(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.static_x.copy_(x, non_blocking=True)
        if self.train:  # inference reads no labels
            self.static_y.copy_(y, non_blocking=True)
        self.graph.replay()
        return self.static_out

    def over(self, batches):
        def step():
            return self.replay(*next(batches))
        return step


def graphed_optimizer(model: nn.Module, spec) -> torch.optim.Optimizer:
    """The trial's optimizer, built graph-safe: Adam/AdamW keep their step count on the device
    (capturable=True); SGD's state is device tensors once its momentum buffers exist (made in warm-up)."""
    t = spec.train
    if t.optimizer in ("adam", "adamw"):
        cls = torch.optim.Adam if t.optimizer == "adam" else torch.optim.AdamW
        return cls(model.parameters(), lr=t.lr, weight_decay=t.weight_decay, capturable=True)
    return torch.optim.SGD(model.parameters(), lr=t.lr, momentum=0.9, nesterov=True, weight_decay=t.weight_decay)


@dataclass
class Prepared:
    """What prepare() made: the step factory measure() times, and the impl's own record fields."""
    step_over: object
    impl: str
    watch: CompileWatch | None = None
    extra: dict = field(default_factory=dict)

    @property
    def backend(self) -> str | None:
        return BACKENDS.get(self.impl)

    def fields(self, fields: dict, m, model_m=None) -> dict:
        """Add compile_s / capture_s, and the recompiles inside measure()'s timed windows, to a trial's fields:
        one in the headline window flags the trial noisy (`recompiles`, a noise reason); one in the model-only
        window is a model noise reason. Closes the watch."""
        fields.update(self.extra)
        if self.watch is None:
            return fields
        fields["recompiles"] = n = self.watch.within(m.timed_start, m.timed_end)
        if n:
            fields["noisy"] = True
            _add_reason(fields, "noise_reasons", recompile_reason(n))
        if model_m is not None:
            _add_reason(fields, "model_noise_reasons",
                        recompile_reason(self.watch.within(model_m.timed_start, model_m.timed_end)))
        self.watch.close()
        return fields


def _add_reason(fields: dict, key: str, reason: str | None) -> None:
    if reason:
        fields[key] = "; ".join(r for r in (fields.get(key), reason) if r)


def prepare(spec, model, opt, batches, device: torch.device, step_over) -> Prepared:
    """Ready the impl's step before measure() starts its clock: compile it (compiled), capture it (graphed),
    or nothing (eager impls). `step_over(source)` is the eager step factory (train_step_fn/infer_step_fn)."""
    impl = spec.variant.impl
    if impl == "graphed":  # the eager optimizer is replaced by a graph-safe one of the same recipe
        opt = graphed_optimizer(model, spec) if opt is not None else None
        graph = GraphedStep(model, opt, spec, device, next(batches))
        return Prepared(graph.over, impl, extra={"capture_s": graph.capture_s})
    if impl != "compiled":
        return Prepared(step_over, impl)
    require_compiler()
    watch = CompileWatch().open()
    step, compiling = step_over(batches), []
    for _ in range(MAX_COMPILE_STEPS):  # until a step compiles nothing: every shape and grad mode met
        seen, start = len(watch.events), time.perf_counter()
        step()
        sync(device)
        took = time.perf_counter() - start
        if len(watch.events) == seen:
            break
        compiling.append(took)
    # what the compiling steps took beyond a plain step (the last one): lazy imports and compiles
    compile_s = max(0.0, sum(compiling) - len(compiling) * took)
    return Prepared(step_over, impl, watch=watch, extra={"compile_s": compile_s})
