"""Do the three impls compute the same function here? Same weights (canonical nn.LSTM layout) into cudnn,
naive and lstmcell; compare logits and every parameter's gradient against cudnn's.

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
from .variants import (IMPLS, Variant, build_model, canonical_names, canonical_state, load_canonical_state,
                       with_impl)

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


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def impl_errors(v: Variant, device: torch.device, batch: int = 4, seed: int = 0) -> dict[str, float]:
    """Largest relative error of each impl's logits and gradients against the cudnn impl's."""
    torch.manual_seed(seed)
    # Training mode (cuDNN refuses backward in eval mode); dropout is 0 and BatchNorm sees the same batch in
    # every impl, so all three compute the same function.
    ref = build_model(with_impl(v, "cudnn")).to(device).train()
    state = canonical_state(ref)
    x = torch.randn(batch, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    results = {}
    for impl in IMPLS:
        model = build_model(with_impl(v, impl)).to(device).train()
        load_canonical_state(model, state)
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


def check(device: torch.device, hidden_size: int = 32, layers=(1, 2, 3), dtype: str = "float32",
          seqs=CHECK_SEQS) -> list[dict]:
    """One row per (seq, layers, impl): the largest error of that impl against cudnn, at `dtype`."""
    rows = []
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        for seq, patch in seqs:
            for n in layers:
                v = Variant(seq=seq, patch_size=patch, hidden_size=hidden_size, num_layers=n, batch_size=4,
                            dtype=dtype)
                set_precision(dtype)
                for impl, err in impl_errors(v, device).items():
                    rows.append({"seq": seq if patch is None else f"patch{patch}", "num_layers": n,
                                 "impl": impl, "max_rel_error": err})
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
    return rows
