"""Do the impls compute the same function here? Same weights (canonical nn.LSTM layout) into cudnn, naive,
lstmcell, compiled (torch.compile of the naive step) and graphed (the naive step replayed from a CUDA graph, CUDA
only); compare logits and every parameter's gradient against cudnn's.

Error = max |a - b| / max |b| per tensor (relative to the tensor's scale, so near-zero entries do not blow
it up), the largest over the logits and all gradients. The check runs at the precision asked (dtype float32,
tf32 or bfloat16), with the TF32 switches set exactly as a trial of that dtype sets them (steps.set_precision),
so what is checked is what is benchmarked. Tolerances per device and precision are in TOLERANCE, with where
each comes from.
"""

from __future__ import annotations

import contextlib

import torch

from .steps import set_precision
from .variants import Variant, build_model, canonical_names, canonical_state, load_canonical_state, with_impl

CHECK_SEQS = (("row", None), ("column", None), ("pixel", None), ("patch", 2), ("patch", 4), ("patch", 8),
              ("cnn", None))

# Largest relative error accepted, per (device kind, dtype).
TOLERANCE = {
    ("cpu", "float32"): 1e-5,    # measured here: about 1e-7 (sums in the same order)
    ("cuda", "float32"): 1e-4,   # cuDNN sums in another order: 1.6e-5 seen on an H200 with TF32 off
    ("cuda", "tf32"): 2e-2,      # TF32 keeps 10 mantissa bits (~5e-4 per product), compounded over 32+ steps
    ("cpu", "bfloat16"): 5e-2,   # bf16 keeps 7 bits (~4e-3 per op): 3.1e-2 measured here (cnn/naive, worst case)
    ("cuda", "bfloat16"): 1e-1,  # not yet measured on a GPU: twice the CPU bound until it is
}
# tf32 on CUDA is likewise not yet measured here; both CUDA bounds are to be tightened from a GPU run.
# graphed replays the naive model's own kernels, so it shares these bounds.

# impl compiled: inductor fuses the elementwise gate math (its own vectorized sigmoid/tanh, other summation
# orders) and keeps the GEMM in ATen, so its error against cudnn is the naive loop's plus those rounding
# differences, compounded over the steps and through backward.
COMPILED_TOLERANCE = {
    ("cpu", "float32"): 1e-5,    # measured here: 8.5e-7 at worst (row/column/patch, layers 1-3, hidden 32),
                                 # within 8e-8 of the naive loop's own error: the eager bound holds
    ("cuda", "float32"): 1e-4,   # not yet measured on a GPU (Triton kernels): the eager CUDA bound until it is
    ("cuda", "tf32"): 2e-2,      # likewise
    ("cpu", "bfloat16"): 5e-2,   # measured here: 1.2e-2 (row, layers 1-3; naive 1.2e-2)
    ("cuda", "bfloat16"): 1e-1,  # likewise not yet measured on a GPU
}
# Compiling costs ~18 s per shape on this CPU, so check runs compiled on these seqs only (not pixel's 1,024
# steps, nor cnn); compiled models of one shape share their compiled step within a check.
COMPILED_SEQS = ("row", "column", "patch")
EAGER_IMPLS = ("naive", "lstmcell")


def tolerance(device_kind: str, dtype: str, impl: str) -> float:
    """The largest relative error accepted for `impl` at this precision (KeyError: not a valid pair)."""
    return (COMPILED_TOLERANCE if impl == "compiled" else TOLERANCE)[(device_kind, dtype)]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def impl_errors(v: Variant, device: torch.device, batch: int = 4, seed: int = 0, impls=EAGER_IMPLS,
                compiled_cells: dict | None = None) -> dict[str, float]:
    """Largest relative error of each impl's logits and gradients against the cudnn impl's. `compiled_cells`:
    compiled steps shared between calls, keyed by shape (so a second model of one shape compiles nothing)."""
    torch.manual_seed(seed)
    # Training mode (cuDNN refuses backward in eval mode); dropout is 0 and BatchNorm sees the same batch in
    # every impl, so all three compute the same function.
    ref = build_model(with_impl(v, "cudnn")).to(device).train()
    state = canonical_state(ref)
    x = torch.randn(batch, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    results = {}
    for impl in ("cudnn", *impls):
        model = build_model(with_impl(v, impl)).to(device).train()
        load_canonical_state(model, state)
        if impl == "compiled" and compiled_cells is not None:
            key = (v.features, v.hidden_size, str(device))
            model.lstm.cell_fn = compiled_cells.setdefault(key, model.lstm.cell_fn)
        if impl == "graphed":
            results[impl] = _graphed_pass(model, v, x, y, device)
            continue
        bf16 = torch.autocast(device.type, torch.bfloat16) if v.dtype == "bfloat16" else contextlib.nullcontext()
        with bf16:
            logits = model(x).float()
        torch.nn.functional.cross_entropy(logits, y).backward()
        grads = canonical_grads(model)
        results[impl] = (logits.detach(), grads)
    ref_logits, ref_grads = results["cudnn"]
    return {impl: max([_rel(logits, ref_logits)] + [_rel(grads[k], ref_grads[k]) for k in ref_grads])
            for impl, (logits, grads) in results.items() if impl != "cudnn"}


def canonical_grads(model) -> dict[str, torch.Tensor]:
    """Gradients under nn.LSTM's parameter names (so the three layouts line up)."""
    grads = {f"lstm.{canon}": dict(model.lstm.named_parameters())[local].grad
             for canon, local in canonical_names(model.lstm).items()}
    grads.update({n: p.grad for n, p in model.named_parameters() if not n.startswith("lstm.")})
    return grads


def _graphed_pass(model, v: Variant, x, y, device: torch.device):
    """Logits and gradients of one replay of the graphed step (forward, loss, backward and an optimizer step,
    captured): SGD with lr 0 stands in for the trial's optimizer, so warm-up and replay leave cudnn's weights."""
    from .graphed import GraphedStep
    from .spec import TrialSpec
    spec = TrialSpec(variant=with_impl(v, "graphed"), device=str(device))
    graph = GraphedStep(model, torch.optim.SGD(model.parameters(), lr=0.0), spec, device, (x, y))
    logits = graph.replay(x, y).float()
    return logits.detach().clone(), {k: g.clone() for k, g in canonical_grads(model).items()}


def check_impls(device: torch.device) -> tuple[tuple[str, ...], list[str]]:
    """The impls check compares with cudnn here, and a note per impl left out or restricted."""
    from .errors import DeviceError
    from .graphed import require_compiler
    impls, notes = list(EAGER_IMPLS), []
    try:
        require_compiler()
        impls.append("compiled")
        notes.append(f"compiled: checked on {', '.join(COMPILED_SEQS)} only (compiling costs ~18 s per shape "
                     f"here; not pixel's 1,024 steps)")
    except DeviceError as exc:
        notes.append(f"compiled: skipped ({exc})")
    if device.type == "cuda":
        impls.append("graphed")
    else:
        notes.append("graphed: CUDA only, not checked here")
    return tuple(impls), notes


def check(device: torch.device, hidden_size: int = 32, layers=(1, 2, 3), dtype: str = "float32",
          seqs=CHECK_SEQS, impls=None) -> list[dict]:
    """One row per (seq, layers, impl): the largest error of that impl against cudnn, at `dtype`. `impls`: by
    default every impl that runs here (check_impls); compiled runs on COMPILED_SEQS only."""
    impls = check_impls(device)[0] if impls is None else impls
    rows, cells = [], {}
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        for seq, patch in seqs:
            here = tuple(i for i in impls if i != "compiled" or seq in COMPILED_SEQS)
            for n in layers:
                v = Variant(seq=seq, patch_size=patch, hidden_size=hidden_size, num_layers=n, batch_size=4,
                            dtype=dtype)
                set_precision(dtype)
                for impl, err in impl_errors(v, device, impls=here, compiled_cells=cells).items():
                    rows.append({"seq": seq if patch is None else f"patch{patch}", "num_layers": n,
                                 "impl": impl, "max_rel_error": err})
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
    return rows
