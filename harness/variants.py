"""LSTM variants: what is measured (a frozen, hashable spec, declared in harness.spec) and the model it builds.

A variant is three choices:
  seq   how a 3x32x32 image becomes a sequence (rows, columns, pixels, k x k patches, or a conv stem's rows);
  impl  which code runs the recurrence: `cudnn` (torch.nn.LSTM: cuDNN on CUDA, ATen's fused kernel on CPU),
        `naive` (a Python loop of the six gate equations), `lstmcell` (a Python loop of nn.LSTMCell);
  size  hidden_size x num_layers (x 2 if bidirectional).

All three impls compute the same function. Parameters are kept in nn.LSTM's layout and gate order
(i, f, g, o) -- per layer and direction `weight_ih` (4H x I), `weight_hh` (4H x H), `bias_ih`, `bias_hh` (4H) --
so one state dict loads into any impl. The naive cell concatenates them at run time into one (4H x (H+I))
matrix W = [weight_hh | weight_ih] and one bias b = bias_ih + bias_hh, so each step is a single matmul of
[h_{t-1}, x_t] against W (the tutorial's equations with the four gates stacked).
"""

from __future__ import annotations

import dataclasses
import math
import types

import torch
import torch.nn as nn
import torch.nn.functional as F

# The spec of a variant (fields, defaults, validation) is declared with the other specs, in harness.spec;
# re-exported here because the model code below and its callers know it as harness.variants.Variant.
from .spec import CNN_CHANNELS, DTYPES, IMPLS, LIMITS, PATCH_SIZES, SEQS, Variant, seq_shape  # noqa: F401


# ---------------------------------------------------------------------------------------------------------
# Sequencers: (B, 3, 32, 32) float -> (B, steps, features)

class Sequencer(nn.Module):
    def __init__(self, seq: str, patch_size: int | None):
        super().__init__()
        self.seq, self.patch_size = seq, patch_size
        if seq == "cnn":
            def block(cin, cout):
                return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.GELU()]
            self.stem = nn.Sequential(*block(3, 32), *block(32, CNN_CHANNELS), nn.MaxPool2d(2),
                                      *block(CNN_CHANNELS, CNN_CHANNELS), nn.MaxPool2d(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        if self.seq == "row":  # step t = image row t, features = 3 channels x 32 columns
            return x.permute(0, 2, 1, 3).reshape(b, 32, 96)
        if self.seq == "column":
            return x.permute(0, 3, 1, 2).reshape(b, 32, 96)
        if self.seq == "pixel":  # the tutorial's sequence: 1024 steps of RGB, raster order
            return x.flatten(2).transpose(1, 2)
        if self.seq == "patch":  # non-overlapping k x k patches in raster order, each flattened (C, k, k)
            k = self.patch_size
            return F.unfold(x, kernel_size=k, stride=k).transpose(1, 2)
        feats = self.stem(x)  # (B, 64, 8, 8): feature-map rows become the sequence
        return feats.permute(0, 2, 1, 3).reshape(b, 8, CNN_CHANNELS * 8)


# ---------------------------------------------------------------------------------------------------------
# Recurrent cores. Each maps (B, T, I) -> (output (B, T, H*dirs), h_n (layers*dirs, B, H)), as nn.LSTM does.

class LoopLSTM(nn.Module):
    """Layers and directions stacked as nn.LSTM stacks them; subclasses supply one direction of one layer."""

    def __init__(self, hidden_size, num_layers, bidirectional, dropout):
        super().__init__()
        self.hidden_size, self.num_layers = hidden_size, num_layers
        self.dirs = 2 if bidirectional else 1
        self.dropout = dropout

    def run_direction(self, x: torch.Tensor, layer: int, d: int) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def forward(self, x: torch.Tensor):
        h_n = []
        for layer in range(self.num_layers):
            outs = []
            for d in range(self.dirs):
                out, h_last = self.run_direction(x, layer, d)
                outs.append(out)
                h_n.append(h_last)
            x = torch.cat(outs, dim=2) if self.dirs == 2 else outs[0]
            if self.dropout and self.training and layer < self.num_layers - 1:
                x = F.dropout(x, self.dropout, training=True)
        return x, torch.stack(h_n)


class NaiveLSTM(LoopLSTM):
    """The tutorial's gate equations, one Python iteration per time step:
        i = sigmoid(W_i [h, x] + b_i)   f = sigmoid(W_f [h, x] + b_f)   g = tanh(W_g [h, x] + b_g)
        o = sigmoid(W_o [h, x] + b_o)   c = f * c + i * g               h = o * tanh(c)
    with the four gates stacked into one matmul per step. Parameters in nn.LSTM's names and layout."""

    def __init__(self, input_size, hidden_size, num_layers, bidirectional, dropout):
        super().__init__(hidden_size, num_layers, bidirectional, dropout)
        # Same initialisation as nn.LSTM: U(-1/sqrt(H), 1/sqrt(H)) for every parameter.
        bound = 1.0 / math.sqrt(hidden_size)
        for layer in range(num_layers):
            layer_in = input_size if layer == 0 else hidden_size * self.dirs
            for d in range(self.dirs):
                sfx = f"_l{layer}" + ("_reverse" if d else "")
                for name, shape in ((f"weight_ih{sfx}", (4 * hidden_size, layer_in)),
                                    (f"weight_hh{sfx}", (4 * hidden_size, hidden_size)),
                                    (f"bias_ih{sfx}", (4 * hidden_size,)),
                                    (f"bias_hh{sfx}", (4 * hidden_size,))):
                    self.register_parameter(name, nn.Parameter(torch.empty(shape).uniform_(-bound, bound)))

    def params(self, layer: int, d: int):
        sfx = f"_l{layer}" + ("_reverse" if d else "")
        return (getattr(self, f"weight_ih{sfx}"), getattr(self, f"weight_hh{sfx}"),
                getattr(self, f"bias_ih{sfx}"), getattr(self, f"bias_hh{sfx}"))

    def run_direction(self, x, layer, d):
        w_ih, w_hh, b_ih, b_hh = self.params(layer, d)
        w = torch.cat([w_hh, w_ih], dim=1).t()  # (H + I, 4H): one GEMM for all four gates
        b = b_ih + b_hh
        batch, steps, _ = x.shape
        h = x.new_zeros(batch, self.hidden_size)
        c = x.new_zeros(batch, self.hidden_size)
        order = range(steps - 1, -1, -1) if d else range(steps)
        outs = [None] * steps
        for t in order:
            h, c = self.cell(x[:, t], h, c, w, b)
            outs[t] = h
        return torch.stack(outs, dim=1), h

    @staticmethod
    def cell(x_t, h, c, w, b):
        return lstm_cell_step(x_t, h, c, w, b)


def lstm_cell_step(x_t, h, c, w, b):
    """One time step of the naive cell: the stacked-gate GEMM of [h, x_t] against w (H + I, 4H), then the
    elementwise gate equations. Returns (h, c). The unit that the `compiled` impl hands to torch.compile."""
    gates = torch.addmm(b, torch.cat([h, x_t], dim=1), w)
    i, f, g, o = gates.chunk(4, dim=1)
    i, f, g, o = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)
    c = f * c + i * g
    return o * torch.tanh(c), c


class CompiledLSTM(NaiveLSTM):
    """The naive cell with its per-step function (gates GEMM + elementwise, lstm_cell_step) through
    torch.compile (inductor: C++/OpenMP kernels on CPU, Triton on CUDA); the time loop stays in Python, as a
    user writing a custom cell would first try. Same parameters, same function as NaiveLSTM.

    Each model compiles its own copy of the step function (a fresh code object: dynamo keeps its compiled
    entries and its recompile count per code object), with static shapes, so one trial's shapes never make
    another trial's kernels dynamic or push it past the recompile limit; the compile happens on the first
    call of each shape (layer 0's input width, then the deeper layers'; forward and, lazily, backward).
    harness.graphed.CompileWatch accounts the compile time and catches recompiles."""

    def __init__(self, input_size, hidden_size, num_layers, bidirectional, dropout):
        super().__init__(input_size, hidden_size, num_layers, bidirectional, dropout)
        fresh = types.FunctionType(lstm_cell_step.__code__.replace(), lstm_cell_step.__globals__,
                                   "lstm_cell_step_compiled")
        self.cell_fn = torch.compile(fresh, backend="inductor", dynamic=False)

    def cell(self, x_t, h, c, w, b):
        return self.cell_fn(x_t, h, c, w, b)


class CellLoopLSTM(LoopLSTM):
    """A Python loop of torch.nn.LSTMCell, one cell per layer and direction. Its parameters map one to one
    onto nn.LSTM's: cells[layer * dirs + d].weight_ih <-> weight_ih_l{layer}[_reverse] (see canonical_state)."""

    def __init__(self, input_size, hidden_size, num_layers, bidirectional, dropout):
        super().__init__(hidden_size, num_layers, bidirectional, dropout)
        self.cells = nn.ModuleList(
            nn.LSTMCell(input_size if layer == 0 else hidden_size * self.dirs, hidden_size)
            for layer in range(num_layers) for _ in range(self.dirs))

    def run_direction(self, x, layer, d):
        cell = self.cells[layer * self.dirs + d]
        batch, steps, _ = x.shape
        h = x.new_zeros(batch, self.hidden_size)
        c = x.new_zeros(batch, self.hidden_size)
        outs = [None] * steps
        for t in (range(steps - 1, -1, -1) if d else range(steps)):
            h, c = cell(x[:, t], (h, c))
            outs[t] = h
        return torch.stack(outs, dim=1), h


class CudnnLSTM(nn.LSTM):
    """torch.nn.LSTM with batch_first, returning (output, h_n) like the loop cores."""

    def forward(self, x):
        out, (h_n, _) = super().forward(x)
        return out, h_n


def make_core(impl: str, input_size: int, hidden_size: int, num_layers: int, bidirectional: bool,
              dropout: float) -> nn.Module:
    if impl == "cudnn":
        return CudnnLSTM(input_size, hidden_size, num_layers, batch_first=True,
                         bidirectional=bidirectional, dropout=dropout if num_layers > 1 else 0.0)
    # graphed: the naive model; its whole training step is captured in a CUDA graph (harness.graphed)
    cls = {"naive": NaiveLSTM, "graphed": NaiveLSTM, "compiled": CompiledLSTM, "lstmcell": CellLoopLSTM}[impl]
    return cls(input_size, hidden_size, num_layers, bidirectional, dropout)


class LSTMClassifier(nn.Module):
    """image -> sequencer -> LSTM core -> Linear on the last layer's final hidden state(s) -> 10 logits."""

    def __init__(self, v: Variant, num_classes: int = 10):
        super().__init__()
        self.variant = v
        self.sequencer = Sequencer(v.seq, v.patch_size)
        dirs = 2 if v.bidirectional else 1
        self.lstm = make_core(v.impl, v.features, v.hidden_size, v.num_layers, v.bidirectional, v.dropout)
        self.head = nn.Linear(v.hidden_size * dirs, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, h_n = self.lstm(self.sequencer(x))
        dirs = 2 if self.variant.bidirectional else 1
        last = h_n[-dirs:]  # last layer: forward (and backward) final states
        return self.head(torch.cat(list(last), dim=1))


def build_model(v: Variant) -> LSTMClassifier:
    return LSTMClassifier(v)


def with_impl(v: Variant, impl: str) -> Variant:
    return dataclasses.replace(v, impl=impl)


def canonical_names(core: nn.Module) -> dict[str, str]:
    """nn.LSTM parameter name -> the name it has inside `core` (identity except for the LSTMCell loop)."""
    names = {}
    for name, _ in core.named_parameters():
        if isinstance(core, CellLoopLSTM):  # cells.{k}.weight_ih -> weight_ih_l{k // dirs}[_reverse]
            _, k, kind = name.split(".")
            layer, d = divmod(int(k), core.dirs)
            names[f"{kind}_l{layer}" + ("_reverse" if d else "")] = name
        else:
            names[name] = name
    return names


def canonical_state(model: LSTMClassifier) -> dict[str, torch.Tensor]:
    """The model's parameters under nn.LSTM's names (lstm.weight_ih_l0, ...): the layout every impl shares."""
    state = {k: t for k, t in model.state_dict().items() if not k.startswith("lstm.")}
    core = dict(model.lstm.named_parameters())
    for canon, local in canonical_names(model.lstm).items():
        state[f"lstm.{canon}"] = core[local].detach()
    return state


def load_canonical_state(model: LSTMClassifier, state: dict[str, torch.Tensor]) -> None:
    """Load weights from any impl's canonical_state() into `model`, whatever its impl."""
    local = {k: v for k, v in state.items() if not k.startswith("lstm.")}
    for canon, name in canonical_names(model.lstm).items():
        local[f"lstm.{name}"] = state[f"lstm.{canon}"]
    model.load_state_dict(local)


# ---------------------------------------------------------------------------------------------------------
# Analytic cost: the LSTM GEMMs only (input and recurrent projections of every gate, every step).

def lstm_gemm_flops(v: Variant, mode: str) -> int:
    """FLOPs of the LSTM's matrix products for one batch: 2 * B * T * 4H * (I + H) per layer and direction.
    Training counts 3x the forward (backward needs the grads of both the input and the weights)."""
    dirs = 2 if v.bidirectional else 1
    total = 0
    for layer in range(v.num_layers):
        layer_in = v.features if layer == 0 else v.hidden_size * dirs
        total += dirs * 2 * v.batch_size * v.steps * 4 * v.hidden_size * (layer_in + v.hidden_size)
    return total * (3 if mode in ("train", "accuracy", "profile") else 1)
